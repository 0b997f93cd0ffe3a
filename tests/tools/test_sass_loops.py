"""tools/sass_loops.py on the CPU: it finds down_backward's epilogue loop, and whole row blocks
compile without the row masks (the twenty-second session had them in every launch)."""

import sys
from collections import Counter
from pathlib import Path

import pytest

from lk_autograd import _down_backward
from lk_triton import _gated

pytestmark = pytest.mark.skipif(
    _down_backward.gluon is None or _gated.INTERPRET,
    reason="needs Triton's Gluon (3.6-3.9) and its compiler, not the interpreter",
)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))


def _loop(tokens: int) -> list[str]:
    import sass_loops
    from _sm90 import sass

    return sass_loops.subtile_loop(sass(sass_loops.compile_kernel("silu", tokens)))


def test_finds_the_epilogue_loop_and_whole_blocks_are_unmasked():
    """The loop found is the epilogue's: SiLU's two MUFU (exp, reciprocal) per element, 32
    elements a thread per ``[32, 64]`` subtile.
    With a multiple of 128 tokens no 16-byte load or store of ``e``, ``g``, ``de``, ``dg`` or
    ``h`` is predicated (no row mask); with 333 they are."""
    import sass_loops

    whole, partial = _loop(256), _loop(333)
    assert Counter(map(sass_loops.opcode, whole))["MUFU"] == 64

    def masked_rows(loop: list[str]) -> list[str]:
        return [t for t in loop if t.startswith("@") and (".128" in t and "G.E" in t)]

    assert masked_rows(whole) == [] and masked_rows(partial)
