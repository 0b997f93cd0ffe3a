"""Shared pieces of the distributed tests: a process group, batches, counting fused calls."""

from __future__ import annotations

import os
import socket
from collections import Counter
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from lk_autograd import LoRA_MLP, LoRA_O, LoRA_QKV
from tests.helpers import rel_err

SGD_LR = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_process_group(backend: str) -> None:
    """A world-size-1 process group for in-process ZeRO-3 / FSDP2 tests (kept for the session)."""
    if dist.is_initialized():
        return
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
    )
    dist.init_process_group(backend, rank=0, world_size=1)


def token_batches(steps: int, batch: int, seed: int, device: str, length: int = 24) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 128, (batch, length), generator=generator).to(device) for _ in range(steps)
    ]


@contextmanager
def count_fused_calls():
    """Count calls of the three fused Functions (proof that the fused path, not PEFT's, ran).

    Calls that received a sharded parameter (a DTensor, or a ZeRO-3 partition with no
    elements) are counted under ``"sharded"`` as well.
    """
    counts: Counter = Counter()
    originals = {cls: cls.apply for cls in (LoRA_MLP, LoRA_QKV, LoRA_O)}

    def counting(cls):
        def apply(*args):
            counts[cls.__name__] += 1
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if any(isinstance(t, DTensor) or t.numel() == 0 for t in tensors):
                counts["sharded"] += 1
            return originals[cls](*args)

        return apply

    for cls in originals:
        cls.apply = counting(cls)
    try:
        yield counts
    finally:
        for cls, original in originals.items():
            cls.apply = original


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters by name, detached full copies on the CPU."""
    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().double().cpu().clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def assert_same_training(patched: dict, reference: dict, tol: float = 1e-5) -> None:
    """Per-step losses and final LoRA weights of two runs agree (``tol``), and the adapters moved.

    Each run is a dict with ``losses``, ``state`` (final LoRA weights) and ``start`` (initial).
    """
    pairs = zip(patched["losses"], reference["losses"], strict=True)
    for step, (loss, expected) in enumerate(pairs):
        assert abs(loss - expected) / expected < tol, f"step {step}: {loss} vs {expected}"
    assert patched["state"].keys() == reference["state"].keys()
    worst = max(rel_err(patched["state"][k], reference["state"][k]) for k in reference["state"])
    assert worst < tol, worst
    # the adapters moved: the comparison covers real updates
    assert any(not torch.equal(v, patched["start"][k]) for k, v in patched["state"].items())


def assert_fused_every_call(run: dict, steps: int) -> None:
    """Every group was patched and every forward of the 2-layer model took the fused path."""
    assert {e.group for e in run["report"].patched} == {"q/k/v", "o_proj", "mlp"}
    # 2 decoder layers, one call per block per forward; no fallback to PEFT's path
    assert run["calls"] == {"LoRA_QKV": 2 * steps, "LoRA_O": 2 * steps, "LoRA_MLP": 2 * steps}
