"""``prepare_model``: patch a model and make it safe to hand to accelerate / DeepSpeed / FSDP2."""

from __future__ import annotations

from typing import Any

from torch import nn

from lk_transformers import PatchReport, enable_lora_kernels

from ._zero3 import mark_zero3_leaves


def prepare_model(
    model: nn.Module,
    mlp: bool = True,
    qkv: bool = True,
    o: bool = True,
    liger: bool = False,
    liger_kwargs: dict[str, Any] | None = None,
) -> PatchReport:
    """``enable_lora_kernels`` plus the ZeRO-3 leaf flags; call before ``accelerator.prepare``.

    DDP, ZeRO-2 and FSDP2 need nothing more than the patch: DDP and ZeRO-2 keep full
    parameters on every rank, and FSDP2 sharded per decoder layer (``fully_shard`` on each
    layer, then the root) unshards a layer's parameters in that layer's pre-forward hook,
    before any fused Function inside it runs. ZeRO-3 needs ``mark_zero3_leaves``.
    """
    report = enable_lora_kernels(
        model, mlp=mlp, qkv=qkv, o=o, liger=liger, liger_kwargs=liger_kwargs
    )
    mark_zero3_leaves(model)
    return report
