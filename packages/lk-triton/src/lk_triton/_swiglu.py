"""SwiGLU: ``h = silu(gate) * up`` with ``silu(g) = g * sigmoid(g)``.

Backward, with ``s = sigmoid(g)``::

    dgate = dh * up * s * (1 + g * (1 - s))
    dup   = dh * silu(g)
"""

from torch import Tensor

from ._gated import gated_backward, gated_forward


def swiglu_forward(gate: Tensor, up: Tensor) -> Tensor:
    """Return ``silu(gate) * up``; ``gate`` and ``up`` share shape, dtype and device."""
    return gated_forward(gate, up, "silu")


def swiglu_backward(
    dh: Tensor, gate: Tensor, up: Tensor, *, inplace: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(h, dgate, dup)``: the recomputed output and both input gradients.

    With ``inplace=True`` (the default) the results overwrite the inputs to save memory:
    ``dh`` becomes ``h``, ``gate`` becomes ``dgate`` and ``up`` becomes ``dup``, and those
    three tensors are returned. With ``inplace=False`` the inputs are left untouched.
    """
    return gated_backward(dh, gate, up, "silu", inplace=inplace)
