"""Call 3: tests/autograd/test_down_backward.py with down_backward's mainloop set to one of
mainloop_variants.py's variants: ``python3 variant_tests.py BK STAGES GROUP_M``."""

import sys

import pytest

from lk_autograd import _down_backward as db

bk, stages, group = (int(x) for x in sys.argv[1:4])
db._TILE, db._STAGES, db._GROUP_M = (128, 256, bk), stages, group
sys.exit(
    pytest.main(
        ["-q", "-p", "no:cacheprovider", "tests/autograd/test_down_backward.py", "-k", "not llama"]
    )
)
