"""The epilogue loop of ``down_backward``'s kernel, counted in SASS, compiled on the CPU.

Usage: ``uv run tools/sass_loops.py`` (``uv run --with triton==3.6.0 ...`` for the GPU
machine's release). No GPU needed: the kernel is compiled for sm_90 and disassembled by the
tools Triton bundles (``tools/_sm90.py``).

What it tells: which code each variant runs in its epilogue, and whether something that
should be compiled out is (the twenty-second session's row masks were in every launch). What
it does not tell: the kernel's time. On an H100, 21% fewer instructions (the fast sigmoid)
saved 14-17 us of 1.64 ms, and exact GELU's 2.35x SiLU's instructions cost 0.2 ms
(BENCHMARKS.md, twenty-third session): the epilogue is not issue-bound. For each activation
and row blocks (whole, or a partial last one): spill bytes, then the subtile loop (the
innermost loop that both loads and stores global memory): its instructions per iteration and
per tile, and its mix.
"""

from __future__ import annotations

import re
from collections import Counter
from unittest import mock

import torch
from _sm90 import sass, sm90_driver, spill_bytes
from rich.console import Console
from rich.table import Table

from lk_autograd import _down_backward as db

MIX = ("MUFU", "LDG", "STG", "LDS", "STS", "BAR")


def compile_kernel(activation: str, tokens: int, r: int = 16):
    """The ``CompiledKernel`` ``down_backward`` would launch for these operands (small ``K``
    and ``N``: the code depends on their divisibility by 16, not on their size)."""
    K, N = 192, 512
    dY, W, dXA, A, e, g = (
        torch.randn(*shape).to(torch.bfloat16)
        for shape in ((tokens, K), (K, N), (tokens, r), (r, N), (tokens, N), (tokens, N))
    )
    kernels = []

    def compile_only(kernel, programs, args, kwargs, device):
        kernels.append(kernel.warmup(*args, grid=(programs,), **kwargs))

    with sm90_driver(), mock.patch.object(db, "launch", compile_only):
        db.down_backward(dY, W, dXA, A, e, g, activation, inplace=True)
    return kernels[0]


def subtile_loop(instructions: list[tuple[int, str]]) -> list[str]:
    """The shortest loop (a branch back to an earlier address) that has both a global load
    and a global store: the epilogue's loop over subtiles."""
    where = {address: i for i, (address, _) in enumerate(instructions)}
    loops = []
    for i, (address, text) in enumerate(instructions):
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) in where and int(target.group(1), 16) <= address:
            body = [t for _, t in instructions[where[int(target.group(1), 16)] : i + 1]]
            if any(" LDG" in f" {t}" for t in body) and any(" STG" in f" {t}" for t in body):
                loops.append(body)
    return min(loops, key=len)


def opcode(instruction: str) -> str:
    """``@!P3 LDG.E.EF.128 R52, ...`` -> ``LDG``."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")[0]


def main() -> None:
    import triton

    BM, BN, _ = db._TILE
    table = Table(title=f"down_backward's epilogue loop, sm_90, Triton {triton.__version__}")
    for column in ("activation", "rows", "spills", "per subtile", "per tile", *MIX):
        table.add_column(column)
    (SM, SN) = db._SUBTILE
    subtiles = (BM // SM) * (BN // SN)
    for activation in ("silu", "gelu", "gelu_tanh"):
        for tokens in (256, 333):
            kernel = compile_kernel(activation, tokens)
            loop = subtile_loop(sass(kernel))
            mix = Counter(map(opcode, loop))
            table.add_row(
                activation, "partial" if tokens % BM else "whole", str(spill_bytes(kernel)),
                str(len(loop)), f"{len(loop) * subtiles:,}", *(str(mix[op]) for op in MIX),
            )  # fmt: skip
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
