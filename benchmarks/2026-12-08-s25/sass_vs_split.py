"""Twenty-fifth session, on the CPU: the shipped ``_down_backward._kernel`` (with ``_mma_half``)
against ``split_mma.py``'s ``_kernel_split``, which ran on an H100 in call1 (the old kernel's
bits at 8192, 8191 and 300 tokens; 26 us faster). Both compiled for sm_90 under Triton 3.6 for
each activation, whole and partial row blocks (bf16), and their SASS compared line by line.

Usage: ``PYTHONPATH=tools:packages/lk-autograd/src:packages/lk-triton/src uv run --with
triton==3.6.0 python benchmarks/2026-12-08-s25/sass_vs_split.py``. Outcome: identical in all
six specializations.
"""

import sys
from pathlib import Path
from unittest import mock

import torch
from _sm90 import sass, sm90_driver

from lk_autograd import _down_backward as db

sys.path.insert(0, str(Path(__file__).parents[1] / "2026-12-07-s24"))
import split_mma


def kernel_sass(kernel, activation: str, tokens: int, r: int = 16) -> list[str]:
    K, N = 192, 512
    shapes = ((tokens, K), (K, N), (tokens, r), (r, N), (tokens, N), (tokens, N))
    dY, W, dXA, A, e, g = (torch.randn(*shape).to(torch.bfloat16) for shape in shapes)
    compiled = []

    def compile_only(_shipped, programs, args, options, device):
        compiled.append(kernel.warmup(*args, grid=(programs,), **{**options, "num_warps": 4}))

    with sm90_driver(), mock.patch.object(db, "launch", compile_only):
        db.gated_grads(dY, W, dXA, A, e, g, activation, True)
    return [text for _, text in sass(compiled[0])]


for activation in ("silu", "gelu", "gelu_tanh"):
    for tokens in (256, 300):
        shipped = kernel_sass(db._kernel, activation, tokens)
        split = kernel_sass(split_mma._kernel_split, activation, tokens)
        differ = sum(a != b for a, b in zip(shipped, split, strict=False))
        same = shipped == split
        print(activation, tokens, "identical" if same else f"{differ} lines differ", flush=True)
