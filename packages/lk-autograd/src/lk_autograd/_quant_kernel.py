"""A one-launch Triton dequantize of bitsandbytes 4-bit weights (NF4/FP4, nested absmax or not).

bitsandbytes packs two 4-bit codes per byte, the first element in the high nibble. Element
``i`` of block ``b = i // blocksize`` is, in float32 and rounded once to the output dtype::

    W[i] = code[nibble(i)] * absmax[b]
    absmax[b] = code2[absmax_q[b]] * absmax2[b // blocksize2] + offset   (nested, two roundings)

which is what bnb's kernels compute (``dequantize_blockwise`` for the nested absmax, then
``dequantize_4bit``), so the result is bit-identical; floating-point contraction is off so the
nested ``a * b + c`` is not fused into one rounding. One launch replaces bnb's two or three op
calls, each of which costs tens of microseconds of Python on the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lk_triton._launch import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is a Linux-only dependency: bitsandbytes' own ops run instead
    triton = None

_BLOCK = 2048

if triton is not None:

    @triton.jit
    def _dequantize_4bit_kernel(
        packed, absmax, code, absmax2, code2, offset, out, n,
        BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = i < n
        byte = tl.load(packed + i // 2, mask=mask, other=0)
        nibble = tl.where(i % 2 == 0, byte >> 4, byte & 15).to(tl.int32)
        value = tl.load(code + nibble, mask=mask, other=0.0)
        block = i // BLOCKSIZE
        if NESTED:
            q = tl.load(absmax + block, mask=mask, other=0).to(tl.int32)
            scale = tl.load(code2 + q, mask=mask, other=0.0)
            scale = scale * tl.load(absmax2 + block // BLOCKSIZE2, mask=mask, other=0.0)
            scale = scale + tl.load(offset)
        else:
            scale = tl.load(absmax + block, mask=mask, other=0.0)
        tl.store(out + i, (value * scale).to(out.dtype.element_ty), mask=mask)


def _float32_on(t: Tensor, device: torch.device) -> Tensor:
    """``t.to(device, torch.float32)`` without the call (a dispatch) when it is already there:
    bnb keeps its code tables and offset on the weight's device in float32."""
    return t if t.dtype == torch.float32 and t.device == device else t.to(device, torch.float32)


def dequantize_4bit_triton(W: Tensor, quant_state) -> Tensor:
    """``W`` (packed uint8) dequantized to ``quant_state.dtype`` in ``quant_state.shape``, laid
    out as bitsandbytes lays it out (the caller handles bnb's transposed ``[1, n]`` packing)."""
    qs = quant_state
    out = torch.empty(qs.shape, dtype=qs.dtype, device=W.device)
    n = out.numel()
    absmax2 = code2 = offset = blocksize2 = None  # the nested absmax's, if any
    if qs.nested:
        s2 = qs.state2
        absmax2, code2, blocksize2 = s2.absmax, _float32_on(s2.code, W.device), s2.blocksize
        offset = _float32_on(torch.as_tensor(qs.offset), W.device)
    if n:
        args = [W, qs.absmax, _float32_on(qs.code, W.device), absmax2, code2, offset, out, n]
        kwargs = {"BLOCKSIZE": qs.blocksize, "BLOCKSIZE2": blocksize2, "NESTED": qs.nested,
                  "BLOCK": _BLOCK, "num_warps": 4, "enable_fp_fusion": False}  # fmt: skip
        launch(_dequantize_4bit_kernel, triton.cdiv(n, _BLOCK), args, kwargs, W.device)
    return out
