"""Reading a PEFT LoRA layer: ``lora_params`` (what to compute) and ``can_fuse`` (whether we may).

``can_fuse`` lists every state of a layer whose PEFT forward the fused path does not reproduce;
the ``apply_*`` entry points check it at each call and fall back to the modules' own forwards.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.modules import module as _nn_module


@dataclass(frozen=True)
class LoraAdapter:
    """An active adapter: ``Y += s (dropout(X) A^T B^T + b)``, or its DoRA form when ``m`` is set.

    ``s`` is read from the layer at each ``lora_params`` call (rsLoRA and ``set_scale`` change it).
    """

    name: str
    A: Tensor
    B: Tensor
    b: Tensor | None
    s: float
    dropout: nn.Module
    m: Tensor | None


@dataclass(frozen=True)
class LoraParams:
    """A projection's base layer (``W``, ``bias``, bitsandbytes 4-bit ``quant_state``) and adapters.

    For a 4-bit base ``W`` is the packed ``Params4bit`` data and ``quant_state`` dequantizes it.
    """

    W: Tensor
    bias: Tensor | None
    quant_state: object | None
    adapters: tuple[LoraAdapter, ...]

    @property
    def in_features(self) -> int:
        return self.quant_state.shape[1] if self.quant_state is not None else self.W.shape[1]


def _lora_layer_type() -> type | None:
    """PEFT's ``LoraLayer``, or None while peft is not imported (then no layer is one: peft is
    optional, and looking it up in ``sys.modules`` is cheaper than an import statement)."""
    layer = sys.modules.get("peft.tuners.lora.layer")
    return None if layer is None else layer.LoraLayer


def _is_lora_layer(proj: nn.Module) -> bool:
    lora_layer = _lora_layer_type()
    return lora_layer is not None and isinstance(proj, lora_layer)


def _bnb_kind(cls: type) -> str | None:
    """``"Linear8bitLt"`` or ``"Linear4bit"`` for bitsandbytes layer classes, else None."""
    if not cls.__module__.startswith("bitsandbytes"):
        return None
    names = {c.__name__ for c in cls.__mro__}
    return next((n for n in ("Linear8bitLt", "Linear4bit") if n in names), None)


# Layers are read at every call, so the reads below go to nn.Module's dicts directly: each
# ``nn.Module.__getattr__`` (a submodule or parameter by attribute) costs about a microsecond.


def _submodules(module: nn.Module, name: str) -> dict[str, nn.Module]:
    """The entries of ``module.<name>``, a ModuleDict (``lora_A``, ``lora_B``, ...)."""
    return module._modules[name]._modules


def _base_layer(proj: nn.Module) -> nn.Module:
    """PEFT's ``get_base_layer()`` (the chain of ``base_layer`` submodules) without its
    ``hasattr`` probes, the last of which raises and catches an AttributeError."""
    if not _is_lora_layer(proj):
        return proj
    while (inner := proj._modules.get("base_layer")) is not None:
        proj = inner
    return proj


def _active_adapters(proj: nn.Module) -> list[str]:
    """The adapters PEFT's forward applies; none when disabled or merged (base path only)."""
    if not _is_lora_layer(proj) or proj.disable_adapters or proj.merged:
        return []
    lora_A = _submodules(proj, "lora_A")
    return [name for name in proj.active_adapters if name in lora_A]


def lora_params(proj: nn.Module) -> LoraParams:
    """Read a PEFT LoRA linear (``lora.Linear`` or bnb ``Linear4bit``) or a plain ``nn.Linear``."""
    active = _active_adapters(proj)
    return _read(_base_layer(proj), [_adapter(proj, name) for name in active])


def _read(base: nn.Module, adapters: Sequence[LoraAdapter]) -> LoraParams:
    """The base layer's weight (a plain tensor for a 4-bit one), bias and quant state."""
    W = base._parameters["weight"]
    quant_state = getattr(W, "quant_state", None) if _bnb_kind(type(base)) == "Linear4bit" else None
    if quant_state is not None:  # a plain tensor: every op on a Params4bit runs its
        W = W.detach()  # __torch_function__ (Python), dozens per call in the Functions
    return LoraParams(W, base._parameters.get("bias"), quant_state, tuple(adapters))


def _adapter(proj: nn.Module, name: str) -> LoraAdapter:
    """Adapter ``name`` of a LoRA layer: its tensors, its scaling now and its dropout module."""
    B = _submodules(proj, "lora_B")[name]
    magnitude = None
    if name in proj.lora_variant:
        magnitude = _submodules(proj, "lora_magnitude_vector")[name]._parameters["weight"]
    return LoraAdapter(
        name=name,
        A=_submodules(proj, "lora_A")[name]._parameters["weight"],
        B=B._parameters["weight"],
        b=B._parameters.get("bias"),
        s=float(proj.scaling[name]),
        dropout=_submodules(proj, "lora_dropout")[name],
        m=magnitude,
    )


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_pre_hooks
        or module._forward_hooks
        or getattr(module, "_forward_hooks_with_kwargs", None)
    )


def _global_hooks() -> bool:
    return bool(_nn_module._global_forward_pre_hooks or _nn_module._global_forward_hooks)


