"""tools/sass_dump.py on the CPU: a kernel compiles to the same SASS twice (so ``identical`` after
a change means the change left it alone), different kernels do not, its TTGIR comes without
source locations, and the compare says which specializations moved."""

import sys
from pathlib import Path

import pytest

from lk_autograd import _down_backward
from lk_triton import _gated

pytestmark = pytest.mark.skipif(
    _down_backward.gluon is None or _gated.INTERPRET,
    reason="needs Triton's Gluon (3.6-3.9) and its compiler, not the interpreter",
)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))


def test_same_kernel_same_sass_and_kernels_apart():
    import sass_dump
    from _sm90 import sm90_driver

    firsts, names = {}, []
    for name, module, call in sass_dump.specializations():
        firsts.setdefault(module, (name, call))
        names.append(name)
    assert len(set(names)) == len(names)
    assert len(firsts) == 3  # down_backward, _ws_gated, _ws_gemm
    with sm90_driver():
        (module, (_, call)), *others = firsts.items()
        once, twice = sass_dump.kernel_sass(module, call), sass_dump.kernel_sass(module, call)
        other = sass_dump.kernel_sass(others[0][0], others[0][1][1])
        ttgir = sass_dump.kernel_sass(module, call, ir="ttgir")
    assert once and once == twice and other != once
    assert any("ttg.warp_specialize" in line for line in ttgir)  # Gluon's partitions
    assert not any("#loc" in line for line in ttgir)  # locations left out: moved code compares


def test_verdicts():
    import sass_dump

    before = {"kept": ["MOV R1", "EXIT"], "moved": ["MOV R1", "EXIT"]}
    now = {"kept": ["MOV R1", "EXIT"], "moved": ["EXIT"], "new": ["EXIT"]}
    assert sass_dump.verdicts(before, now) == {
        "kept": "identical",
        "moved": "differs (2 -> 1 instructions)",
        "new": "absent before",
    }
