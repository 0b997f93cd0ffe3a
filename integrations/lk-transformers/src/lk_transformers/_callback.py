"""``LoraKernelsCallback``: patch the model when a Trainer (or TRL's SFTTrainer) starts training."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ._enable import enable_lora_kernels


class LoraKernelsCallback(TrainerCallback):
    """Calls ``enable_lora_kernels`` on the trainer's model at ``on_train_begin``.

    Train begin comes after the trainer has applied Liger (``use_liger_kernel=True``) and
    wrapped the model for DDP, so the fused MLP takes over Liger's MLP and the DDP wrapper is
    untouched (the patch is on the inner modules). Under DeepSpeed ZeRO-3 patch earlier, before
    the trainer is built: see lk-accelerate.
    """

    def __init__(
        self,
        mlp: bool = True,
        qkv: bool = True,
        o: bool = True,
        liger: bool = False,
        liger_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.options = dict(mlp=mlp, qkv=qkv, o=o, liger=liger, liger_kwargs=liger_kwargs)
        self.report = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        self.report = enable_lora_kernels(model, **self.options)
