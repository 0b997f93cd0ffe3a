"""Route a PEFT model's attention and MLP through lk-autograd's fused LoRA Functions.

``patch_model(model)`` finds the registered decoder classes of the model's architecture,
rewrites the attention forwards (from their parsed source) to call ``apply_lora_qkv`` and
``apply_lora_o``, binds gated MLPs to ``apply_lora_mlp``, and returns a PatchReport.
"""

from ._errors import (
    NoLoraError,
    PatchError,
    RemoteCodeError,
    SourceMismatchError,
    UnsupportedArchitectureError,
)
from ._patch import is_patched, patch_model, unpatch_model
from ._registry import ArchSpec, get_spec, supported_architectures
from ._report import PatchReport, ReportEntry

__all__ = [
    "ArchSpec",
    "NoLoraError",
    "PatchError",
    "PatchReport",
    "RemoteCodeError",
    "ReportEntry",
    "SourceMismatchError",
    "UnsupportedArchitectureError",
    "get_spec",
    "is_patched",
    "patch_model",
    "supported_architectures",
    "unpatch_model",
]
