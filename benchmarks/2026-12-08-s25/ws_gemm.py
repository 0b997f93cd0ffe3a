"""Twenty-fifth session, for the next GPU call: the warp-specialized LoRA GEMMs
(``lk_autograd._ws_gemm.ws_lora_matmul``, written from ``gluon_dx.py``, and
``_ws_gated.ws_gated_lora_matmul``; off by default) against ``_gemm``'s, which ship, and
cuBLAS, at the blocks' shapes (Llama-3-8B, 8192 tokens, r = 16 per projection): o's and down's
forwards (``X W^T + s XA B^T``, ``s`` = 2), the input gradients ``dX = sum_j dY_j W_j + dXA A``
of o (``K`` = 4096), q, k and v (``K`` = 4096, 1024, 1024; ``dXA`` the three adapters' ``[M,
48]``) and gate and up (``K`` = 14336 twice; ``[M, 32]``), and gate, up and SiLU's forward
(``e``, ``g``, ``h``; against cuBLAS's bare ``X [W_g; W_u]^T``).

*Prediction* (from ``gluon_dx.py``'s single input-gradient pair, 9-34 us under ``_gemm`` with
one 8-warp consumer, plus the split MMA partitions' ~1.6%): 1-2% under ``_gemm`` at every
shape: 5-10 us at o's, 15-25 at q/k/v's dX and down's forward, 30-60 at gate/up's dX and
forward; the q/k/v forward's group (added in the twenty-sixth session) 5-10 us. If so,
switch it on (``_ws_gemm._enabled``) once the GPU tests pass.

Usage (sm_90 GPU, PYTHONPATH as tools/gpu_session.sh sets it): ``python3 ws_gemm.py`` checks
each route against float64, prints whether ``_ws_gemm`` and ``_gemm`` give the same bits, and
times cuBLAS's chain, ``_ws_gemm`` and ``_gemm`` (5 alternated rounds of CUDA-graph replays).
"""

import statistics

import torch

from lk_autograd import _gemm, _ws_gated, _ws_gemm

M = 8192


def shape_row(name: str, N: int, ks: tuple[int, ...], r: int, s: float, w_kn: bool) -> str:
    from bench_lora_blocks import alternated_ms, capture_graph

    torch.manual_seed(sum(ks) + w_kn)
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    pairs = [
        (torch.randn(M, k, **bf16), torch.randn(*((k, N) if w_kn else (N, k)), **bf16) * 0.02)
        for k in ks
    ]
    XA = torch.randn(M, r, **bf16)
    U = torch.randn(*((r, N) if w_kn else (N, r)), **bf16) * 0.02
    mats = [(X_j, W_j if w_kn else W_j.t()) for X_j, W_j in pairs]
    Um = U if w_kn else U.t()
    ref = s * (XA.double() @ Um.double()) + sum(a.double() @ b.double() for a, b in mats)

    def cublas():
        Y = XA @ Um * s
        for a, b in mats:
            Y.addmm_(a, b)
        return Y

    (X, W), *more = pairs
    steps = {
        "cuBLAS chain": cublas,
        "_ws_gemm": lambda: _ws_gemm.ws_lora_matmul(X, W, XA, U, s, w_kn, more),
        "_gemm": lambda: _gemm.lora_matmul(X, W, XA, U, s, w_kn, more),
    }
    outs = {k: f() for k, f in steps.items()}
    errs = ", ".join(
        f"{k} {((o.double() - ref).norm() / ref.norm()).item():.2e}" for k, o in outs.items()
    )
    times = alternated_ms({k: capture_graph(f) for k, f in steps.items()}, 5)
    ms = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in times.items())
    same = torch.equal(outs["_ws_gemm"], outs["_gemm"])
    return f"{name}, K = {ks}, r = {r}: rel err vs float64 {errs}; same bits {same}; ms {ms}"


def gated_row(N: int = 14336, K: int = 4096, r: int = 16) -> str:
    from bench_lora_blocks import alternated_ms, capture_graph

    torch.manual_seed(N)
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    X = torch.randn(M, K, **bf16)
    Ws = [torch.randn(N, K, **bf16) * 0.02 for _ in range(2)]
    XAs = torch.randn(M, 2 * r, **bf16).split(r, dim=1)
    Bs = [torch.randn(N, r, **bf16) * 0.02 for _ in range(2)]
    W_gu = torch.cat(Ws)
    args = (X, Ws, XAs, Bs, (2.0, 2.0), "silu")
    steps = {
        "cuBLAS X [W_g; W_u]^T": lambda: X @ W_gu.t(),
        "_ws_gated": lambda: _ws_gated.ws_gated_lora_matmul(*args),
        "_gemm": lambda: _gemm.gated_lora_matmul(*args),
    }
    ws, ref = steps["_ws_gated"](), steps["_gemm"]()
    same = [torch.equal(a, b) for a, b in zip(ws, ref, strict=True)]
    times = alternated_ms({k: capture_graph(f) for k, f in steps.items()}, 5)
    ms = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in times.items())
    return f"gate/up/SiLU forward, N = {N}, K = {K}, r = {r}: e, g, h same bits {same}; ms {ms}"


def group_row(Ns: tuple[int, ...] = (4096, 1024, 1024), K: int = 4096, r: int = 16) -> str:
    """q, k and v's forward (added in the twenty-sixth session): ``_ws_gemm``'s group against
    ``_gemm``'s and cuBLAS's bare ``X [W_q; W_k; W_v]^T``."""
    from bench_lora_blocks import alternated_ms, capture_graph

    torch.manual_seed(K + len(Ns))
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    X = torch.randn(M, K, **bf16)
    Ws = [torch.randn(N, K, **bf16) * 0.02 for N in Ns]
    XAs = torch.randn(M, len(Ns) * r, **bf16).split(r, dim=1)
    Bs = [torch.randn(N, r, **bf16) * 0.02 for N in Ns]
    W_qkv, ss = torch.cat(Ws), (2.0,) * len(Ns)
    steps = {
        "cuBLAS X [W_q; W_k; W_v]^T": lambda: X @ W_qkv.t(),
        "_ws_gemm group": lambda: _ws_gemm.ws_lora_matmul_group(X, Ws, XAs, Bs, ss),
        "_gemm group": lambda: _gemm.lora_matmul_group(X, Ws, XAs, Bs, ss),
    }
    ws, ref = steps["_ws_gemm group"](), steps["_gemm group"]()
    same = [torch.equal(a, b) for a, b in zip(ws, ref, strict=True)]
    times = alternated_ms({k: capture_graph(f) for k, f in steps.items()}, 5)
    ms = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in times.items())
    return f"q/k/v forward, N = {Ns}, K = {K}, r = {r}: same bits {same}; ms {ms}"


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    rows = [
        ("o forward", 4096, (4096,), 16, 2.0, False),
        ("down forward", 4096, (14336,), 16, 2.0, False),
        ("o dX", 4096, (4096,), 16, 1.0, True),
        ("q/k/v dX", 4096, (4096, 1024, 1024), 48, 1.0, True),
        ("gate/up dX", 4096, (14336, 14336), 32, 1.0, True),
    ]
    for row in rows:
        print(shape_row(*row), flush=True)
    print(gated_row(), flush=True)
    print(group_row(), flush=True)


if __name__ == "__main__":
    main()
