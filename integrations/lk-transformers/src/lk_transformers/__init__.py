"""lora-kernels for Hugging Face Transformers and TRL training runs.

``enable_lora_kernels(model)`` patches a PEFT LoRA model before training;
``LoraKernelsCallback()`` does it at train begin inside ``Trainer`` or TRL's ``SFTTrainer``.
``liger=True`` composes with Liger-Kernel (its RoPE, RMSNorm and fused linear cross-entropy
stay; the fused LoRA MLP takes over Liger's MLP).
"""

from lk_patch import PatchReport

from ._callback import LoraKernelsCallback
from ._enable import disable_lora_kernels, enable_lora_kernels
from ._liger import apply_liger

__all__ = [
    "LoraKernelsCallback",
    "PatchReport",
    "apply_liger",
    "disable_lora_kernels",
    "enable_lora_kernels",
]
