"""Per-instance forward bindings that can be undone exactly.

A patched module gets the new forward as an instance attribute; the class is never
modified, so other models of the same class are unaffected and layers can differ (one
with LoRA on q/k/v, one without). When accelerate has wrapped the module for device
placement (``_hf_hook`` with ``_old_forward``), the hook keeps calling ``_old_forward``,
so that is what we replace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MethodType

from torch import Tensor, nn


def _forward_attribute(module: nn.Module) -> str:
    if hasattr(module, "_hf_hook") and "_old_forward" in module.__dict__:
        return "_old_forward"
    return "forward"


@dataclass
class Binding:
    """Replace ``module``'s forward by ``function`` bound to it; ``restore`` undoes it."""

    module: nn.Module
    function: Callable
    attribute: str = field(init=False)
    # The instance attribute the binding shadowed, if any (usually none: the class's forward).
    # A flag rather than a sentinel object, so that a deep copy of a patched model restores too.
    had_previous: bool = field(init=False, default=False)
    previous: object = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.attribute = _forward_attribute(self.module)

    def apply(self) -> None:
        self.had_previous = self.attribute in self.module.__dict__
        self.previous = self.module.__dict__.get(self.attribute)
        self.module.__dict__[self.attribute] = MethodType(self.function, self.module)

    def restore(self) -> None:
        if self.had_previous:
            self.module.__dict__[self.attribute] = self.previous
        else:
            self.module.__dict__.pop(self.attribute, None)


def gated_mlp_forward(activation: str, gate: str, up: str, down: str) -> Callable:
    """A forward for any module holding gate/up/down projections: one ``LoRA_MLP`` call."""
    from lk_autograd import apply_lora_mlp

    def forward(self: nn.Module, x: Tensor) -> Tensor:
        return apply_lora_mlp(self, x, activation, gate=gate, up=up, down=down)

    forward.__qualname__ = f"lk_patch.gated_mlp_forward[{activation}]"
    return forward


def fused_gate_up_forward(activation: str, gate_up: str, down: str) -> Callable:
    """A forward for a fused ``gate_up`` projection (Phi-3): ``down(act(g) * u)``.

    ``LoRA_MLP`` needs separate gate and up weights, so the two projections each take
    ``LoRA_O`` (one fused GEMM + LoRA each) and the activation takes the lk-triton kernel,
    which recomputes instead of storing its intermediate.
    """
    from lk_autograd import apply_lora_o
    from lk_triton import geglu, swiglu

    def forward(self: nn.Module, x: Tensor) -> Tensor:
        gate, up = apply_lora_o(self, x, o=gate_up).chunk(2, dim=-1)
        if activation == "swiglu":
            hidden = swiglu(gate, up)
        else:
            hidden = geglu(gate, up, "tanh" if activation == "geglu_tanh" else "none")
        return apply_lora_o(self, hidden, o=down)

    forward.__qualname__ = f"lk_patch.fused_gate_up_forward[{activation}]"
    return forward
