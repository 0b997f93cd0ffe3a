"""Down's ``dh`` GEMM with the gated activation's backward in its epilogue
(``lk_autograd._down_backward``) against the separate route it replaces.

Usage: ``python tools/bench_down_backward.py [--ab ROUNDS] [--activations silu gelu gelu_tanh]``
on an NVIDIA sm_90 GPU.

- Kernel: at Llama-3-8B's MLP (``dY`` ``[tokens, 4096]``, ``W`` ``[4096, 14336]``), SiLU, ranks
  8, 16 and 64: the separate route (``_linear.input_grad``'s ``dh = dY W + dXA A``, then
  ``activation_backward_with_dA``) against ``down_backward`` (the kernel, then cuBLAS's ``dA =
  dXA^T h``), and the bare cuBLAS ``dY W`` (the floor of both). Checked first (the two routes'
  ``de``, ``dg`` and ``dA`` against each other), then timed replayed from a CUDA graph; then
  ``down_backward`` on one token fewer (a masked last row block).
- ``--activations``: the same at 8192 tokens, r = 16 for GELU (exact, tanh) too: the rows
  behind ``_down_backward._TIMED_ACTIVATIONS``.
- ``--ab N``: the whole MLP block (``bench_lora_blocks``' r = 16 model, bf16 and NF4) with the
  route on and off, their CUDA graphs' replays alternated N rounds (``mlp_ab_rows``).

Writes JSON to ``$OUT/bench_down_backward.json`` when ``OUT`` is set.
"""

import argparse
import json
import os

import torch
from bench_lora_blocks import graph_ms, mlp_ab_rows, rows_table
from rich.console import Console

from lk_autograd import _linear as L
from lk_autograd._activation_backward import activation_backward_with_dA
from lk_autograd._down_backward import down_backward, fusable_down_backward

D, INTER = 4096, 14336


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).norm() / ref.double().norm()).item()


def kernel_row(tokens: int, r: int, activation: str = "silu") -> dict:
    """One shape: the two routes against each other, then the floor's and both timings (us)."""
    torch.manual_seed(0)
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    dY, dXA = torch.randn(tokens, D, **bf16), torch.randn(tokens, r, **bf16)
    W, A = torch.randn(D, INTER, **bf16) * 0.02, torch.randn(r, INTER, **bf16) * 0.02
    e, g = torch.randn(tokens, INTER, **bf16), torch.randn(tokens, INTER, **bf16)
    assert fusable_down_backward(dY, W, e, g, A, activation)

    def separate() -> tuple[torch.Tensor, ...]:
        dh = L.input_grad(None, (dXA, A), [(dY, W, None)], torch.bfloat16)
        return activation_backward_with_dA(dh, e, g, dXA, activation, False)

    def fused() -> tuple[torch.Tensor, ...]:
        return down_backward(dY, W, dXA, A, e, g, activation, False)

    row = {"activation": activation, "tokens": tokens, "r": r}
    for name, a, b in zip(("de", "dg", "dA"), fused(), separate(), strict=True):
        row[f"{name}_rel_diff"] = _rel(a, b)
    row["floor_us"] = graph_ms(lambda: dY @ W) * 1e3
    row["separate_us"] = graph_ms(separate) * 1e3
    row["fused_us"] = graph_ms(fused) * 1e3
    row["saved_us"] = row["separate_us"] - row["fused_us"]
    tail = [t[1:] for t in (dY, dXA, e, g)]  # one token fewer: the last row block masked
    row["fused_1_fewer_us"] = (
        graph_ms(lambda: down_backward(tail[0], W, tail[1], A, tail[2], tail[3], activation, False))
        * 1e3
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ab", type=int, default=0, metavar="ROUNDS")
    parser.add_argument(
        "--activations", nargs="+", default=["silu"], choices=["silu", "gelu", "gelu_tanh"]
    )
    args = parser.parse_args()
    console = Console()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["kernel"] = [kernel_row(t, r) for t in (8192, 2048) for r in (8, 16, 64)]
    results["kernel"] += [kernel_row(8192, 16, a) for a in args.activations if a != "silu"]
    console.print(rows_table("dh + activation backward + dA (us, graph replay)", results["kernel"]))
    if args.ab:
        for nf4 in (False, True):
            key = "ab_nf4" if nf4 else "ab"
            results[key] = mlp_ab_rows(args.ab, "fusable_down_backward", nf4)
            title = f"MLP block r = 16{' NF4' if nf4 else ''}, route on / off"
            console.print(rows_table(title, results[key]))
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "bench_down_backward.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
