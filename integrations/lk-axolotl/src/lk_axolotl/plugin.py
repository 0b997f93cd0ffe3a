"""``LoraKernelsPlugin``: the Axolotl plugin class (``plugins: [lk_axolotl.LoraKernelsPlugin]``)."""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from ._hooks import on_model_loaded, on_register


class LoraKernelsPlugin(BasePlugin):
    """Patches the LoRA model with lora-kernels' fused Functions once Axolotl has built it.

    Config keys (see ``lk_axolotl.args.LoraKernelsArgs``): ``lk_lora_mlp``, ``lk_lora_qkv``,
    ``lk_lora_o`` (default true) and ``lk_liger`` (default false). The patch happens in
    ``post_model_load``, after the adapters are attached and cast, and the PatchReport is
    logged on the ``lk_axolotl`` logger.
    """

    def get_input_args(self) -> str:
        return "lk_axolotl.args.LoraKernelsArgs"

    def register(self, cfg: dict) -> None:
        on_register(cfg)

    def post_model_load(self, cfg, model) -> None:
        self.report = on_model_loaded(cfg, model)
