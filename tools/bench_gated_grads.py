"""The MLP's activation backward with its rank-r gradients in one pass
(``lk_autograd._gated_grads``) against the separate kernels, and the MLP block with and without it.

Usage: ``python tools/bench_gated_grads.py [--tokens 8192] [--rounds 3] [--nf4]`` on an NVIDIA
sm_90+ GPU.

1. Kernels, Llama-3-8B's ``[M, 14336]`` gradients, rank 16, SiLU. ``separate``: lk_triton's
   activation backward (``h``, ``de``, ``dg``), cuBLAS's ``dA_d = dXA_d^T h`` and ``lora_grads``
   for gate and for up, as ``LoRA_MLP`` ran them before; ``fused``: ``gated_lora_grads`` at
   each tile configuration of the sweep. Checked against each other first, then timed
   replayed from a CUDA graph (out of place both ways, so a replay reads the same data).
2. The MLP block, forward+backward, with the one-pass backward on and off (``_MIN_GRADIENT``
   raised past the block), alternated ``--rounds`` times; CUDA-graph time as a ratio to the
   dense floor of the same run (``bench_lora_blocks``), held and peak activation memory. With
   ``--nf4``, the NF4 block too (bitsandbytes).

Writes JSON to ``$OUT/bench_gated_grads.json`` when ``OUT`` is set.
"""

import argparse
import json
import os

import torch
import triton
from bench_activation import rel_err
from bench_lora_blocks import (
    build,
    floor,
    fwd_bwd,
    graph_ms,
    held_and_peak,
    ours_mlp,
    peft_mlp,
    rel_errors,
)
from rich.console import Console
from rich.table import Table

from lk_autograd import _gated_grads, _lora_grads
from lk_triton import _gated

INTER, D, R = 14336, 4096, 16
SS = (2.0, 2.0)
SWEEP = [(64, 128, 8, 1), (64, 128, 8, 2), (64, 128, 8, 3), (64, 128, 8, 4), (64, 128, 16, 1),
         (64, 128, 16, 2), (128, 128, 16, 2), (32, 256, 8, 1), (64, 256, 16, 2), (128, 64, 8, 1),
         (64, 64, 8, 4), (32, 64, 4, 4)]  # fmt: skip


def operands(M: int) -> tuple:
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    dh, e, g = (torch.randn(M, INTER, **bf) for _ in range(3))
    Bs = [torch.randn(INTER, R, **bf) / R**0.5 for _ in range(2)]
    XAs = list(torch.randn(M, 2 * R, **bf).split(R, dim=1))
    return dh, e, g, Bs, XAs, torch.randn(M, R, **bf)


def separate(dh, e, g, Bs, XAs, dXA_d) -> tuple:
    """``(de, dg, [dB_g, dB_u], dXA, dA_d)`` the way ``LoRA_MLP`` computed them before."""
    h, de, dg = _gated.gated_backward(dh, e, g, "silu", inplace=False)
    dA = dXA_d.t() @ h
    (dB_g,), dXA_g = _lora_grads.lora_grads([de], [Bs[0]], [XAs[0]], [SS[0]])
    (dB_u,), dXA_u = _lora_grads.lora_grads([dg], [Bs[1]], [XAs[1]], [SS[1]])
    return de, dg, [dB_g, dB_u], torch.cat([dXA_g, dXA_u], dim=1), dA


def fused(dh, e, g, Bs, XAs, dXA_d) -> tuple:
    return _gated_grads.gated_lora_grads(dh, e, g, Bs, XAs, SS, dXA_d, "silu", False)


def _max_err(result: tuple, ref: tuple) -> float:
    de, dg, dBs, dXA, dA = result
    ref_de, ref_dg, ref_dBs, ref_dXA, ref_dA = ref
    return max(rel_err(de, ref_de), rel_err(dg, ref_dg), rel_err(dXA, ref_dXA),
               rel_err(dA, ref_dA), *map(rel_err, dBs, ref_dBs))  # fmt: skip


