"""Forward and backward bodies shared by ``LoRA_QKV`` and ``LoRA_O``: projections of one input.

Two bodies: ``_plain``'s for the common case (one plain adapter per projection, in the
activations' dtype or narrowed to it, no autocast),
``_linear``'s for everything else; ``apply`` picks one by the ``layouts`` it passes.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from . import _linear as L
from . import _plain
from ._args import apply_args, autocast_dtype, no_autocast, output, read


def forward(ctx: Any, X: Tensor, layouts: Any, flat: tuple) -> list[Tensor]:
    if isinstance(layouts, _plain.PlainLayout):
        outs = _plain.forward(ctx, X, layouts, flat)
    else:
        outs, saved = L.forward(X, L.unpack(layouts, flat), layouts)
        ctx.layouts = layouts
        ctx.save_for_backward(X, *flat, *L.pack_saved(saved))
    return [output(Y) for Y in outs]


def backward(ctx: Any, *dYs: Tensor) -> tuple[Any, ...]:
    if hasattr(ctx, "plan"):  # set by _plain.forward
        with no_autocast(dYs[0].device.type):
            return _plain.backward(ctx, dYs)
    X, *rest = ctx.saved_tensors
    layouts = ctx.layouts
    n = L.flat_size(layouts)
    projs = L.unpack(layouts, rest[:n])
    needs = L.unpack(layouts, ctx.needs_input_grad[2:])
    with no_autocast(X.device.type):
        dX, grads, pending = L.backward_input(
            projs, layouts, L.unpack_saved(rest[n:]), dYs, needs, ctx.needs_input_grad[0], X.dtype
        )
        grads = L.grad_A(X, projs, pending, grads)
    return (dX, None, *L.pack(grads))


def apply(function: Any, modules: list[nn.Module], X: Tensor) -> list[Tensor] | None:
    """Run ``function`` (``LoRA_QKV`` or ``LoRA_O``) on ``X``, or None to take PEFT's path."""
    cast = autocast_dtype(X)
    params = read(modules, X, cast)
    if params is None:
        return None
    X = L.to(X, cast)
    plan = _plain.layout(params, X, cast)
    if plan is not None:
        layouts, flat = plan, _plain.flatten(params, X.dtype)
    else:
        layouts, flat = apply_args(params, X, [X.shape] * len(params), cast)
    with no_autocast(X.device.type):
        outs = function.apply(X.reshape(-1, X.shape[-1]), layouts, *flat)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return [Y.view(*X.shape[:-1], Y.shape[-1]) for Y in outs]
