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
  over the dense floor timed in the same round, and the block's held and peak memory.

Writes JSON to ``$OUT/bench_activation_backward.json`` when ``OUT`` is set.
"""

import argparse
import json
import os

import torch
from bench_lora_blocks import (
    D,
    build,
    capture_graph,
    fwd_bwd,
    graph_ms,
    held_and_peak,
    ours_mlp,
    peft_mlp,
    timed_ms,
)
from bench_lora_blocks import floor as mlp_floor
from rich.console import Console
from rich.table import Table

import lk_autograd._mlp as mlp
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


def ab_rows(rounds: int) -> list[dict]:
    """The MLP block with the kernel on and off: both captured once as CUDA graphs, then their
    replays timed in turn, ``rounds`` times each, so that the card's clock drift falls on both
    alike; graph time over the dense floor's (timed in each round too)."""
    m = build(16, False, False)
    torch.manual_seed(1)
    X = torch.randn(1, 8192, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        dYs = [torch.randn_like(peft_mlp(m, X))]
    real = mlp.fusable_activation_dA
    graphs, memory = {}, {}
    try:
        for on in (True, False):
            mlp.fusable_activation_dA = real if on else (lambda *a: False)
            graphs[on] = capture_graph(fwd_bwd(ours_mlp, m, X, dYs))
            memory[on] = held_and_peak(ours_mlp, m, X, dYs)
    finally:
        mlp.fusable_activation_dA = real
    floor_graph = capture_graph(mlp_floor(m, "mlp", X, dYs))
    rows = []
    for i in range(rounds):
        floor_ms = timed_ms(floor_graph.replay)
        for on in (True, False):
            ms = timed_ms(graphs[on].replay)
            held, peak = memory[on]
            rows.append({"round": i, "kernel": on, "graph_ms": ms, "x_floor": ms / floor_ms,
                         "floor_ms": floor_ms, "held_mib": held, "peak_mib": peak})  # fmt: skip
    return rows


def _table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--ab", type=int, default=0, metavar="ROUNDS")
    args = parser.parse_args()
    console = Console()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["kernel"] = [kernel_row(t, r) for t in (8192, 2048) for r in (8, 16, 64)]
    console.print(_table("activation backward + down's dA (us, graph replay)", results["kernel"]))
    if args.sweep:
        results["sweep"] = sweep_rows()
        console.print(_table("fused kernel, 8192 x 14336, r = 16", results["sweep"]))
    if args.ab:
        results["ab"] = ab_rows(args.ab)
        console.print(_table("MLP block r = 16, kernel on / off", results["ab"]))
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "bench_activation_backward.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
