"""A 2-process DDP run on the CPU (gloo) of examples/train_accelerate.py, launched with torchrun
as its docstring says (``accelerate launch`` starts a single process on the CPU). The patched
run's losses match the unpatched DDP run and a single-process run on the same global batches."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch

from examples.train_transformers import counting_dataset, tiny_lora_model

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def _single_process(seed: int) -> list[float]:
    """Full-batch SGD: DDP averages equal-size shards' gradients, so it computes the same."""
    model = tiny_lora_model(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    data = counting_dataset(size=STEPS * 8, seed=seed + 1)
    losses = []
    for step in range(STEPS):
        batch = torch.stack([row["input_ids"] for row in data[8 * step : 8 * step + 8]])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_ddp_two_cpu_processes_match_unpatched(tmp_path):
    seed = random.SystemRandom().randrange(2**16)
    out = tmp_path / "losses.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        str(ROOT / "examples" / "train_accelerate.py"),
        "--cpu", "--compare", "--steps", str(STEPS), "--seed", str(seed), "--losses-out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    curves = json.loads(out.read_text())
    reference = _single_process(seed)
    print(f"seed {seed}", curves, reference)
    for name in ("peft", "lora-kernels"):
        assert len(curves[name]) == STEPS
        for step, (loss, ref) in enumerate(zip(curves[name], reference, strict=True)):
            assert abs(loss - ref) / ref < 1e-5, f"{name}, step {step}: {loss} vs {ref}"
    for step, (loss, ref) in enumerate(zip(curves["lora-kernels"], curves["peft"], strict=True)):
        assert abs(loss - ref) / ref < 1e-5, f"step {step}: {loss} vs {ref}"
    assert curves["peft"][-1] != curves["peft"][0]
