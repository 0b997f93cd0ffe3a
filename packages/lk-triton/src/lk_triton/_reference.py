"""Exact torch implementations of the gated activations, used for CPU tensors.

They compute in float32 (float64 for float64 tensors) and round once, as the kernels do.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import Activation


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def activation(g: Tensor, kind: Activation) -> Tensor:
    if kind == "silu":
        return F.silu(g)
    return F.gelu(g, approximate="tanh" if kind == "gelu_tanh" else "none")


def activation_derivative(g: Tensor, kind: Activation) -> Tensor:
    """``d act(g) / dg``, written out so it matches the kernels' formulas."""
    if kind == "silu":
        s = torch.sigmoid(g)
        return s * (1 + g * (1 - s))
    if kind == "gelu":
        cdf = 0.5 * (1 + torch.erf(g * 0.5**0.5))
        return cdf + g * torch.exp(-0.5 * g * g) * (2 * torch.pi) ** -0.5
    k = (2 / torch.pi) ** 0.5
    t = torch.tanh(k * (g + 0.044715 * g**3))
    return 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * k * (1 + 3 * 0.044715 * g * g)


def gated_forward(gate: Tensor, up: Tensor, kind: Activation) -> Tensor:
    ct = _compute_dtype(gate)
    return (activation(gate.to(ct), kind) * up.to(ct)).to(gate.dtype)


def gated_backward(
    dh: Tensor, gate: Tensor, up: Tensor, kind: Activation
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(h, dgate, dup)`` as new tensors of the input dtype."""
    ct = _compute_dtype(gate)
    dh_c, g, u = dh.to(ct), gate.to(ct), up.to(ct)
    a = activation(g, kind)
    h = a * u
    dgate = dh_c * u * activation_derivative(g, kind)
    dup = dh_c * a
    return h.to(gate.dtype), dgate.to(gate.dtype), dup.to(gate.dtype)