def _base_reason(base: nn.Module) -> str | None:
    kind = _bnb_kind(type(base))
    if kind == "Linear8bitLt":
        return "8-bit bitsandbytes base layer (Linear8bitLt) is not supported"
    if kind == "Linear4bit":
        W = base._parameters["weight"]
        if W.__class__.__name__ != "Params4bit" or W.quant_state is None:
            return "bitsandbytes Linear4bit without a 4-bit quant_state"
        if getattr(W.quant_state, "packing_format_for_cpu", False):
            return "bitsandbytes 4-bit weight repacked for CPU inference"
        return None
    if type(base).__name__ == "Conv1D":
        return "transformers Conv1D (fan_in_fan_out) base layer is not supported"
    if type(base) is not nn.Linear:
        return f"unknown base layer type {type(base).__module__}.{type(base).__qualname__}"
    return None


def _adapter_reason(proj: nn.Module, name: str) -> str | None:
    variant = proj.lora_variant.get(name)
    if variant is not None and type(variant).__name__ != "DoraLinearVariant":
        return f"adapter {name!r} uses LoRA variant {type(variant).__name__} (only DoRA is fused)"
    A, B = _submodules(proj, "lora_A")[name], _submodules(proj, "lora_B")[name]
    dropout = _submodules(proj, "lora_dropout")[name]
    if type(A) is not nn.Linear or type(B) is not nn.Linear or A._parameters["bias"] is not None:
        return f"adapter {name!r} has lora_A/lora_B that are not plain nn.Linear"
    if type(dropout) not in (nn.Dropout, nn.Identity):
        return f"adapter {name!r} has dropout of unknown type {type(dropout).__name__}"
    if _hooked(A) or _hooked(B) or _hooked(dropout):
        return f"adapter {name!r} has forward hooks on lora_A, lora_B or lora_dropout"
    tensors = [A._parameters["weight"], B._parameters["weight"], B._parameters["bias"]]
    if variant is not None:
        magnitude = _submodules(proj, "lora_magnitude_vector")[name]
        if _hooked(magnitude):
            return f"adapter {name!r} has forward hooks on its DoRA magnitude"
        if proj.ephemeral_gpu_offload:
            return f"adapter {name!r} uses DoRA with ephemeral_gpu_offload"
        if isinstance(dropout, nn.Dropout) and dropout.training != proj.training:
            return f"adapter {name!r}: DoRA dropout and layer disagree on training mode"
        tensors.append(magnitude._parameters["weight"])
    dtype, device = tensors[0].dtype, tensors[0].device
    if any(t is not None and (t.dtype != dtype or t.device != device) for t in tensors[1:]):
        return f"adapter {name!r} has lora_A/lora_B/magnitude of mixed dtypes or devices"
    return None


def can_fuse(proj: nn.Module) -> str | None:
    """Why the fused path cannot reproduce PEFT's forward of ``proj`` right now, else None.

    Checked at each ``apply_*`` call (a rejected projection runs PEFT's own forward) and by the
    patcher at patch time. Forward hooks count: PEFT injects per-sample ``adapter_names`` (and
    aLoRA offsets) by registering forward pre-hooks on the LoRA layers for one forward call.
    """
    if _global_hooks():
        return "global nn.Module forward hooks are registered"
    result = _inspect(proj)
    return result if isinstance(result, str) else None


def fused_params(modules: Sequence[nn.Module]) -> list[LoraParams] | None:
    """``lora_params`` of every module when all pass ``can_fuse``, else None; one pass each."""
    if _global_hooks():
        return None
    params = []
    for proj in modules:
        result = _inspect(proj)
        if isinstance(result, str):
            return None
        params.append(result)
    return params


def _known_lora_type(cls: type) -> bool:
    return cls.__module__.split(".")[-1] in ("layer", "bnb") and cls.__name__ in (
        "Linear",
        "Linear4bit",
    )


def _inspect(proj: nn.Module) -> LoraParams | str:
    """``lora_params(proj)``, or why ``can_fuse`` rejects it (global hooks aside)."""
    if not _is_lora_layer(proj):
        if type(proj) is nn.Linear:
            return "forward hooks on the layer" if _hooked(proj) else _read(proj, [])
        return _base_reason(proj) or f"unknown layer type {type(proj).__qualname__}"
    if not _known_lora_type(type(proj)):
        return f"unknown PEFT LoRA layer type {type(proj).__module__}.{type(proj).__qualname__}"
    base = _base_layer(proj)
    reason = _base_reason(base)
    if reason is not None:
        return reason
    if getattr(proj, "fan_in_fan_out", False):
        return "fan_in_fan_out=True (Conv1D-style weights) is not supported"
    if _hooked(proj) or _hooked(base):
        return "forward hooks on the layer (e.g. PEFT's per-sample adapter_names injection)"
    if base._parameters["weight"].requires_grad:
        return "the base weight requires grad (it is not frozen)"
    if proj.disable_adapters and proj.merged:
        return "adapters are disabled while merged (PEFT unmerges in forward)"
    if not getattr(proj, "cast_input_dtype_enabled", True):
        return "input dtype casting is disabled (peft.helpers.disable_input_dtype_casting)"
    active = _active_adapters(proj)
    if len(active) > 1 and any(name in proj.lora_variant for name in active):
        return "DoRA combined with other active adapters on one layer is not fused"
    for name in active:
        reason = _adapter_reason(proj, name)
        if reason is not None:
            return reason
    adapters = [_adapter(proj, name) for name in active]
    if len({ad.A.dtype for ad in adapters}) > 1:
        return "active adapters of different dtypes"
    return _read(base, adapters)
