"""Adapters' ``dB`` and ``dXA`` (``lk_autograd._lora_grads``) against cuBLAS's two GEMMs each.

Usage: ``python tools/bench_lora_grads.py [--tokens 8192] [--ranks 8 16]`` on an NVIDIA sm_90+
GPU.

For the output gradients of a Llama-3-8B layer's projections (``de`` and ``dg`` of gate and up,
``dY`` of q, o and down, of k and v, and q, k and v as one group), ``(s dY^T XA, s dY B)`` per
projection: on cuBLAS, through ``lora_grads`` in one launch, and (groups) one projection at a
time as ``_linear.rank_r_grads`` takes them (q on the kernel, k and v on cuBLAS). Each is
checked against float64 first, then timed replayed from a CUDA graph (the GPU's time: the two
launches of ``lora_grads`` cost host time that a whole model overlaps with other layers' GPU
work). Also the host time per call on tiny tensors. ``used`` says whether the library takes
the kernel at that size (``_lora_grads._MIN_GRADIENT``). Writes JSON to
``$OUT/bench_lora_grads.json`` when ``OUT`` is set.
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

GRADIENTS = [("gate / up (de, dg)", (14336,)), ("q / o / down (dY)", (4096,)),
             ("k / v (dY)", (1024,)), ("q + k + v (dY)", (4096, 1024, 1024))]  # fmt: skip
S = 2.0


def _cublas(dYs, Bs, XAs) -> tuple:
    dBs = [_linear.scaled_mm(dY.t(), XA, S) for dY, XA in zip(dYs, XAs, strict=True)]
    dXAs = [_linear.scaled_mm(dY, B, S) for dY, B in zip(dYs, Bs, strict=True)]
    return dBs, torch.cat(dXAs, dim=1)


def _per_projection(dYs, Bs, XAs) -> tuple:
    bf = torch.bfloat16
    pairs = [_linear.rank_r_grads(*args, S, True, True, bf, bf)
             for args in zip(dYs, Bs, XAs, strict=True)]  # fmt: skip
    return [dB for dB, _ in pairs], torch.cat([dXA for _, dXA in pairs], dim=1)


def ways(dYs, Bs, XAs) -> dict:
    """``(dBs, dXA side by side)`` each way."""
    found = {"cublas": lambda: _cublas(dYs, Bs, XAs),
             "fused": lambda: _lora_grads.lora_grads(dYs, Bs, XAs, [S] * len(dYs))}  # fmt: skip
    if len(dYs) > 1:
        found["per_projection"] = lambda: _per_projection(dYs, Bs, XAs)
    return found


def operands(M: int, Ns: tuple[int, ...], r: int) -> tuple:
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    dYs = [torch.randn(M, N, **bf) for N in Ns]
    Bs = [torch.randn(N, r, **bf) / r**0.5 for N in Ns]
    return dYs, Bs, list(torch.randn(M, r * len(Ns), **bf).split(r, dim=1))


def _errors(result: tuple, refs: tuple) -> float:
    (dBs, dXA), (ref_dBs, ref_dXA) = result, refs
    return max(rel_err(dXA, ref_dXA), *map(rel_err, dBs, ref_dBs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16])
    args = ap.parse_args()
    rows = []
    for name, Ns in GRADIENTS:
        for r in args.ranks:
            dYs, Bs, XAs = operands(args.tokens, Ns, r)
            used = _lora_grads.fusable_grads(dYs, Bs, XAs)
            refs = _cublas(*([t.double() for t in ts] for ts in (dYs, Bs, XAs)))
            row = {"gradient": name, "M": args.tokens, "N": list(Ns), "r": r, "used": used}
            for way, fn in ways(dYs, Bs, XAs).items():
                row[f"{way}_err"] = _errors(fn(), refs)
                row[f"{way}_graph_us"] = graph_ms(fn) * 1e3
            rows.append(row)
    host = {way: host_us(fn) for way, fn in ways(*operands(128, (256, 64, 64), 16)).items()}
    table = Table(title=f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
                  f"triton {triton.__version__}, bf16, M = {args.tokens}, s = {S}")  # fmt: skip
    for column in (
        "output gradient",
        "N",
        "r",
        "used",
        "cuBLAS us",
        "fused us",
        "per projection us",
        "err cuBLAS / fused",
    ):
        table.add_column(column)
    for row in rows:
        speedup = row["cublas_graph_us"] / row["fused_graph_us"]
        per_projection = row.get("per_projection_graph_us")
        table.add_row(
            row["gradient"], "+".join(map(str, row["N"])), str(row["r"]),
            "fused" if row["used"] else "cuBLAS", f"{row['cublas_graph_us']:.1f}",
            f"{row['fused_graph_us']:.1f} ({speedup:.2f}x)",
            "" if per_projection is None else f"{per_projection:.1f}",
            f"{row['cublas_err']:.1e} / {row['fused_err']:.1e}",
        )  # fmt: skip
    table.caption = (f"CUDA-graph replay; host per call (tiny q/k/v-like tensors): cuBLAS "
                     f"{host['cublas']:.0f} us, fused {host['fused']:.0f} us, per projection "
                     f"{host['per_projection']:.0f} us")  # fmt: skip
    Console(width=140).print(table)
    if out := os.environ.get("OUT"):
        env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__}  # fmt: skip
        with open(os.path.join(out, "bench_lora_grads.json"), "w") as f:
            json.dump({"env": env, "host_us": host, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
