"""Session-wide test setup: a guard against bitsandbytes' native CPU 4-bit dequantize.

bitsandbytes 0.50's CPU backend dequantizes 4-bit weights with a native AVX-512 kernel. On some
AVX-512 processors (the development machine of 2026-12-02 among them) it returns wrong values
for small weights, e.g. a 48 x 16 NF4 weight with 64-element blocks dequantizes to 39% relative
error against the original, where bnb's own portable implementation gives the usual 9%. PEFT's
CPU forward goes through that kernel, so it is the reference the 4-bit tests compare against,
and under ``TRITON_INTERPRET=1`` our Triton dequantize (which agrees with the portable one)
would be marked wrong. Where the native kernel disagrees with bnb's portable implementation on
a probe weight, the session registers a torch version of the portable formula as bnb's CPU
kernel, and warns.
"""

import warnings
from math import prod

import pytest
import torch


def _portable_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    """bnb's portable formula: element ``i`` is ``code[nibble(i)] * absmax[i // blocksize]``,
    the high nibble first. Written out rather than calling bnb's own
    ``backends.default.ops._dequantize_4bit_compute``, which is ``torch.compile``d: one
    compilation per weight shape, past dynamo's recompile limit in this suite."""
    from bitsandbytes.backends.utils import _get_4bit_code

    packed = (A if A.dtype == torch.uint8 else A.view(torch.uint8)).reshape(-1)
    nibbles = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(-1).long()
    n = prod(shape)
    code = _get_4bit_code(quant_type, A.device)
    scale = absmax.float().repeat_interleave(blocksize)[:n]
    return (code[nibbles[:n]] * scale).reshape(shape).to(dtype)


def _native_cpu_dequantize_is_wrong() -> bool:
    import bitsandbytes.functional as F

    W = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))
    packed, state = F.quantize_4bit(W, quant_type="nf4", blocksize=64)
    portable = _portable_dequantize_4bit(packed, state.absmax, 64, "nf4", state.shape, W.dtype)
    return not torch.equal(F.dequantize_4bit(packed, state), portable)


@pytest.fixture(scope="session", autouse=True)
def _bnb_cpu_dequantize():
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return
    if _native_cpu_dequantize_is_wrong():
        torch.library.register_kernel(
            "bitsandbytes::dequantize_4bit", "cpu", _portable_dequantize_4bit
        )
        warnings.warn(
            "bitsandbytes' native CPU dequantize_4bit disagrees with its portable formula on "
            "this processor; the tests use the portable one (tests/conftest.py)",
            stacklevel=1,
        )
