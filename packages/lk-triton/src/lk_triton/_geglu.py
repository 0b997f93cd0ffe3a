"""GeGLU: ``h = gelu(gate) * up``, exact or tanh-approximated.

Exact (``approximate="none"``, erf), with ``Phi(g) = (1 + erf(g / sqrt 2)) / 2``::

    gelu(g)  = g * Phi(g)
    gelu'(g) = Phi(g) + g * exp(-g^2 / 2) / sqrt(2 pi)

Tanh (``approximate="tanh"``, PyTorch's ``gelu_pytorch_tanh``, used by Gemma 1-3), with
``k = sqrt(2 / pi)`` and ``t = tanh(k (g + 0.044715 g^3))``::

    gelu(g)  = g (1 + t) / 2
    gelu'(g) = (1 + t) / 2 + g (1 - t^2) k (1 + 3 * 0.044715 g^2) / 2

Backward: ``dgate = dh * up * gelu'(g)``, ``dup = dh * gelu(g)``.
"""

from typing import Literal

from torch import Tensor

from ._gated import gated_backward, gated_forward
from ._validate import gelu_kind


def geglu_forward(
    gate: Tensor, up: Tensor, approximate: Literal["none", "tanh"] = "none"
) -> Tensor:
    """Return ``gelu(gate) * up``; ``gate`` and ``up`` share shape, dtype and device."""
    return gated_forward(gate, up, gelu_kind(approximate))


def geglu_backward(
    dh: Tensor,
    gate: Tensor,
    up: Tensor,
    approximate: Literal["none", "tanh"] = "none",
    *,
    inplace: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(h, dgate, dup)``: the recomputed output and both input gradients.

    With ``inplace=True`` (the default) the results overwrite the inputs to save memory:
    ``dh`` becomes ``h``, ``gate`` becomes ``dgate`` and ``up`` becomes ``dup``, and those
    three tensors are returned. With ``inplace=False`` the inputs are left untouched.
    """
    return gated_backward(dh, gate, up, gelu_kind(approximate), inplace=inplace)
