"""From modules to a Function's ``apply`` arguments: checks, autocast, dropout masks, packing.

Dropout masks are drawn here, before ``apply``, in the order PEFT's forwards draw them (each
projection in call order, its adapters in ``active_adapters`` order) and as PEFT draws them:
the adapter's ``nn.Dropout`` module called on a tensor of the adapter input's shape and dtype.
``dropout(ones) = mask / (1 - p)``, so ``X * M`` is bit-for-bit PEFT's ``dropout(X)`` given
the same RNG state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from ._linear import Adapter, Layout, Proj, pack
from ._params import LoraParams, can_fuse, lora_params


def fusable(modules: Sequence[nn.Module]) -> bool:
    """Whether every projection passes ``can_fuse`` (else the caller runs PEFT's forwards)."""
    return all(can_fuse(m) is None for m in modules)


def autocast_dtype(X: Tensor) -> torch.dtype | None:
    device = X.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


@contextlib.contextmanager
def no_autocast(device_type: str) -> Iterator[None]:
    """The Functions see tensors already cast (as autocast would) and run without autocast."""
    with torch.autocast(device_type, enabled=False):
        yield


def _mask(a: Adapter, dropout: nn.Module, shape: torch.Size, X: Tensor) -> Tensor | None:
    if not (isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0):
        return None
    return dropout(torch.ones(shape, dtype=a.A.dtype, device=X.device))


def apply_args(
    params: Sequence[LoraParams],
    X: Tensor,
    in_shapes: Sequence[torch.Size],
    cast: torch.dtype | None,
) -> tuple[tuple[Layout, ...], list]:
    """Pack projections into ``(layouts, flat)``, drawing dropout masks in PEFT's order.

    ``in_shapes[i]`` is the shape of projection ``i``'s input (``X``'s, or ``h``'s for down);
    masks are flattened to 2-D like the inputs. ``cast`` is the autocast dtype, if any.
    """

    def c(t: Tensor | None) -> Tensor | None:
        return t if t is None or cast is None else t.to(cast)

    layouts, projs = [], []
    for prm, shape in zip(params, in_shapes, strict=True):
        adapters = []
        for ad in prm.adapters:
            a = Adapter(c(ad.A), c(ad.B), c(ad.b), ad.m, None)
            M = _mask(a, ad.dropout, shape, X)
            adapters.append(a._replace(M=None if M is None else M.reshape(-1, shape[-1])))
        W = prm.W if prm.quant_state is not None else c(prm.W)
        projs.append(Proj(W, c(prm.bias), tuple(adapters)))
        layouts.append(Layout(tuple(ad.s for ad in prm.adapters), prm.quant_state))
    return tuple(layouts), pack(projs)


def read(modules: Sequence[nn.Module], X: Tensor) -> list[LoraParams] | None:
    """``lora_params`` of each module, or None when a call-time check sends us to PEFT's path."""
    params = [lora_params(m) for m in modules]
    dtype = autocast_dtype(X) or X.dtype
    for m, prm in zip(modules, params, strict=True):
        if prm.quant_state is None:
            if prm.W.dtype != dtype and autocast_dtype(X) is None:
                return None  # PEFT's own forward raises or converts; let it
        else:
            base = m.get_base_layer() if hasattr(m, "get_base_layer") else m
            if base.compute_dtype not in (None, dtype):
                return None  # bnb would compute in its compute_dtype, then cast back
    return params
