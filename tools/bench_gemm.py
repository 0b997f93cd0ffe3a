"""The LoRA term in the GEMM's epilogue (``lk_autograd._gemm``) against cuBLAS, per GEMM.

Usage: ``python tools/bench_gemm.py [--tokens 8192] [--ranks 8 16 64]`` on an NVIDIA sm_90+ GPU.

For each of a LoRA block's GEMMs at Llama-3-8B shapes, three ways to get ``X W^T + s XA B^T``
(or ``dY W + dXA A`` for an input gradient; ``sum_j dY_j W_j + dXA A`` for the input gradient of
projections that share an input), each checked against float64 first, then timed with
``triton.testing.do_bench`` (median):

- ``mm``: the bare base GEMMs on cuBLAS, no LoRA term, each into its own output (the floor's);
- ``pair``: cuBLAS's LoRA-first pair, the term written first and read back as C, then each
  further GEMM accumulating onto it (the path ``_linear`` takes where ``_gemm`` does not apply);
- ``fused``: ``_gemm.lora_matmul``, one Triton kernel.

``used`` says whether the library takes ``fused`` for that GEMM (``_gemm._MIN_OUTPUT``: smaller
outputs stay on cuBLAS, whose launch costs less host time); all three are timed regardless.
Also the host time per call of ``pair`` and ``fused`` on tiny tensors (enqueue only). Writes
JSON to ``$OUT/bench_gemm.json`` when ``OUT`` is set.
"""

import argparse
import json
import os
import time
from collections.abc import Callable

import torch
import triton
from bench_activation import bench, rel_err
from rich.console import Console
from rich.table import Table

from lk_autograd import _gemm

D, INTER, KV = 4096, 14336, 1024
# name, output width N, inner K of each summed GEMM, w_kn (an input gradient: X W, W [K, N])
GEMMS = [
    ("gate/up forward", INTER, (D,), False),
    ("down forward", D, (INTER,), False),
    ("dh (down backward)", INTER, (D,), True),
    ("dX (gate + up backward)", D, (INTER, INTER), True),
    ("q / o forward", D, (D,), False),
    ("k / v forward", KV, (D,), False),
    ("o dX", D, (D,), True),
    ("dX (q + k + v backward)", D, (D, KV, KV), True),
]
S = 2.0  # lora_alpha / r of a typical config


def host_us(fn: Callable[[], object], calls: int = 300) -> float:
    """Enqueue time per call, tiny tensors: the GPU is never the limit."""
    for _ in range(30):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def operands(M: int, N: int, Ks: tuple[int, ...], r: int, w_kn: bool) -> tuple:
    """``(pairs, XA, U)``: one ``(X_j, W_j)`` per inner size in ``Ks``."""
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    pairs = [(torch.randn(M, K, **bf), torch.randn(*((K, N) if w_kn else (N, K)), **bf) / K**0.5)
             for K in Ks]  # fmt: skip
    XA = torch.randn(M, r, **bf)
    U = torch.randn(*((r, N) if w_kn else (N, r)), **bf) / r**0.5
    return pairs, XA, U


def ways(pairs, XA, U, w_kn: bool) -> dict[str, Callable[[], object]]:
    mats = [(X, W if w_kn else W.t()) for X, W in pairs]
    Um = U if w_kn else U.t()
    (X0, W0), *more = pairs

    def pair() -> torch.Tensor:
        out = torch.addmm(XA @ Um, *mats[0], beta=S)
        for X, W in mats[1:]:
            out.addmm_(X, W)
        return out

    return {
        "mm": lambda: [X @ W for X, W in mats],
        "pair": pair,
        "fused": lambda: _gemm.lora_matmul(X0, W0, XA, U, S, w_kn, more),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 64])
    args = ap.parse_args()
    min_output, _gemm._MIN_OUTPUT = _gemm._MIN_OUTPUT, 0  # time the kernel at every size
    rows = []
    for name, N, Ks, w_kn in GEMMS:
        for r in args.ranks:
            pairs, XA, U = operands(args.tokens, N, Ks, r, w_kn)
            if not _gemm.fusable(*pairs[0], XA, U, pairs[1:]):
                raise SystemExit(f"{name} r={r}: _gemm cannot run on this GPU or rank")
            Um = U if w_kn else U.t()
            ref = S * (XA.double() @ Um.double())
            for X, W in pairs:
                ref += X.double() @ (W if w_kn else W.t()).double()
            fns = ways(pairs, XA, U, w_kn)
            row = {"gemm": name, "M": args.tokens, "N": N, "K": "+".join(map(str, Ks)), "r": r,
                   "used": args.tokens * N >= min_output}  # fmt: skip
            for way in ("pair", "fused"):
                row[f"{way}_err"] = rel_err(fns[way](), ref)
            for way, fn in fns.items():
                row[f"{way}_ms"] = bench(fn)
            rows.append(row)
            del pairs, XA, U, fns, ref
    tiny = ways(*operands(128, 256, (64,), 16, False), False)
    host = {way: host_us(tiny[way]) for way in ("pair", "fused")}
    table = Table(title=f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
                  f"triton {triton.__version__}, bf16, M = {args.tokens}, s = {S}")  # fmt: skip
    for column in ("GEMM", "N x K", "r", "used", "mm ms", "pair", "fused", "err pair / fused"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["gemm"], f"{row['N']} x {row['K']}", str(row["r"]),
            "fused" if row["used"] else "pair", f"{row['mm_ms']:.3f}",
            f"{row['pair_ms']:.3f} ({row['pair_ms'] / row['mm_ms']:.3f}x)",
            f"{row['fused_ms']:.3f} ({row['fused_ms'] / row['mm_ms']:.3f}x)",
            f"{row['pair_err']:.1e} / {row['fused_err']:.1e}",
        )  # fmt: skip
    table.caption = (
        f"ratios to mm; host per call (tiny tensors): pair {host['pair']:.0f} us, "
        f"fused {host['fused']:.0f} us"
    )
    Console(width=140).print(table)
    if out := os.environ.get("OUT"):
        env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__}  # fmt: skip
        payload = {"env": env, "host_us": host, "rows": rows}
        with open(os.path.join(out, "bench_gemm.json"), "w") as f:
            json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main()
