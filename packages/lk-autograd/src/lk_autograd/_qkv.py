"""``LoRA_QKV``: the query, key and value LoRA projections of one input, in one Function."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import _fanout


class LoRA_QKV(torch.autograd.Function):
    """``(Q, K, V) = (q(X), k(X), v(X))`` with LoRA (or DoRA) adapters on each projection.

    Shapes: ``X`` ``[N, d]``; ``W_q`` ``[H_q D, d]``, ``W_k`` and ``W_v`` ``[H_kv D, d]`` (GQA).
    Each ``P(X) = X W^T + bias + sum_a s_a (X_a A_a^T B_a^T + b_a)`` (DoRA: see ``_linear``).
    The adapters without dropout share one ``X [A_q; A_k; A_v]^T`` GEMM. Backward::

        dX = sum_P (dP W_P + sum_a (s_a dP B_a) A_a)      (masked by M_a with dropout)
        dA_a = (s_a dP B_a)^T X_a    dB_a = s_a dP^T (X_a A_a^T)    db_a = s_a sum_N dP

    Saved: ``X`` and the ``[N, r]`` products ``X_a A_a^T`` (plus DoRA's ``Z`` and dropout masks).
    """

    @staticmethod
    def forward(ctx: Any, X: Tensor, layouts: tuple, *flat: Any) -> tuple[Tensor, ...]:
        return tuple(_fanout.forward(ctx, X, layouts, flat))

    @staticmethod
    def backward(ctx: Any, *dYs: Tensor) -> tuple[Any, ...]:
        return _fanout.backward(ctx, *dYs)


def apply_lora_qkv(
    attn: nn.Module, X: Tensor, *, q: str = "q_proj", k: str = "k_proj", v: str = "v_proj"
) -> tuple[Tensor, Tensor, Tensor]:
    """``(attn.q(X), attn.k(X), attn.v(X))`` through ``LoRA_QKV``; any leading shape.

    Runs the modules' own (PEFT) forwards when a projection is in a state ``can_fuse`` rejects.
    """
    modules = [getattr(attn, q), getattr(attn, k), getattr(attn, v)]
    outs = _fanout.apply(LoRA_QKV, modules, X)
    if outs is None:
        return modules[0](X), modules[1](X), modules[2](X)
    Q, K, V = outs
    return Q, K, V
