"""From modules to a Function's ``apply`` arguments: checks, autocast, dropout masks, packing.

Dropout masks are drawn here, before ``apply``, in the order PEFT's forwards draw them (each
projection in call order, its adapters in ``active_adapters`` order) and as PEFT draws them:
the adapter's ``nn.Dropout`` module called on a tensor of the adapter input's shape and dtype.
``dropout(ones) = mask / (1 - p)``, so ``X * M`` is bit-for-bit PEFT's ``dropout(X)`` given
the same RNG state.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._linear import Layout, to
from ._params import LoraParams, _base_layer, can_fuse, fused_params

_NO_CONTEXT = contextlib.nullcontext()


def autocast_dtype(X: Tensor) -> torch.dtype | None:
    device = X.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """The Functions see tensors already cast (as autocast would) and run without autocast.

    Entering ``torch.autocast(enabled=False)`` costs a few microseconds per call, so it is only
    entered when autocast is on.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return _NO_CONTEXT


def dropout_active(dropout: nn.Module) -> bool:
    """Whether PEFT's forward applies (and draws RNG for) this adapter's dropout."""
    return isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0


def _mask(dropout: nn.Module, shape: torch.Size, dtype: torch.dtype, X: Tensor) -> Tensor | None:
    if not dropout_active(dropout):
        return None
    return dropout(torch.ones(shape, dtype=dtype, device=X.device)).reshape(-1, shape[-1])


def lora_compute_dtype(adapter: torch.dtype, X: torch.dtype, dora: bool) -> torch.dtype:
    """The dtype the LoRA branch computes in: the activations' for fp32 adapters on 16-bit
    activations, else the adapters' (PEFT's).

    PEFT widens the 16-bit input to the fp32 adapters, computes the branch in fp32 and adds it
    to the widened base output before rounding back: several extra passes over every [N, out]
    tensor. Here the adapters are narrowed instead (autograd carries their gradients back to
    fp32 through the cast); cuBLAS still accumulates in fp32 and rounds the sum of base and
    LoRA terms once, so only the branch's operands see 16-bit rounding (relative ~4e-3 on a
    term that is small next to the base output). DoRA keeps PEFT's dtype: its weight norm of
    ``W + s B A`` is a reduction that fp32 keeps accurate.
    """
    if adapter == torch.float32 and X in (torch.bfloat16, torch.float16) and not dora:
        return X
    return adapter


def apply_args(
    params: Sequence[LoraParams],
    X: Tensor,
    in_shapes: Sequence[torch.Size],
    cast: torch.dtype | None,
) -> tuple[tuple[Layout, ...], list[Any]]:
    """Flatten projections into ``(layouts, flat)`` as ``_linear.pack`` would, with masks drawn
    in PEFT's order.

    ``in_shapes[i]`` is the shape of projection ``i``'s input (``X``'s, or ``h``'s for down);
    masks are flattened to 2-D like the inputs. ``cast`` is the autocast dtype, if any.
    """
    layouts, flat = [], []
    for prm, shape in zip(params, in_shapes, strict=True):
        W = prm.W if prm.quant_state is not None else to(prm.W, cast)
        flat += (W, to(prm.bias, cast))
        for ad in prm.adapters:
            peft_dtype = cast or ad.A.dtype  # what PEFT computes the branch in
            M = _mask(ad.dropout, shape, peft_dtype, X)
            lora = lora_compute_dtype(peft_dtype, X.dtype, ad.m is not None)
            flat += (to(ad.A, lora), to(ad.B, lora), to(ad.b, lora), ad.m, to(M, lora))
        layouts.append(Layout(tuple(ad.s for ad in prm.adapters), prm.quant_state))
    return tuple(layouts), flat


def read(
    modules: Sequence[nn.Module], X: Tensor, cast: torch.dtype | None
) -> list[LoraParams] | None:
    """``lora_params`` of each module, or None when ``can_fuse`` or a call-time check sends us
    to PEFT's path. ``cast`` is the autocast dtype, if any."""
    params = fused_params(modules)
    if params is None:
        reasons = dict.fromkeys(r for r in map(can_fuse, modules) if r is not None)
        _warn_fallback(modules, "; ".join(reasons))
        return None
    dtype = cast or X.dtype
    for m, prm in zip(modules, params, strict=True):
        if prm.quant_state is None:
            if prm.W.dtype != dtype and cast is None:  # PEFT's own forward raises or converts
                _warn_fallback([m], f"base weight {prm.W.dtype}, input {dtype}, no autocast")
                return None
        else:
            base = _base_layer(m)
            if base.compute_dtype not in (None, dtype):  # bnb computes in it, then casts back
                _warn_fallback([m], f"bnb compute_dtype {base.compute_dtype}, input {dtype}")
                return None
    return params


class FallbackWarning(UserWarning):
    """A fused entry point ran PEFT's own forward (same results, without the fused speed)."""


def _warn_fallback(modules: Sequence[nn.Module], reason: str) -> None:
    """Warn that PEFT's path runs; Python shows each distinct message once per call site."""
    if torch.compiler.is_compiling():
        return
    names = ", ".join(
        f"{type(m).__name__}({getattr(m, 'in_features', '?')} -> {getattr(m, 'out_features', '?')})"
        for m in modules
    )
    warnings.warn(
        f"lk_autograd: PEFT's own forward runs for {names}: {reason}", FallbackWarning, stacklevel=4
    )


# torch < 2.12's dynamo loses the gradient of an autograd Function output that the forward
# produced with an in-place op (``Y = X @ W.t(); Y.addmm_(...)``; ours do, to save passes):
# the compiled backward returns zeros. Reproduced on 2.11 with a ten-line Function; outputs
# made out of place, and mutated intermediates that are only saved, are fine; 2.12 fixed it
# (the same family as pytorch/pytorch#184113, "in-place autograd matmul" under compile).
_INPLACE_OUTPUT_LOSES_GRAD = torch.__version__ < "2.12"


def output(Y: Tensor) -> Tensor:
    """A Function's output ``Y``; a copy while torch < 2.12 compiles (see above), which costs
    one pass over ``Y`` in the compiled graph and keeps ``fullgraph=True`` tracing."""
    if _INPLACE_OUTPUT_LOSES_GRAD and torch.compiler.is_compiling():
        return Y.clone()
    return Y
