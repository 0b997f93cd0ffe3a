"""Composition with Liger-Kernel: Liger keeps RoPE, RMSNorm and the fused linear cross-entropy,
and lk-autograd's fused LoRA MLP takes over the forward of Liger's gated-MLP modules.

Liger swaps the MLP in one of two ways. Applied before the model is built
(``apply_liger_kernel_to_llama()``), it replaces the class name in the modeling module, so
the decoder layers hold ``LigerSwiGLUMLP`` instances. Applied to a built model
(``model=...``), it binds ``LigerSwiGLUMLP.forward`` onto each existing ``LlamaMLP``. Both
replace the class name, so lk_patch's registry (which resolves class names in the modeling
module) no longer finds the MLPs; this module finds them by their Liger forward instead and
binds them to ``apply_lora_mlp``, which computes the same ``down(act(gate(x)) * up(x))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType
from typing import Any

from torch import Tensor, nn

from lk_patch import PatchReport, ReportEntry


def _liger_mlp_kernels() -> dict[Callable, str]:
    """Liger MLP forward function -> the lk-autograd activation computing the same function."""
    try:
        from liger_kernel.transformers import LigerGEGLUMLP, LigerSwiGLUMLP
    except ImportError:  # liger-kernel is optional; without it there is nothing to take over
        return {}
    # LigerGEGLUMLP always uses the tanh approximation (see its source).
    return {LigerSwiGLUMLP.forward: "swiglu", LigerGEGLUMLP.forward: "geglu_tanh"}


def _forward_function(module: nn.Module) -> Callable:
    """The function behind the module's forward: an instance binding first, then the class."""
    bound = module.__dict__.get("forward")
    if bound is not None:
        return getattr(bound, "__func__", bound)
    return type(module).forward


def apply_liger(model: nn.Module, **liger_kwargs: Any) -> None:
    """Apply Liger-Kernel's ``apply_liger_kernel_to_<model_type>`` to a built model.

    ``model`` may be a PeftModel: Liger is applied to the transformers model inside it (as
    ``Trainer(use_liger_kernel=True)`` does). ``liger_kwargs`` go to Liger's function (for
    example ``rms_norm=False``); arguments a model type does not take are dropped by Liger.
    """
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base, **liger_kwargs)


def has_liger_mlp(model: nn.Module) -> bool:
    """Whether any module of the model runs one of Liger's gated-MLP forwards."""
    kernels = _liger_mlp_kernels()
    return any(_forward_function(module) in kernels for module in model.modules())


@dataclass
class _LigerBinding:
    # None: the module had no instance forward (None, not a sentinel object, so that a
    # deepcopy of the model still recognises it)
    module: nn.Module
    previous: Callable | None


def _fused_forward(activation: str) -> Callable:
    from lk_autograd import apply_lora_mlp

    def forward(self: nn.Module, x: Tensor) -> Tensor:
        return apply_lora_mlp(self, x, activation)

    forward.__qualname__ = f"lk_transformers.liger_mlp_forward[{activation}]"
    return forward


def bind_liger_mlps(model: nn.Module, report: PatchReport | None) -> list[_LigerBinding]:
    """Route every Liger gated MLP through ``apply_lora_mlp``, adding one report entry each.

    ``report`` is None when taking back MLPs that Liger rebound after they were patched: the
    report already has their entries. ``apply_lora_mlp`` checks ``can_fuse`` at each call and
    runs the projections' own forwards for a layer it cannot reproduce, so a binding is never
    wrong; the report says whether the projections can take the fused path now.
    """
    from lk_autograd import can_fuse

    kernels = _liger_mlp_kernels()
    bindings = []
    entries = report.entries if report is not None else []
    for module in model.modules():
        activation = kernels.get(_forward_function(module))
        if activation is None:
            continue
        name = type(module).__name__
        projections = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(p is None for p in projections):
            entries.append(ReportEntry(name, "mlp", None, "Liger MLP without gate/up/down_proj"))
            continue
        reasons = [r for r in map(can_fuse, projections) if r is not None]
        kernel = None if reasons else f"LoRA_MLP ({activation}) over Liger's MLP"
        entries.append(ReportEntry(name, "mlp", kernel, "; ".join(reasons)))
        if reasons:
            continue
        bindings.append(_LigerBinding(module, module.__dict__.get("forward")))
        module.__dict__["forward"] = MethodType(_fused_forward(activation), module)
    return bindings


def unbind_liger_mlps(bindings: list[_LigerBinding]) -> None:
    """Give each Liger MLP back the forward it had before ``bind_liger_mlps``."""
    for binding in reversed(bindings):
        if binding.previous is None:
            binding.module.__dict__.pop("forward", None)
        else:
            binding.module.__dict__["forward"] = binding.previous
