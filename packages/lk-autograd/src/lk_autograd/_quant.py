"""Dequantizing a bitsandbytes 4-bit ``Params4bit`` weight with little Python per call.

``dequantize`` makes the op calls ``bitsandbytes.functional.dequantize_4bit`` makes (bnb 0.46+
registers them as ``torch.ops.bitsandbytes``), so the result is bit-identical: with double
quantization the absmax is itself dequantized (``dequantize_blockwise``) and offset, then
``dequantize_4bit`` expands the packed weight. It skips bnb's argument validation (the op
implementations check their arguments) and its wrapper layers; QKV alone dequantizes six
times per step. Where lk_triton runs Triton (CUDA, or the interpreter), one Triton launch
(``_quant_kernel``) replaces those op calls, with the same result bit for bit.
"""

import torch
from torch import Tensor

from lk_triton import uses_triton

from ._quant_kernel import dequantize_4bit_triton, triton


def dequantize(W: Tensor, quant_state) -> Tensor:
    """Packed 4-bit ``W`` dequantized to ``quant_state.dtype`` and ``quant_state.shape``."""
    if triton is not None and uses_triton(W):
        out = dequantize_4bit_triton(W, quant_state)
        return out.t() if W.shape[0] == 1 else out
    ops = torch.ops.bitsandbytes
    absmax = quant_state.absmax
    if quant_state.nested:
        state2 = quant_state.state2
        absmax = ops.dequantize_blockwise.default(
            absmax, state2.absmax, state2.code.to(absmax.device), state2.blocksize, state2.dtype
        )
        absmax += quant_state.offset
        if absmax.dtype != torch.float32:
            absmax = absmax.float()
    out = ops.dequantize_4bit.default(
        W, absmax, quant_state.blocksize, quant_state.quant_type, quant_state.shape,
        quant_state.dtype,
    )  # fmt: skip
    # bnb returns a weight packed as [1, n] (transposed layout) transposed back; we match it
    return out.t() if W.shape[0] == 1 else out
