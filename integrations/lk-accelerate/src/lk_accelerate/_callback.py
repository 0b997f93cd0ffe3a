"""``DistributedLoraKernelsCallback``: the Trainer callback, ZeRO-3 ready."""

from __future__ import annotations

from typing import Any

from transformers import TrainerControl, TrainerState, TrainingArguments

from lk_transformers import LoraKernelsCallback

from ._zero3 import mark_zero3_leaves


class DistributedLoraKernelsCallback(LoraKernelsCallback):
    """``LoraKernelsCallback`` that also flags the ZeRO-3 leaf modules at ``on_init_end``.

    The Trainer initializes DeepSpeed inside ``train()``, before ``on_train_begin``; the leaf
    flags must be set before that, so they are set when the Trainer finishes ``__init__``.
    """

    def on_init_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        mark_zero3_leaves(model)
