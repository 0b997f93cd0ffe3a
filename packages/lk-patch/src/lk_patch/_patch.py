"""patch_model / unpatch_model: plan every binding first, then apply them all or none."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import transformers
from torch import nn

from ._activation import kernel_for
from ._bind import Binding, fused_gate_up_forward, gated_mlp_forward
from ._errors import NoLoraError, PatchError, RemoteCodeError
from ._registry import ArchSpec, get_spec
from ._report import PatchReport, ReportEntry
from ._source import AttentionRewrite, GatedMLP, gated_mlp_form, rewritten_forward

_STATE = "_lk_patch_state"


@dataclass
class _PatchState:
    flags: tuple[bool, bool, bool]
    report: PatchReport
    bindings: list[Binding]


def _lora_layer_type() -> type:
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel / LoraModel (or the model itself)."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    while isinstance(model, (PeftModel, BaseTuner)):
        model = model.base_model if isinstance(model, PeftModel) else model.model
    return model


def _resolve_spec(config: object) -> ArchSpec:
    spec = get_spec(config.model_type)
    if spec.text_config:
        spec = get_spec(config.text_config.model_type)
    return spec


def _check_inputs(model: nn.Module) -> None:
    remote = sorted(
        {
            type(m).__module__
            for m in model.modules()
            if type(m).__module__.startswith("transformers_modules")
        }
    )
    if remote:
        raise RemoteCodeError(
            f"the model uses trust_remote_code classes ({', '.join(remote)}); lk_patch only "
            "patches transformers' own, verified classes. Load the checkpoint with "
            "trust_remote_code=False (most architectures are native in transformers now)."
        )
    if not any(isinstance(m, _lora_layer_type()) for m in model.modules()):
        raise NoLoraError(
            "the model has no PEFT LoRA layers, so there is nothing to fuse. Wrap it first: "
            "peft.get_peft_model(model, peft.LoraConfig(target_modules=[...]))."
        )


def _group(module: nn.Module, names: tuple[str, ...], label: str) -> tuple[bool, str]:
    """Whether a projection group can take the fused path, and the detail for the report."""
    from lk_autograd import can_fuse

    lora_layer = _lora_layer_type()
    projections = [(name, getattr(module, name, None)) for name in names]
    missing = [name for name, proj in projections if proj is None]
    if missing:
        return False, f"no {', '.join(missing)} on this module"
    without_lora = [name for name, proj in projections if not isinstance(proj, lora_layer)]
    if len(without_lora) == len(names):
        return False, f"no LoRA on {label}"
    for name, proj in projections:
        reason = can_fuse(proj)
        if reason is not None:
            return False, f"{name}: {reason}"
    return True, f"no LoRA on {', '.join(without_lora)} (base only)" if without_lora else ""


@functools.cache
def _mlp_form(cls: type) -> GatedMLP:
    return gated_mlp_form(cls)


def _plan_attention(module, spec, qkv, o, report) -> Binding | None:
    from lk_autograd import apply_lora_o, apply_lora_qkv

    cls = type(module)
    requested = AttentionRewrite(
        qkv=spec.qkv if qkv else None,
        fused_qkv=spec.fused_qkv if qkv else None,
        o=spec.o if o else None,
    )
    # Rewrite the full request once per class, so a changed source fails loudly even on
    # layers that would not be patched.
    rewritten_forward(cls, requested, apply_lora_qkv, apply_lora_o)
    fuse_qkv = fuse_o = False
    if qkv:
        names = spec.qkv or (spec.fused_qkv,)
        fuse_qkv, detail = _group(module, names, "/".join(names))
        kernel = "LoRA_QKV" if spec.qkv else f"LoRA_O on fused {spec.fused_qkv}"
        report.entries.append(
            ReportEntry(cls.__name__, "q/k/v", kernel if fuse_qkv else None, detail)
        )
    if o:
        fuse_o, detail = _group(module, (spec.o,), spec.o)
        report.entries.append(
            ReportEntry(cls.__name__, spec.o, "LoRA_O" if fuse_o else None, detail)
        )
    rewrite = AttentionRewrite(
        qkv=spec.qkv if fuse_qkv else None,
        fused_qkv=spec.fused_qkv if fuse_qkv else None,
        o=spec.o if fuse_o else None,
    )
    if not rewrite:
        return None
    return Binding(module, rewritten_forward(cls, rewrite, apply_lora_qkv, apply_lora_o))


def _plan_mlp(module, report) -> Binding | None:
    cls = type(module)
    form = _mlp_form(cls)
    activation = getattr(module, form.activation, None)
    kernel, description = kernel_for(activation)
    if kernel is None:
        report.entries.append(
            ReportEntry(cls.__name__, "mlp", None, f"activation {description} has no fused kernel")
        )
        return None
    if form.gate_up:
        names = (form.gate_up, form.down)
        label = f"LoRA_O x2 + {kernel} kernel (fused {form.gate_up})"
        forward = fused_gate_up_forward(kernel, form.gate_up, form.down)
    else:
        names = (form.gate, form.up, form.down)
        label = f"LoRA_MLP ({kernel})"
        forward = gated_mlp_forward(kernel, form.gate, form.up, form.down)
    fuse, detail = _group(module, names, "/".join(names))
    report.entries.append(ReportEntry(cls.__name__, "mlp", label if fuse else None, detail))
    return Binding(module, forward) if fuse else None


def _plan(model: nn.Module, spec: ArchSpec, mlp: bool, qkv: bool, o: bool):
    attention_classes, mlp_classes = spec.class_keys()
    report = PatchReport(model.config.model_type, transformers.__version__)
    bindings = []
    attention_count = mlp_count = 0
    for module in model.modules():
        binding = None
        key = (type(module).__module__, type(module).__qualname__)
        if key in attention_classes:
            attention_count += 1
            if qkv or o:
                binding = _plan_attention(module, spec, qkv, o, report)
        elif key in mlp_classes:
            mlp_count += 1
            if mlp:
                binding = _plan_mlp(module, report)
        if binding is not None:
            bindings.append(binding)
    if attention_count == 0 and mlp_count == 0:
        expected = ", ".join(spec.attention + spec.mlp)
        raise PatchError(
            f"found no module of the registered classes ({expected}) in this "
            f"{model.config.model_type} model; its layers were replaced by other classes. "
            "Patch before replacing them, or register the replacement classes."
        )
    if mlp and spec.mlp_note:
        report.entries.extend(
            [ReportEntry("(decoder layer)", "mlp", None, spec.mlp_note)] * attention_count
        )
    elif mlp and spec.mlp and mlp_count == 0:
        names = ", ".join(spec.mlp)
        note = f"no {names} module found (replaced by another class, e.g. Liger's MLP)"
        report.entries.append(ReportEntry("(decoder layer)", "mlp", None, note))
    return report, bindings


def patch_model(
    model: nn.Module, mlp: bool = True, qkv: bool = True, o: bool = True
) -> PatchReport:
    """Route the model's attention and MLP projections through lk-autograd's Functions.

    ``model`` is a PeftModel, or a transformers model with LoRA layers injected (multimodal
    wrappers included). Projection groups that cannot take the fused path keep PEFT's
    forward; the returned report says which and why. Atomic (on any error nothing is
    changed), idempotent (patching again with the same flags returns the same report), and
    undone exactly by ``unpatch_model``.
    """
    target = _unwrap(model)
    flags = (mlp, qkv, o)
    state = target.__dict__.get(_STATE)
    if state is not None:
        if state.flags == flags:
            return state.report
        raise PatchError(
            f"the model is already patched with (mlp, qkv, o)={state.flags}; call "
            "lk_patch.unpatch_model(model) before patching with different flags."
        )
    config = getattr(target, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise PatchError(f"{type(target).__name__} is not a transformers model (no config)")
    _check_inputs(target)
    spec = _resolve_spec(config)
    report, bindings = _plan(target, spec, mlp, qkv, o)
    applied = []
    try:
        for binding in bindings:
            binding.apply()
            applied.append(binding)
    except BaseException:
        for binding in reversed(applied):
            binding.restore()
        raise
    target.__dict__[_STATE] = _PatchState(flags, report, bindings)
    return report


def unpatch_model(model: nn.Module) -> None:
    """Restore every forward patch_model replaced; a no-op on a model that is not patched."""
    target = _unwrap(model)
    state = target.__dict__.pop(_STATE, None)
    if state is not None:
        for binding in reversed(state.bindings):
            binding.restore()


def is_patched(model: nn.Module) -> bool:
    """Whether patch_model has patched this model (and unpatch_model has not undone it)."""
    return _STATE in _unwrap(model).__dict__
