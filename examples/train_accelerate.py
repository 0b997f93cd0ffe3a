"""Fine-tune the tiny LoRA Llama under Accelerate with lora-kernels: DDP, DeepSpeed ZeRO-2 /
ZeRO-3 or FSDP2, whichever the launch config picks. Nothing is downloaded.

    # 2 CPU processes, DDP over gloo (accelerate launch runs one process on the CPU):
    uv run torchrun --nproc_per_node 2 examples/train_accelerate.py --cpu --compare
    # GPUs: ddp.yaml, zero2.yaml, zero3.yaml (deepspeed installed) or fsdp2.yaml
    uv run accelerate launch --config_file \\
        integrations/lk-accelerate/src/lk_accelerate/configs/zero3.yaml examples/train_accelerate.py

``--compare`` (not under DeepSpeed) also trains the unpatched model from the same weights and
data and prints both loss curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))  # the sibling example, run as a script
from train_transformers import counting_dataset, tiny_lora_model

from lk_accelerate import prepare_model

BATCH_PER_PROCESS = 4
LEARNING_RATE = 0.5


def train(accelerator: Accelerator, kernels: bool, steps: int, seed: int) -> list[float]:
    """``steps`` SGD steps; returns the loss averaged over processes at each step."""
    model = tiny_lora_model(seed)
    if kernels:
        report = prepare_model(model)  # before prepare: ZeRO-3 needs its leaf flags first
        if accelerator.is_main_process:
            print(report)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], LEARNING_RATE)
    data = counting_dataset(
        size=steps * BATCH_PER_PROCESS * accelerator.num_processes, seed=seed + 1
    )
    loader = DataLoader(data, batch_size=BATCH_PER_PROCESS, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses = []
    for batch in loader:
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(accelerator.gather(loss.detach()[None]).mean().item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-kernels", action="store_true", help="train on PEFT's own path")
    parser.add_argument("--compare", action="store_true", help="also train unpatched (DDP)")
    parser.add_argument("--losses-out", help="write the loss curves here as JSON")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo under torchrun)")
    options = parser.parse_args()
    accelerator = Accelerator(cpu=options.cpu)
    if options.compare and accelerator.distributed_type == DistributedType.DEEPSPEED:
        parser.error("--compare prepares two models; DeepSpeed takes one per process")
    runs = [False, True] if options.compare else [not options.no_kernels]
    curves = {}
    for kernels in runs:
        curves["lora-kernels" if kernels else "peft"] = train(
            accelerator, kernels, options.steps, options.seed
        )
    if accelerator.is_main_process:
        for name, losses in curves.items():
            print(f"{name:>12}:", ", ".join(f"{loss:.5f}" for loss in losses))
        if options.losses_out:
            Path(options.losses_out).write_text(json.dumps(curves))
    accelerator.end_training()


if __name__ == "__main__":
    main()
