"""The common case of ``_linear``'s projections of one input, without its generality.

Each projection ``j`` has one adapter without dropout, DoRA or a LoRA bias, computed in ``X``'s
dtype (no autocast; PEFT's default fp32 adapters on 16-bit activations narrowed to it, as
``_args`` narrows them), so nothing is cast inside, masked or grouped by dtype. ``X``
``[N, k]``, ``W_j`` ``[o_j, k]`` (or bnb 4-bit), ``A_j`` ``[r_j, k]``, ``B_j`` ``[o_j, r_j]``::

    XA = X [A_1; A_2; ...]^T  (one GEMM, split by rank)
    Y_j = s_j XA_j B_j^T + X W_j^T + bias_j          (_linear.lora_first; without 4-bit
                                                     weights, _gemm.lora_matmul_group, or
                                                     _ws_gemm's group once switched on)

    dB_j = s_j dY_j^T XA_j      dXA_j = s_j dY_j B_j      dbias_j = sum_N dY_j
                    (_lora_grads: one pass over every dY_j, q, k and v in one launch; or
                     _linear.rank_r_grads per projection)
    dX = [dXA_1, ...] [A_1; ...] + sum_j dY_j W_j       (_linear.input_grad)
    [dA_1; ...] = [dXA_1, ...]^T X

which is what ``_linear`` computes for such projections, op for op; only the Python around
the ops is shorter (no packing into per-adapter tuples, no dtype groups; about 30% less
host time per LoRA_O call on a CPU, ``tools/bench_overhead.py``). ``LoRA_QKV`` and ``LoRA_O``
take this path when ``layout`` returns one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._args import dropout_active, lora_compute_dtype
from ._gemm import fusable_group, lora_matmul_group
from ._linear import base_weight, input_grad, lora_first, rank_r_grads, to
from ._lora_grads import fusable_grads, lora_grads
from ._params import LoraParams
from ._ws_gemm import fusable_ws_group, ws_lora_matmul_group


class PlainLayout(NamedTuple):
    """Per projection: the LoRA scaling, the bnb 4-bit quant state (or None), the rank."""

    s: tuple[float, ...]
    quant_states: tuple[object | None, ...]
    ranks: tuple[int, ...]


def layout(params: Sequence[LoraParams], X: Tensor, cast: torch.dtype | None) -> PlainLayout | None:
    """The lean path's layout when every projection qualifies (see the module docstring)."""
    if cast is not None:
        return None
    for p in params:
        if len(p.adapters) != 1:
            return None
        a = p.adapters[0]
        if a.m is not None or a.b is not None or dropout_active(a.dropout):
            return None
        if a.B.dtype != a.A.dtype or lora_compute_dtype(a.A.dtype, X.dtype, False) != X.dtype:
            return None
    return PlainLayout(
        tuple(p.adapters[0].s for p in params),
        tuple(p.quant_state for p in params),
        tuple(p.adapters[0].A.shape[0] for p in params),
    )


def flatten(params: Sequence[LoraParams], dtype: torch.dtype) -> list[Tensor | None]:
    """``apply``'s tensors: ``W, bias, A, B`` per projection, ``A`` and ``B`` in ``dtype`` (the
    activations'; autograd carries their gradients back through the cast)."""
    flat: list[Tensor | None] = []
    for p in params:
        a = p.adapters[0]
        flat += (p.W, p.bias, to(a.A, dtype), to(a.B, dtype))
    return flat


def forward(ctx: Any, X: Tensor, plan: PlainLayout, flat: Sequence[Any]) -> list[Tensor]:
    """``[Y_1, ...]``; saves ``X``, ``XA`` and the tensors for ``backward``."""
    Ws, biases, As, Bs = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
    XA = X @ (As[0] if len(As) == 1 else torch.cat(As)).t()
    XAs = XA.split(plan.ranks, dim=1) if len(As) > 1 else (XA,)
    unquantized = all(q is None for q in plan.quant_states)
    if unquantized and fusable_ws_group(X, Ws, XAs, Bs, biases):
        outs = ws_lora_matmul_group(X, Ws, XAs, Bs, plan.s)
    elif unquantized and fusable_group(X, Ws, XAs, Bs, biases):
        outs = lora_matmul_group(X, Ws, XAs, Bs, plan.s, biases)
    else:
        qs = plan.quant_states
        outs = [lora_first(X, base_weight(Ws[j], qs[j], X.dtype), biases[j], XAs[j], Bs[j], s)
                for j, s in enumerate(plan.s)]  # fmt: skip
    ctx.plan = plan
    ctx.save_for_backward(X, XA, *flat)
    return outs


def _rank_r_grads(
    dYs: Sequence[Tensor],
    Bs: Sequence[Tensor],
    XAs: Sequence[Tensor],
    ss: Sequence[float],
    need_B: Sequence[bool],
    want_dXA: bool,
) -> tuple[list[Tensor | None], Tensor | None]:
    """``([dB_j], [dXA_1, dXA_2, ...])``, the ``dB`` that are needed and, if wanted, the ``dXA``
    side by side: one ``_lora_grads`` launch for all projections where it applies (q, k and v
    together), else ``rank_r_grads`` per projection."""
    if want_dXA and all(need_B) and fusable_grads(dYs, Bs, XAs):
        return lora_grads(dYs, Bs, XAs, ss)
    dtypes = (dYs[0].dtype, dYs[0].dtype)  # computed in, and dXA kept in, X's dtype
    pairs = [rank_r_grads(*args, want_dXA, *dtypes)
             for args in zip(dYs, Bs, XAs, ss, need_B, strict=True)]  # fmt: skip
    if not want_dXA:
        return [dB for dB, _ in pairs], None
    dXAs = [dXA for _, dXA in pairs]
    return [dB for dB, _ in pairs], dXAs[0] if len(dXAs) == 1 else torch.cat(dXAs, dim=1)


def backward(ctx: Any, dYs: Sequence[Tensor]) -> tuple[Any, ...]:
    """``(dX, None, *grads)``, ``grads`` flat like ``forward``'s tensors."""
    X, XA, *flat = ctx.saved_tensors
    plan, need = ctx.plan, ctx.needs_input_grad
    XAs = XA.split(plan.ranks, dim=1) if len(plan.ranks) > 1 else (XA,)
    n = len(plan.s)
    need_A = [need[2 + 4 * j + 2] for j in range(n)]
    need_B = [need[2 + 4 * j + 3] for j in range(n)]
    want_dXA = need[0] or any(need_A)
    dBs, dXA = _rank_r_grads(dYs, flat[3::4], XAs, plan.s, need_B, want_dXA)
    grads: list[Tensor | None] = []
    for j, dY in enumerate(dYs):
        grads += (None, dY.sum(0) if need[2 + 4 * j + 1] else None, None, dBs[j])
    if not want_dXA:
        return (None, None, *grads)
    dX = None
    if need[0]:
        As = flat[2::4]
        Ws = flat[0::4]
        base = list(zip(dYs, Ws, plan.quant_states, strict=True))
        dX = input_grad(None, (dXA, As[0] if n == 1 else torch.cat(As)), base, X.dtype)
    if any(need_A):
        dA = dXA.t() @ X
        for j, dA_j in enumerate(dA.split(plan.ranks) if n > 1 else (dA,)):
            if need_A[j]:
                grads[4 * j + 2] = dA_j
    return (dX, None, *grads)
