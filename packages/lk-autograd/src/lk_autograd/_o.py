"""``LoRA_O``: one LoRA projection (the attention output, or any single LoRA linear)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import _fanout


class LoRA_O(torch.autograd.Function):
    """``Y = o(X) = X W^T + bias + sum_a s_a (X_a A_a^T B_a^T + b_a)`` (DoRA: see ``_linear``).

    Shapes: ``X`` ``[N, k]``, ``W`` ``[o, k]``, ``A_a`` ``[r, k]``, ``B_a`` ``[o, r]``. Backward::

        dX = dY W + sum_a M_a * ((s_a dY B_a) A_a)
        dA_a = (s_a dY B_a)^T X_a    dB_a = s_a dY^T (X_a A_a^T)    db_a = s_a sum_N dY

    Saved: ``X`` and the ``[N, r]`` products ``X_a A_a^T`` (plus DoRA's ``Z`` and dropout masks).
    """

    @staticmethod
    def forward(ctx: Any, X: Tensor, layouts: tuple, *flat: Any) -> Tensor:
        (Y,) = _fanout.forward(ctx, X, layouts, flat)
        return Y

    @staticmethod
    def backward(ctx: Any, dY: Tensor) -> tuple[Any, ...]:
        return _fanout.backward(ctx, dY)


def apply_lora_o(attn: nn.Module, X: Tensor, *, o: str = "o_proj") -> Tensor:
    """``attn.o(X)`` through ``LoRA_O``; any leading shape. ``attn`` may be any module holding
    the projection. Runs the module's own (PEFT) forward when ``can_fuse`` rejects it.
    """
    module = getattr(attn, o)
    outs = _fanout.apply(LoRA_O, [module], X)
    return module(X) if outs is None else outs[0]
