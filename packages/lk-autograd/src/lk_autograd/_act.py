"""The gated activation of ``LoRA_MLP``: lk_triton's raw kernels behind two custom ops.

Custom ops (with fake implementations) are opaque to ``torch.compile``, so the Function traces
with ``fullgraph=True`` whichever path lk_triton takes (CUDA Triton, the CPU torch path, or
the Triton interpreter). ``activation`` is ``"swiglu"``, ``"geglu"`` or ``"geglu_tanh"``.
"""

import torch
from torch import Tensor

from lk_triton import geglu_backward, geglu_forward, swiglu_backward, swiglu_forward

ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh")


def _approximate(activation: str) -> str:
    return "tanh" if activation == "geglu_tanh" else "none"


@torch.library.custom_op("lk_autograd::gated_forward", mutates_args=())
def act_forward(e: Tensor, g: Tensor, activation: str) -> Tensor:
    """``h = act(e) * g``."""
    if activation == "swiglu":
        return swiglu_forward(e, g)
    return geglu_forward(e, g, _approximate(activation))


@act_forward.register_fake
def _(e: Tensor, g: Tensor, activation: str) -> Tensor:
    return torch.empty_like(e, memory_format=torch.contiguous_format)


@torch.library.custom_op("lk_autograd::gated_backward", mutates_args=())
def act_backward(
    dh: Tensor, e: Tensor, g: Tensor, activation: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(h, de, dg)``: the recomputed ``h`` and both input gradients, as new tensors.

    ``inplace=False``: ``e`` and ``g`` are saved tensors that a second backward must see intact.
    """
    if activation == "swiglu":
        return swiglu_backward(dh, e, g, inplace=False)
    return geglu_backward(dh, e, g, _approximate(activation), inplace=False)


@act_backward.register_fake
def _(dh: Tensor, e: Tensor, g: Tensor, activation: str) -> tuple[Tensor, Tensor, Tensor]:
    fmt = torch.contiguous_format
    return tuple(torch.empty_like(e, memory_format=fmt) for _ in range(3))
