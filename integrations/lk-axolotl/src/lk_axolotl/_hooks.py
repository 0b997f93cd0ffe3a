"""What the plugin does at each Axolotl hook, kept free of axolotl imports so it is testable
without Axolotl (which pins its own torch / transformers)."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from torch import nn

from lk_accelerate import mark_zero3_leaves
from lk_transformers import PatchReport, enable_lora_kernels

from .args import AXOLOTL_KERNEL_KEYS

logger = logging.getLogger("lk_axolotl")

_GROUP_KEYS = ("lk_lora_mlp", "lk_lora_qkv", "lk_lora_o")


def on_register(cfg: MutableMapping[str, Any]) -> None:
    """Before validation: turn Axolotl's auto-enabled LoRA kernels off unless set explicitly.

    Axolotl enables its own lora_{mlp,qkv,o}_kernel when they are unset; with both, two
    patches would compete for the same forwards. An explicit ``true`` is left for the
    validator to reject with a message.
    """
    if any(cfg.get(key, True) for key in _GROUP_KEYS):
        for key in AXOLOTL_KERNEL_KEYS:
            if cfg.get(key) is None:
                cfg[key] = False


def on_model_loaded(cfg: MutableMapping[str, Any], model: nn.Module) -> PatchReport | None:
    """After the LoRA model is built: patch it and log the report (LoRA / QLoRA runs only)."""
    if cfg.get("adapter") not in ("lora", "qlora"):
        logger.info(
            "lk_axolotl: adapter is %r, not lora/qlora; nothing to patch", cfg.get("adapter")
        )
        return None
    report = enable_lora_kernels(
        model,
        mlp=cfg.get("lk_lora_mlp", True),
        qkv=cfg.get("lk_lora_qkv", True),
        o=cfg.get("lk_lora_o", True),
        liger=cfg.get("lk_liger", False),
    )
    if cfg.get("deepspeed"):
        # DeepSpeed is initialized later, by the trainer; ZeRO-3 needs the leaf flags first
        # (lk_accelerate._zero3), and other stages ignore them.
        mark_zero3_leaves(model)
    logger.info("%s", report)
    return report
