"""The plugin's config keys, merged by Axolotl into its config schema (``get_input_args``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

AXOLOTL_KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")


class LoraKernelsArgs(BaseModel):
    """``lk_lora_mlp`` / ``lk_lora_qkv`` / ``lk_lora_o`` pick the fused groups; ``lk_liger``
    also applies Liger-Kernel (RoPE, RMSNorm, fused linear cross-entropy) to the model."""

    lk_lora_mlp: bool = Field(default=True, description="fuse the gated MLP (LoRA_MLP)")
    lk_lora_qkv: bool = Field(default=True, description="fuse the Q/K/V projections (LoRA_QKV)")
    lk_lora_o: bool = Field(default=True, description="fuse the attention output (LoRA_O)")
    lk_liger: bool = Field(
        default=False,
        description="apply Liger-Kernel to the built model; the fused MLP takes over Liger's",
    )

    @model_validator(mode="before")
    @classmethod
    def _not_with_axolotl_kernels(cls, data: dict) -> dict:
        """Axolotl's own LoRA kernels patch the same forwards; only one of them may."""
        ours = any(data.get(key, True) for key in ("lk_lora_mlp", "lk_lora_qkv", "lk_lora_o"))
        theirs = [key for key in AXOLOTL_KERNEL_KEYS if data.get(key)]
        if ours and theirs:
            raise ValueError(
                f"lk_axolotl.LoraKernelsPlugin and Axolotl's own LoRA kernels ({', '.join(theirs)})"
                " patch the same forwards: set those to false, or drop the plugin."
            )
        return data
