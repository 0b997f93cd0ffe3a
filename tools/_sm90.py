"""Compiling Triton and Gluon kernels for sm_90 (H100, H200) on a machine without a GPU.

Triton's compiler and the ``ptxas`` and ``cuobjdump`` it bundles run without a GPU. While
``sm90_driver()`` is active, the JIT asks a stand-in driver for its target, so
``kernel.warmup(*args, grid=...)`` takes a kernel through the whole pipeline (TTIR to cubin)
without launching it. ``tests/test_hopper_compile.py`` compiles every shipped kernel this way;
``tools/sass_loops.py`` counts the instructions in a kernel's loops.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Sm90Driver:
    """The three calls the JIT makes of the active driver before it compiles."""

    def get_current_device(self) -> str:
        return "sm_90 compile check"  # a device cache of its own in each JITFunction

    def get_current_stream(self, device: Any) -> int:
        return 0

    def get_current_target(self) -> Any:
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


@contextmanager
def sm90_driver() -> Iterator[None]:
    """Make the stand-in the JIT's active driver, and restore the previous one after."""
    from triton.runtime import driver

    previous = driver._active  # None until something asks for the default (CUDA) driver
    driver.set_active(Sm90Driver())
    try:
        yield
    finally:
        driver.set_active(previous)


def _ptxas() -> str:
    """The ``ptxas`` Triton compiles sm_90 with (Triton 3.9 bundles two and picks the newer)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path


def spill_bytes(kernel: Any) -> int:
    """The spill stores and loads that the bundled ``ptxas -v`` reports for the kernel's PTX
    (``CompiledKernel.n_spills`` is only filled in when a GPU loads the cubin)."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d, "kernel.ptx")
        src.write_text(kernel.asm["ptx"])
        cmd = [_ptxas(), "-v", "--gpu-name=sm_90a", str(src), "-o", str(Path(d, "k"))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", out.stdout + out.stderr)
    assert spills, out.stdout + out.stderr
    return sum(map(int, spills))


def sass(kernel: Any) -> list[tuple[int, str]]:
    """The kernel's SASS as ``(address, instruction)`` pairs, by the bundled ``cuobjdump``."""
    with tempfile.TemporaryDirectory() as d:
        cubin = Path(d, "kernel.cubin")
        cubin.write_bytes(kernel.asm["cubin"])
        cmd = [str(Path(_ptxas()).with_name("cuobjdump")), "-sass", str(cubin)]
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    lines = re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", text)
    return [(int(m.group(1), 16), m.group(2).strip()) for m in lines]