def kernels(M: int) -> list[dict]:
    ops = operands(M)
    ref = separate(*ops)
    rows = [{"way": "separate", "graph_us": graph_ms(lambda: separate(*ops)) * 1e3, "err": 0.0}]
    shipped = dict(_gated_grads._CONFIG)
    for BM, BN, warps, stages in SWEEP:
        _gated_grads._CONFIG = {"BM": BM, "BN": BN, "num_warps": warps, "num_stages": stages}
        row = {"way": f"fused {BM}x{BN} w{warps} s{stages}", "config": [BM, BN, warps, stages]}
        try:
            row["err"] = _max_err(fused(*ops), ref)
            row["graph_us"] = graph_ms(lambda: fused(*ops)) * 1e3
        except Exception as err:  # a configuration that does not fit or compile
            row["error"] = repr(err)[:200]
        rows.append(row)
    _gated_grads._CONFIG = shipped
    return rows


def block(M: int, nf4: bool, rounds: int) -> list[dict]:
    """The MLP block with the one-pass backward on and off, alternated, against its floor."""
    m = build(R, nf4, False)
    torch.manual_seed(1)
    X = torch.randn(1, M, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        dYs = [torch.randn_like(peft_mlp(m, X))]
    on = _gated_grads._MIN_GRADIENT
    rows = []
    for i in range(rounds):
        floor_ms = graph_ms(floor(m, "mlp", X, dYs))
        for way, bound in (("on", on), ("off", 1 << 62)):
            _gated_grads._MIN_GRADIENT = bound
            err = rel_errors(m, X, dYs, "mlp")["max_rel_err"]
            held, peak = held_and_peak(ours_mlp, m, X, dYs)
            ms = graph_ms(fwd_bwd(ours_mlp, m, X, dYs))
            rows.append({"base": "nf4" if nf4 else "bf16", "round": i, "way": way,
                         "graph_ms": ms, "floor_graph_ms": floor_ms, "x": ms / floor_ms,
                         "held_mib": held, "peak_mib": peak, "err": err})  # fmt: skip
    _gated_grads._MIN_GRADIENT = on
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nf4", action="store_true")
    args = ap.parse_args()
    title = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
             f"{triton.__version__}, bf16, M = {args.tokens}, r = {R}")  # fmt: skip
    console = Console(width=140)
    kernel_rows = kernels(args.tokens)
    table = Table(title=f"activation backward + rank-r grads: {title}")
    for column in ("way", "graph us", "vs separate", "max rel err vs separate"):
        table.add_column(column)
    base = kernel_rows[0]["graph_us"]
    for row in kernel_rows:
        if "error" in row:
            table.add_row(row["way"], row["error"][:60], "", "")
            continue
        table.add_row(row["way"], f"{row['graph_us']:.1f}", f"{base / row['graph_us']:.2f}x",
                      f"{row['err']:.1e}")  # fmt: skip
    console.print(table)
    block_rows = []
    for nf4 in (False, True) if args.nf4 else (False,):
        block_rows += block(args.tokens, nf4, args.rounds)
    table = Table(title=f"MLP block, one-pass backward on / off: {title}")
    for column in ("base", "round", "way", "graph ms", "x floor", "held MiB", "peak MiB", "err"):
        table.add_column(column)
    for row in block_rows:
        table.add_row(row["base"], str(row["round"]), row["way"], f"{row['graph_ms']:.3f}",
                      f"{row['x']:.3f}", f"{row['held_mib']:.1f}", f"{row['peak_mib']:.1f}",
                      f"{row['err']:.1e}")  # fmt: skip
    console.print(table)
    if out := os.environ.get("OUT"):
        env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__}  # fmt: skip
        with open(os.path.join(out, "bench_gated_grads.json"), "w") as f:
            json.dump({"env": env, "kernels": kernel_rows, "block": block_rows}, f, indent=1)


if __name__ == "__main__":
    main()
