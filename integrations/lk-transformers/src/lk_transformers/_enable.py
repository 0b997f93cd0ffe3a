"""``enable_lora_kernels``: the one call that patches a PEFT model before training."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lk_patch import PatchError, PatchReport, is_patched, patch_model, unpatch_model

from ._liger import _LigerBinding, apply_liger, bind_liger_mlps, has_liger_mlp, unbind_liger_mlps

logger = logging.getLogger("lk_transformers")

_STATE = "_lk_transformers_state"


@dataclass
class _State:
    flags: tuple[bool, bool, bool]
    report: PatchReport
    liger_bindings: list[_LigerBinding] = field(default_factory=list)


def _holder(model: nn.Module) -> nn.Module:
    """The transformers model that carries the state, the same for a PeftModel and its base."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def enable_lora_kernels(
    model: nn.Module,
    mlp: bool = True,
    qkv: bool = True,
    o: bool = True,
    liger: bool = False,
    liger_kwargs: dict[str, Any] | None = None,
) -> PatchReport:
    """Patch a PEFT LoRA model so its MLP, Q/K/V and O projections run lk-autograd's Functions.

    ``mlp``, ``qkv`` and ``o`` select the projection groups (as in ``lk_patch.patch_model``).
    ``liger=True`` first applies Liger-Kernel to the model (``liger_kwargs`` go to Liger's
    ``apply_liger_kernel_to_<model_type>``): Liger keeps RoPE, RMSNorm and the fused linear
    cross-entropy, and the fused LoRA MLP takes over Liger's MLP forward. Liger applied by the
    caller, before this call or after it (then call again, or let the callback do it), is
    taken over the same way.

    Idempotent: calling again with the same flags returns the same report (and takes over Liger
    MLPs bound since); different flags raise PatchError until ``disable_lora_kernels``. The
    report is logged at INFO on the ``lk_transformers`` logger.
    """
    flags = (mlp, qkv, o)
    state: _State | None = _holder(model).__dict__.get(_STATE)
    if state is not None and state.flags != flags:
        raise PatchError(
            f"lora kernels are already enabled with (mlp, qkv, o)={state.flags}; call "
            "lk_transformers.disable_lora_kernels(model) before enabling different ones."
        )
    if liger:
        apply_liger(model, **(liger_kwargs or {}))
    first = state is None
    if first:
        # Liger renames the MLP class in the modeling module, so lk_patch's registry cannot
        # see those MLPs; they are bound here instead (see _liger).
        report = patch_model(model, mlp=mlp and not has_liger_mlp(model), qkv=qkv, o=o)
        state = _State(flags, report)
        _holder(model).__dict__[_STATE] = state
    if mlp:
        state.liger_bindings += bind_liger_mlps(model, state.report if first else None)
    logger.info("%s", state.report)
    return state.report


def disable_lora_kernels(model: nn.Module) -> None:
    """Undo ``enable_lora_kernels`` (Liger itself stays applied); a no-op if not enabled."""
    state: _State | None = _holder(model).__dict__.pop(_STATE, None)
    if state is not None:
        unbind_liger_mlps(state.liger_bindings)
    if is_patched(model):
        unpatch_model(model)
