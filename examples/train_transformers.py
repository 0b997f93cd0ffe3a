"""Fine-tune a tiny Llama with LoRA for a few steps on the CPU through lora-kernels, and save
the adapter. The model is built from a config (random weights, nothing is downloaded) and
learns a toy task: token sequences that count up with a fixed stride.

    uv run examples/train_transformers.py                 # fused LoRA kernels, adapter in out/
    uv run examples/train_transformers.py --no-kernels    # the same run on PEFT's own path
"""

from __future__ import annotations

import argparse
import logging

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from lk_transformers import LoraKernelsCallback

VOCAB = 128
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_lora_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> PeftModel:
    """A 2-layer Llama (hidden 64, GQA 4/2 heads) with rank-8 LoRA on every projection.

    ``init_lora_weights=False`` makes lora_B non-zero, so the adapters matter from step one.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    model = LlamaForCausalLM(config).to(dtype)
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=False
    )
    return get_peft_model(model, lora)


def counting_dataset(size: int = 64, length: int = 32, seed: int = 1) -> list[dict]:
    """Sequences ``start, start+k, start+2k, ...`` (mod the vocabulary), labels = inputs."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, VOCAB, (size, 1), generator=generator)
    strides = torch.randint(1, 4, (size, 1), generator=generator)
    tokens = (starts + strides * torch.arange(length)) % VOCAB
    return [{"input_ids": row, "labels": row} for row in tokens]


def train(
    output_dir: str,
    kernels: bool = True,
    steps: int = 8,
    seed: int = 0,
    liger: bool = False,
    model: PeftModel | None = None,
    callbacks: list | None = None,
    **training_args: object,
) -> tuple[Trainer, list[float]]:
    """Train for ``steps`` steps; returns the trainer and the loss logged at each step.

    ``callbacks`` replace the default (``LoraKernelsCallback`` when ``kernels``);
    ``training_args`` override the TrainingArguments below (for example ``optim="sgd"``).
    """
    model = model if model is not None else tiny_lora_model(seed)
    settings = {
        "output_dir": output_dir,
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "learning_rate": 2e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": not torch.cuda.is_available(),
        "seed": seed,
        "disable_tqdm": True,
    }
    args = TrainingArguments(**(settings | training_args))
    if callbacks is None:
        callbacks = [LoraKernelsCallback(liger=liger)] if kernels else []
    trainer = Trainer(
        model=model, args=args, train_dataset=counting_dataset(seed=seed + 1), callbacks=callbacks
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="out/tiny-lora")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-kernels", action="store_true", help="train on PEFT's own path")
    parser.add_argument("--liger", action="store_true", help="also apply Liger-Kernel (GPU)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    trainer, losses = train(
        options.output_dir, not options.no_kernels, options.steps, liger=options.liger
    )
    print("loss per step:", ", ".join(f"{loss:.4f}" for loss in losses))
    trainer.model.save_pretrained(options.output_dir)
    print(f"adapter saved to {options.output_dir}")


if __name__ == "__main__":
    main()
