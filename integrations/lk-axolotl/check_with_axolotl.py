"""End-to-end check of LoraKernelsPlugin inside real Axolotl, on a tiny local Llama.

Runs Axolotl's own config loading (``load_cfg``: PluginManager registration, the plugin's
``register`` and config keys merged into Axolotl's schema, validation, normalization), then
``load_tokenizer`` and ``ModelLoader(cfg, tokenizer).load()``, which builds the LoRA model and
calls the plugin's ``post_model_load``. Checks that the model came back patched with the
requested groups, that Axolotl's own LoRA kernels stayed off, and that the patched model's loss
and LoRA gradients equal the unpatched model's. Run it with ``test_with_axolotl.sh``, in a
virtual environment that has axolotl (it pins packages the workspace lock does not take).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def _tiny_checkpoint(directory: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    vocab = {f"t{i}": i for i in range(128)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
        unk_token="t0",
        pad_token="t1",
        eos_token="t2",
        bos_token="t3",
    )
    tokenizer.save_pretrained(directory)


def main() -> None:
    from axolotl.cli.config import load_cfg
    from axolotl.loaders import ModelLoader, load_tokenizer
    from peft.tuners.lora import LoraLayer

    from lk_patch import is_patched
    from lk_transformers import disable_lora_kernels

    work = Path(tempfile.mkdtemp())
    _tiny_checkpoint(work / "model")
    settings = {
        "base_model": str(work / "model"),
        "plugins": ["lk_axolotl.LoraKernelsPlugin"],
        "lk_lora_mlp": True,
        "lk_lora_qkv": True,
        "lk_lora_o": False,
        "adapter": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target_modules": [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        "datasets": [{"path": str(work / "data.jsonl"), "type": "completion"}],
        "sequence_len": 32,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "learning_rate": 1e-3,
        "optimizer": "adamw_torch",
        "output_dir": str(work / "out"),
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "save_safetensors": True,
    }
    (work / "data.jsonl").write_text('{"text": "t5 t6 t7"}\n')
    config_file = work / "config.yml"
    config_file.write_text(yaml.safe_dump(settings))

    cfg = load_cfg(str(config_file))
    assert cfg.lk_lora_mlp is True and cfg.lk_lora_o is False, "plugin keys not in the schema"
    assert not cfg.lora_mlp_kernel and not cfg.lora_qkv_kernel and not cfg.lora_o_kernel
    tokenizer = load_tokenizer(cfg)
    model, _ = ModelLoader(cfg, tokenizer).load()

    from axolotl.integrations.base import PluginManager

    plugin = PluginManager.get_instance().plugins["lk_axolotl.LoraKernelsPlugin"]
    report = plugin.report
    print(report)
    assert is_patched(model)
    assert {entry.group for entry in report.patched} == {"q/k/v", "mlp"}, report
    assert any(isinstance(m, LoraLayer) for m in model.modules())

    # Numerics: the same model without the patch (lk_patch restores the forwards exactly).
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.lora_B:  # non-zero B, so the adapters matter
                torch.nn.init.normal_(module.lora_B[name].weight, std=0.05)
    model.train()
    tokens = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(1))
    tokens = tokens.to(next(model.parameters()).device)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainable.items()}
    model.zero_grad()
    disable_lora_kernels(model)  # the same model on PEFT's path
    expected = model(input_ids=tokens, labels=tokens).loss
    expected.backward()
    worst = max(((grads[n] - p.grad).norm() / p.grad.norm()).item() for n, p in trainable.items())
    print(
        f"loss {loss.item():.7f} vs unpatched {expected.item():.7f};",
        f"worst LoRA grad rel err {worst:.2e}",
    )
    assert abs(loss.item() - expected.item()) <= 1e-5 * expected.item() and worst < 1e-5
    print("lk_axolotl: OK with axolotl", __import__("axolotl").__version__)


if __name__ == "__main__":
    sys.exit(main())
