"""FSDP2 (``fully_shard`` per decoder layer, then the root), world size 1: parameters are
DTensors between steps; each layer's pre-forward hook unshards them before the fused Functions
inside it run (no Function call sees a DTensor), and the losses and trained LoRA weights match
the unpatched FSDP2 run and an eager run. On the CPU it runs over gloo.

In float64: four SGD steps at lr 0.5 amplify float32 rounding (the fused and PEFT's op orders
differ) into final LoRA weights apart by 3e-7 to 6e-6 or more, by seed (seen: past 1e-5 on
one CI run); float64 compares the math at 1e-10."""

import pytest
import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from examples.train_transformers import tiny_lora_model
from lk_accelerate import prepare_model
from tests.helpers import HAS_CUDA, causal_lm_loss_in_logits_dtype, fresh_seed
from tests.integrations.distributed import (
    SGD_LR,
    assert_fused_every_call,
    assert_same_training,
    count_fused_calls,
    ensure_process_group,
    lora_state,
    token_batches,
)

DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPE = torch.float64
STEPS = 4


def _train(kernels: bool, seed: int, batches: list, fsdp: bool) -> dict:
    model = tiny_lora_model(seed).to(DEVICE, DTYPE)
    model.get_base_model().loss_function = causal_lm_loss_in_logits_dtype  # float64 throughout
    start = lora_state(model)
    report = prepare_model(model) if kernels else None
    layers = model.base_model.model.model.layers
    if fsdp:
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=SGD_LR)
    losses, sharded = [], []
    with count_fused_calls() as calls:
        for batch in batches:
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            sharded.append(isinstance(layers[0].mlp.gate_proj.base_layer.weight, DTensor))
    return {
        "losses": losses,
        "state": lora_state(model),
        "calls": dict(calls),
        "sharded": sharded,
        "report": report,
        "start": start,
    }


@pytest.fixture(scope="module")
def runs():
    ensure_process_group("nccl" if HAS_CUDA else "gloo")
    seed = fresh_seed()
    batches = token_batches(STEPS, 4, seed, DEVICE)
    return {
        "eager": _train(False, seed, batches, fsdp=False),
        "fsdp2": _train(False, seed, batches, fsdp=True),
        "fsdp2+kernels": _train(True, seed, batches, fsdp=True),
    }


def test_fsdp2_shards_and_fused_path_sees_unsharded_weights(runs):
    patched = runs["fsdp2+kernels"]
    assert all(patched["sharded"]), "fully_shard left the parameters as plain tensors"
    assert_fused_every_call(patched, STEPS)
    assert runs["fsdp2"]["calls"] == {}


@pytest.mark.parametrize("reference", ["fsdp2", "eager"])
def test_fsdp2_patched_matches(runs, reference):
    assert_same_training(runs["fsdp2+kernels"], runs[reference], tol=1e-10)
