"""Re-run the kernel and Function tests with ``TRITON_INTERPRET=1``.

Triton reads that variable when a kernel is decorated, so it needs a fresh process: there
the CPU tensors run the real Triton kernels in Triton's interpreter instead of the torch path.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lk_triton import _gated

ROOT = Path(__file__).resolve().parents[1]
SUITES = [p for p in ("tests/triton", "tests/autograd") if (ROOT / p).is_dir()]


@pytest.mark.skipif(_gated.INTERPRET, reason="already running under TRITON_INTERPRET=1")
def test_suites_pass_in_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not gpu", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*cmd, *SUITES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"TRITON_INTERPRET=1 run: {summary}")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert " passed" in summary and "failed" not in summary
