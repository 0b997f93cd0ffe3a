"""Axolotl plugin for lora-kernels. In an Axolotl YAML::

    plugins:
      - lk_axolotl.LoraKernelsPlugin
    lk_lora_mlp: true
    lk_lora_qkv: true
    lk_lora_o: true
    lk_liger: false

``LoraKernelsPlugin`` is imported on first access, so the package imports without Axolotl.
"""

from typing import Any

__all__ = ["LoraKernelsPlugin"]


def __getattr__(name: str) -> Any:
    if name == "LoraKernelsPlugin":
        from .plugin import LoraKernelsPlugin

        return LoraKernelsPlugin
    raise AttributeError(f"module 'lk_axolotl' has no attribute {name!r}")
