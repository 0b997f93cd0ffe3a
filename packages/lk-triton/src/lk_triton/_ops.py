"""Gated activations registered as ``torch.library`` custom ops, and the differentiable ops.

Custom ops with fake (meta) implementations are opaque to ``torch.compile``: it traces
``swiglu``/``geglu`` (and callers of the ops, such as lk-autograd's ``LoRA_MLP``) with
``fullgraph=True`` and no graph break, and calls the kernels. ``activation`` is ``"silu"``,
``"gelu"`` or ``"gelu_tanh"``. The ops:

- ``torch.ops.lk_triton.gated_activation(gate, up, activation) -> h``
- ``torch.ops.lk_triton.gated_activation_backward(dh, gate, up, activation) -> (dgate, dup)``
- ``torch.ops.lk_triton.gated_recompute_backward_(dh, gate, up, activation) -> (dgate, dup)``:
  the raw backward, which also recomputes ``h`` into ``dh``'s buffer (``dh`` is mutated: it
  holds ``h`` afterwards). ``gate`` and ``up`` are not written, so tensors saved for a second
  backward stay intact; reusing ``dh`` keeps one ``[N, I]`` buffer fewer alive (LoRA_MLP's
  backward peak).
"""

from typing import Literal

import torch
from torch import Tensor

from ._gated import gated_backward, gated_backward_into_dh, gated_forward
from ._validate import check_activation, check_same, gelu_kind


@torch.library.custom_op("lk_triton::gated_activation", mutates_args=())
def _gated_activation(gate: Tensor, up: Tensor, activation: str) -> Tensor:
    return gated_forward(gate, up, check_activation(activation))


@_gated_activation.register_fake
def _(gate: Tensor, up: Tensor, activation: str) -> Tensor:
    check_same(gate=gate, up=up)
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("lk_triton::gated_activation_backward", mutates_args=())
def _gated_activation_backward(
    dh: Tensor, gate: Tensor, up: Tensor, activation: str
) -> tuple[Tensor, Tensor]:
    _, dgate, dup = gated_backward(
        dh, gate, up, check_activation(activation), inplace=False, store_h=False
    )
    return dgate, dup


@_gated_activation_backward.register_fake
def _(dh: Tensor, gate: Tensor, up: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    check_same(dh=dh, gate=gate, up=up)
    fmt = torch.contiguous_format
    return torch.empty_like(gate, memory_format=fmt), torch.empty_like(up, memory_format=fmt)


@torch.library.custom_op("lk_triton::gated_recompute_backward_", mutates_args=("dh",))
def _gated_recompute_backward_(
    dh: Tensor, gate: Tensor, up: Tensor, activation: str
) -> tuple[Tensor, Tensor]:
    return gated_backward_into_dh(dh, gate, up, check_activation(activation))


@_gated_recompute_backward_.register_fake
def _(dh: Tensor, gate: Tensor, up: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    check_same(dh=dh, gate=gate, up=up)
    fmt = torch.contiguous_format
    return torch.empty_like(gate, memory_format=fmt), torch.empty_like(up, memory_format=fmt)


def _setup_context(ctx, inputs, output) -> None:
    gate, up, activation = inputs
    ctx.save_for_backward(gate, up)
    ctx.activation = activation


def _backward(ctx, dh: Tensor):
    gate, up = ctx.saved_tensors
    dgate, dup = _gated_activation_backward(dh.contiguous(), gate, up, ctx.activation)
    return dgate, dup, None


_gated_activation.register_autograd(_backward, setup_context=_setup_context)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """Differentiable ``silu(gate) * up`` (see ``lk_triton.swiglu_forward``)."""
    return _gated_activation(gate, up, "silu")


def geglu(gate: Tensor, up: Tensor, approximate: Literal["none", "tanh"] = "none") -> Tensor:
    """Differentiable ``gelu(gate, approximate) * up`` (see ``lk_triton.geglu_forward``)."""
    return _gated_activation(gate, up, gelu_kind(approximate))
