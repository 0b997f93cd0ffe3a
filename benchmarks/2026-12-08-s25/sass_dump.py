"""Twenty-fifth session, on the CPU: ``down_backward``'s kernel compiled for sm_90 in twelve
specializations (SiLU, GELU, GELU-tanh x whole / partial row blocks x bf16 / fp16), its SASS
written to a JSON file, or compared with an earlier dump. How the ``_ws_gemm`` change (the
layout flag of ``_mma_half``, the tile width of ``_shared_state``) was shown to leave the
GPU-run kernel unchanged: a dump at 79054f1 (the split kernel of b52ef17), then a compare
after it (all twelve identical).

Usage: ``PYTHONPATH=tools:packages/lk-autograd/src:packages/lk-triton/src uv run --with
triton==3.6.0 python benchmarks/2026-12-08-s25/sass_dump.py dump|compare FILE``.
"""

import json
import sys
from unittest import mock

import torch
from _sm90 import sass, sm90_driver

from lk_autograd import _down_backward as db


def kernel_sass(activation: str, tokens: int, dtype: torch.dtype) -> list[str]:
    K, N, r = 192, 512, 16
    shapes = ((tokens, K), (K, N), (tokens, r), (r, N), (tokens, N), (tokens, N))
    operands = [torch.randn(*shape).to(dtype) for shape in shapes]
    compiled = []

    def compile_only(kernel, programs, args, options, device):
        compiled.append(kernel.warmup(*args, grid=(programs,), **options))

    with sm90_driver(), mock.patch.object(db, "launch", compile_only):
        db.gated_grads(*operands, activation, True)
    return [text for _, text in sass(compiled[0])]


def main(mode: str, path: str) -> None:
    dumps = {
        f"{activation}-{tokens}-{str(dtype).removeprefix('torch.')}": kernel_sass(
            activation, tokens, dtype
        )
        for activation in ("silu", "gelu", "gelu_tanh")
        for tokens in (256, 300)
        for dtype in (torch.bfloat16, torch.float16)
    }
    if mode == "dump":
        with open(path, "w") as f:
            json.dump(dumps, f)
        return
    with open(path) as f:
        before = json.load(f)
    for key, lines in dumps.items():
        print(key, "identical" if before.get(key) == lines else "differs")


if __name__ == "__main__":
    main(*sys.argv[1:3])
