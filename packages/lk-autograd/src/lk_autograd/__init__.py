"""Fused LoRA autograd Functions that compute exactly what PEFT computes.

``apply_lora_mlp``, ``apply_lora_qkv`` and ``apply_lora_o`` take the module holding the
projections; ``lora_params`` reads a PEFT LoRA layer and ``can_fuse`` says why a layer cannot
take the fused path (then the entry points run PEFT's own forwards and warn once per module
and reason with a ``FallbackWarning``). On NVIDIA sm_90+ GPUs, a projection's base GEMM adds its
16-bit LoRA term in its epilogue (one Triton kernel), and on sm_90 the MLP's down-projection
input gradient feeds the activation backward from its epilogue (a Gluon kernel);
``set_fused_gemm(False)`` keeps cuBLAS for both.
"""

from ._args import FallbackWarning
from ._gemm import set_fused_gemm
from ._mlp import LoRA_MLP, apply_lora_mlp
from ._o import LoRA_O, apply_lora_o
from ._params import LoraAdapter, LoraParams, can_fuse, lora_params
from ._qkv import LoRA_QKV, apply_lora_qkv

__all__ = [
    "FallbackWarning",
    "LoRA_MLP",
    "LoRA_O",
    "LoRA_QKV",
    "LoraAdapter",
    "LoraParams",
    "apply_lora_mlp",
    "apply_lora_o",
    "apply_lora_qkv",
    "can_fuse",
    "lora_params",
    "set_fused_gemm",
]
