"""An adapter's ``dB`` and ``dXA`` (``lk_autograd._lora_grads``) against cuBLAS's two GEMMs.

Usage: ``python tools/bench_lora_grads.py [--tokens 8192] [--ranks 8 16]`` on an NVIDIA sm_90+
GPU.

For the output gradients of a Llama-3-8B layer's projections (``de`` and ``dg`` of gate and up,
``dY`` of q, o and down, of k and v), ``(s dY^T XA, s dY B)`` both ways, checked against float64
first, then timed replayed from a CUDA graph (the GPU's time: the two launches of
``lora_grads`` cost host time that a whole model overlaps with other layers' GPU work). Also
the host time per call on tiny tensors. ``used`` says whether the library takes the kernel at
that size (``_lora_grads._MIN_GRADIENT``). Writes JSON to ``$OUT/bench_lora_grads.json`` when
``OUT`` is set.
"""

import argparse
import json
import os

import torch
import triton
from bench_activation import rel_err
from bench_gemm import host_us
from bench_lora_blocks import graph_ms
from rich.console import Console
from rich.table import Table

from lk_autograd import _linear, _lora_grads

GRADIENTS = [("gate / up (de, dg)", 14336), ("q / o / down (dY)", 4096), ("k / v (dY)", 1024)]
S = 2.0


def ways(dY, B, XA) -> dict:
    return {
        "cublas": lambda: (_linear.scaled_mm(dY.t(), XA, S), _linear.scaled_mm(dY, B, S)),
        "fused": lambda: _lora_grads.lora_grads(dY, B, XA, S),
    }


def operands(M: int, N: int, r: int) -> tuple:
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    return torch.randn(M, N, **bf), torch.randn(N, r, **bf) / r**0.5, torch.randn(M, r, **bf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16])
    args = ap.parse_args()
    rows = []
    for name, N in GRADIENTS:
        for r in args.ranks:
            dY, B, XA = operands(args.tokens, N, r)
            used = _lora_grads.fusable_grads(dY, B, XA)
            refs = (S * (dY.double().t() @ XA.double()), S * (dY.double() @ B.double()))
            row = {"gradient": name, "M": args.tokens, "N": N, "r": r, "used": used}
            for way, fn in ways(dY, B, XA).items():
                row[f"{way}_err"] = max(map(rel_err, fn(), refs))
                row[f"{way}_graph_us"] = graph_ms(fn) * 1e3
            rows.append(row)
    host = {way: host_us(fn) for way, fn in ways(*operands(128, 256, 16)).items()}
    table = Table(title=f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
                  f"triton {triton.__version__}, bf16, M = {args.tokens}, s = {S}")  # fmt: skip
    for column in (
        "output gradient",
        "N",
        "r",
        "used",
        "cuBLAS us",
        "fused us",
        "err cuBLAS / fused",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["gradient"], str(row["N"]), str(row["r"]), "fused" if row["used"] else "cuBLAS",
            f"{row['cublas_graph_us']:.1f}",
            f"{row['fused_graph_us']:.1f} ({row['cublas_graph_us'] / row['fused_graph_us']:.2f}x)",
            f"{row['cublas_err']:.1e} / {row['fused_err']:.1e}",
        )  # fmt: skip
    table.caption = (f"CUDA-graph replay; host per call (tiny tensors): cuBLAS "
                     f"{host['cublas']:.0f} us, fused {host['fused']:.0f} us")  # fmt: skip
    Console(width=140).print(table)
    if out := os.environ.get("OUT"):
        env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__}  # fmt: skip
        with open(os.path.join(out, "bench_lora_grads.json"), "w") as f:
            json.dump({"env": env, "host_us": host, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
