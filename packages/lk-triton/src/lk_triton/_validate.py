"""Input checks shared by every entry point."""

from typing import Literal

import torch
from torch import Tensor

Activation = Literal["silu", "gelu", "gelu_tanh"]
ACTIVATIONS: tuple[Activation, ...] = ("silu", "gelu", "gelu_tanh")

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_activation(kind: str) -> Activation:
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")
    return kind  # type: ignore[return-value]


def gelu_kind(approximate: str) -> Activation:
    """Map ``torch.nn.functional.gelu``'s ``approximate`` argument to an activation."""
    if approximate == "none":
        return "gelu"
    if approximate == "tanh":
        return "gelu_tanh"
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def check_same(**tensors: Tensor) -> None:
    """Raise ValueError naming the first tensor whose shape, dtype or device differs."""
    (first_name, first), *rest = tensors.items()
    for name, t in [(first_name, first), *rest]:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32, float64"
            )
    for name, t in rest:
        for what in ("shape", "dtype", "device"):
            a, b = getattr(first, what), getattr(t, what)
            if a != b:
                raise ValueError(
                    f"{first_name} and {name} must have the same {what}: "
                    f"{first_name} has {a}, {name} has {b}"
                )
