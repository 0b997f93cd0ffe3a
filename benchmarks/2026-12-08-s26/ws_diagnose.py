"""Twenty-sixth session, for the GPU: where the warp-specialized kernels go wrong, if they do.

``next_call.sh a`` runs this when a ``test_ws_gemm.py`` test fails. For each kernel
(``ws_lora_matmul`` in both weight layouts and with three pairs, ``ws_lora_matmul_group``,
``ws_gated_lora_matmul``) at small shapes with tails, it prints the relative error against
float64 of each output tile (``[128, 256]``, or ``[128, 128]`` of ``e`` / ``g`` for the
gated kernel) as a grid, ``.`` for a tile within 1e-2 and the error's exponent otherwise
(``0``: ~1, ``-1``: ~0.1; ``nan`` for NaN or inf), and whether the base part alone
(``XA = 0``) and the rank part alone (``X = 0``) are right: a wrong tile map, a wrong rank
step or a wrong projection shows as a pattern here where the test only says "too large".

Usage (sm_90 GPU, PYTHONPATH as ``tools/gpu_session.sh`` sets it): ``python3 ws_diagnose.py``.
"""

import math

import torch

from lk_autograd import _gemm, _ws_gated, _ws_gemm

BM, BN = 128, 256


def tile_grid(Y: torch.Tensor, ref: torch.Tensor, bn: int = BN) -> list[str]:
    """One line per row block: each tile's relative error, ``.`` where below 1e-2."""
    lines = []
    for m in range(0, ref.shape[0], BM):
        cells = []
        for n in range(0, ref.shape[1], bn):
            y, r = Y[m : m + BM, n : n + bn].double(), ref[m : m + BM, n : n + bn]
            err = ((y - r).norm() / r.norm().clamp_min(1e-30)).item()
            if not math.isfinite(err):
                cells.append("nan")
            else:
                cells.append("." if err < 1e-2 else f"{math.floor(math.log10(err)):d}")
        lines.append(" ".join(f"{c:>3}" for c in cells))
    return lines


def report(name: str, parts: dict[str, tuple[torch.Tensor, torch.Tensor]], bn: int = BN) -> None:
    print(f"== {name}")
    for part, (Y, ref) in parts.items():
        print(f"  {part}:")
        for line in tile_grid(Y, ref, bn):
            print(f"    {line}")


def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device="cuda") * scale).to(torch.bfloat16)


def single(w_kn: bool, ks: tuple[int, ...], M: int = 300, N: int = 520, r: int = 24) -> None:
    pairs = [(randn(M, k), randn(*((k, N) if w_kn else (N, k)), scale=k**-0.5)) for k in ks]
    XA, U = randn(M, r), randn(*((r, N) if w_kn else (N, r)))
    mats = [(X_j.double(), (W_j if w_kn else W_j.t()).double()) for X_j, W_j in pairs]
    Um = (U if w_kn else U.t()).double()
    (X, W), *more = pairs
    base = sum(a @ b for a, b in mats)
    rank = 2.0 * (XA.double() @ Um)
    parts = {
        "whole": (_ws_gemm.ws_lora_matmul(X, W, XA, U, 2.0, w_kn, more), base + rank),
        "base alone (XA = 0)": (
            _ws_gemm.ws_lora_matmul(X, W, torch.zeros_like(XA), U, 2.0, w_kn, more), base
        ),
        "rank alone (X = 0)": (
            _ws_gemm.ws_lora_matmul(
                torch.zeros_like(X), W, XA, U, 2.0, w_kn,
                [(torch.zeros_like(a), b) for a, b in more],
            ),
            rank,
        ),
    }  # fmt: skip
    report(f"ws_lora_matmul, {'X W' if w_kn else 'X W^T'}, K = {ks}, M = {M}, N = {N}", parts)


def group(M: int = 300, Ns: tuple[int, ...] = (520, 264, 264), K: int = 200) -> None:
    ranks = (16, 8, 24)
    X = randn(M, K)
    XAs = randn(M, sum(ranks)).split(ranks, dim=1)
    Ws = [randn(N, K, scale=K**-0.5) for N in Ns]
    Bs = [randn(N, r) for N, r in zip(Ns, ranks, strict=True)]
    outs = _ws_gemm.ws_lora_matmul_group(X, Ws, XAs, Bs, (2.0, 1.0, 0.5))
    parts = {}
    for j, (Y, W, XA, B, s) in enumerate(zip(outs, Ws, XAs, Bs, (2.0, 1.0, 0.5), strict=True)):
        ref = X.double() @ W.double().t() + s * (XA.double() @ B.double().t())
        parts[f"projection {j} (N = {W.shape[0]}, r = {XA.shape[1]})"] = (Y, ref)
    report(f"ws_lora_matmul_group, M = {M}, K = {K}", parts)


def gated(M: int = 300, N: int = 384, K: int = 200) -> None:
    X, ranks = randn(M, K), (16, 8)
    XAs = randn(M, sum(ranks)).split(ranks, dim=1)
    Ws = [randn(N, K, scale=K**-0.5) for _ in ranks]
    Bs = [randn(N, r) for r in ranks]
    e, g, _ = _ws_gated.ws_gated_lora_matmul(X, Ws, XAs, Bs, (0.5, 2.0), "silu")
    refs = [X.double() @ W.double().t() + s * (XA.double() @ B.double().t())
            for W, XA, B, s in zip(Ws, XAs, Bs, (0.5, 2.0), strict=True)]  # fmt: skip
    report(f"ws_gated_lora_matmul, M = {M}, N = {N}, K = {K}", {"e": (e, refs[0]),
           "g": (g, refs[1])}, bn=128)  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    _ws_gemm.set_ws_gemm(True)
    _gemm._MIN_OUTPUT = 0
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for run in (lambda: single(False, (200,)), lambda: single(True, (200,)),
                lambda: single(True, (200, 72, 72)), group, gated):  # fmt: skip
        try:
            run()
        except Exception as e:  # one kernel's failure must not hide the others'
            print(f"   failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
