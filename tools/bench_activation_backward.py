"""The MLP's activation backward with down's ``dA`` in one pass
(``lk_autograd._activation_backward``) against the separate pair it replaces.

Usage: ``python tools/bench_activation_backward.py [--sweep] [--ab ROUNDS]`` on an NVIDIA
sm_90+ GPU.

- Kernel: at Llama-3-8B's ``[tokens, 14336]`` and ranks 8, 16 and 64, lk_triton's backward
  (``dh, e, g -> h, de, dg``) followed by cuBLAS's ``dXA^T h``, against the one kernel and its
  sum. Checked first (``de`` and ``dg`` the same bits, ``dA``'s error against float64 beside
  cuBLAS's), then timed replayed from a CUDA graph.
- ``--sweep``: the kernel at other tiles, warps and row chunks (the module's constants).
- ``--ab N``: the whole MLP block (``bench_lora_blocks``' r = 16 model) with the kernel on and
  off, each captured once as a CUDA graph and their replays alternated N rounds, as graph time
  over the dense floor timed in the same round, and the block's held and peak memory. (On
  sm_90 the MLP takes ``_down_backward`` first, where it applies, and both arms then match:
  ``tools/bench_down_backward.py --ab`` times that route.)

Writes JSON to ``$OUT/bench_activation_backward.json`` when ``OUT`` is set.
"""

import argparse
import json
import os

import torch
from bench_lora_blocks import graph_ms, mlp_ab_rows, rows_table
from rich.console import Console

from lk_autograd import _activation_backward as ab
from lk_triton import _gated

INTER = 14336
# (BM, BN), warps, rows per program
SWEEP = [((64, 128), 8, 512), ((64, 128), 8, 256), ((64, 128), 8, 1024), ((64, 64), 4, 512),
         ((32, 128), 4, 512), ((128, 64), 8, 512), ((64, 256), 8, 512), ((128, 128), 8, 512),
         ((32, 256), 8, 512), ((64, 128), 4, 512)]  # fmt: skip


def _data(tokens: int, r: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    dh, e, g = (torch.randn(tokens, INTER, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    return dh, e, g, torch.randn(tokens, r, device="cuda", dtype=torch.bfloat16)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm()).item()


def kernel_row(tokens: int, r: int) -> dict:
    """One shape: the check, then both timings (us)."""
    dh, e, g, dXA = _data(tokens, r)
    h, de, dg = _gated.gated_backward(dh, e, g, "silu", inplace=False)
    exact = dXA.double().t() @ h.double()
    fused_de, fused_dg, dA = ab.activation_backward_with_dA(dh, e, g, dXA, "silu", False)
    assert torch.equal(fused_de, de) and torch.equal(fused_dg, dg), "de/dg differ"
    row = {"tokens": tokens, "r": r, "cublas_dA_err": _rel(dXA.t() @ h, exact),
           "fused_dA_err": _rel(dA, exact)}  # fmt: skip
    del h, de, dg, fused_de, fused_dg, exact

    def pair() -> None:
        h, _, _ = _gated.gated_backward(dh, e, g, "silu", inplace=False)
        dXA.t() @ h

    row["pair_us"] = graph_ms(pair) * 1e3
    row["fused_us"] = (
        graph_ms(lambda: ab.activation_backward_with_dA(dh, e, g, dXA, "silu", False)) * 1e3
    )
    row["saved_us"] = row["pair_us"] - row["fused_us"]
    return row


def sweep_rows() -> list[dict]:
    """The kernel at 8192 tokens, r = 16, at each of ``SWEEP``'s configurations."""
    dh, e, g, dXA = _data(8192, 16)
    shipped = (ab._TILE, ab._NUM_WARPS, ab._ROWS)
    rows = []
    try:
        for tile, warps, rows_per in SWEEP:
            ab._TILE, ab._NUM_WARPS, ab._ROWS = tile, warps, rows_per
            us = graph_ms(lambda: ab.activation_backward_with_dA(dh, e, g, dXA, "silu", False))
            rows.append({"tile": list(tile), "warps": warps, "rows": rows_per, "us": us * 1e3})
    finally:
        ab._TILE, ab._NUM_WARPS, ab._ROWS = shipped
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--ab", type=int, default=0, metavar="ROUNDS")
    args = parser.parse_args()
    console = Console()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["kernel"] = [kernel_row(t, r) for t in (8192, 2048) for r in (8, 16, 64)]
    title = "activation backward + down's dA (us, graph replay)"
    console.print(rows_table(title, results["kernel"]))
    if args.sweep:
        results["sweep"] = sweep_rows()
        console.print(rows_table("fused kernel, 8192 x 14336, r = 16", results["sweep"]))
    if args.ab:
        results["ab"] = mlp_ab_rows(args.ab, "fusable_activation_dA")
        console.print(rows_table("MLP block r = 16, kernel on / off", results["ab"]))
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "bench_activation_backward.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
