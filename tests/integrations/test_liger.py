"""Composition with Liger-Kernel, applied in each order: through ``liger=True``, before the
model is built (class-level), and after our patch. Liger's RoPE and fused linear
cross-entropy (and RMSNorm on the GPU) stay, the fused LoRA MLP takes over Liger's MLP, and
the loss and LoRA gradients match the unpatched PEFT + Liger model.

Liger's kernels are Triton kernels: they run on CUDA, or on the CPU under
``TRITON_INTERPRET=1``, where this file is re-run in a subprocess. Triton's interpreter cannot
run Liger's RMSNorm and SwiGLU kernels (InterpreterError in Liger 0.8.5 with Triton 3.9), so
on the CPU RMSNorm stays transformers' and the unpatched reference computes the MLP with
transformers' LlamaMLP (the same function as Liger's SwiGLU MLP, which the patched model never
runs). On CUDA everything is Liger's.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples.train_transformers import tiny_lora_model
from lk_transformers import enable_lora_kernels
from tests.helpers import HAS_CUDA, fresh_seed, rel_err
from tests.integrations.distributed import count_fused_calls

liger = pytest.importorskip("liger_kernel.transformers")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if HAS_CUDA else "cpu"
ON_CPU_INTERPRETER = not HAS_CUDA and INTERPRET
LIGER_KWARGS = {"rms_norm": False} if ON_CPU_INTERPRETER else {}
REFERENCE_KWARGS = {**LIGER_KWARGS, "swiglu": False} if ON_CPU_INTERPRETER else LIGER_KWARGS
runs_liger = pytest.mark.skipif(
    not (HAS_CUDA or INTERPRET), reason="Liger's Triton kernels need CUDA or TRITON_INTERPRET=1"
)


@pytest.fixture(autouse=True)
def undo_liger_globals(monkeypatch):
    """Liger rebinds names in modeling_llama and LlamaForCausalLM.forward; put them back after."""
    from transformers.models.llama import modeling_llama

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    forward = modeling_llama.LlamaForCausalLM.forward
    monkeypatch.setattr(modeling_llama.LlamaForCausalLM, "forward", forward)


def _reference(model):
    """The unpatched PEFT + Liger model with the same weights."""
    reference = copy.deepcopy(model)
    liger._apply_liger_kernel_to_instance(model=reference.get_base_model(), **REFERENCE_KWARGS)
    return reference


def _compare(model, reference, report) -> None:
    from liger_kernel.transformers.model.llama import lce_forward
    from transformers.models.llama import modeling_llama

    assert sum(e.group == "mlp" for e in report.patched) == 2, str(report)
    assert modeling_llama.apply_rotary_pos_emb is liger.liger_rotary_pos_emb
    base = model.get_base_model()
    assert getattr(base.forward, "__func__", base.forward) is lce_forward
    if not ON_CPU_INTERPRETER:
        norm = base.model.layers[0].input_layernorm
        assert (
            isinstance(norm, liger.LigerRMSNorm)
            or norm.forward.__func__ is liger.LigerRMSNorm.forward
        )
    tokens = torch.randint(0, 128, (3, 19), device=DEVICE)
    with count_fused_calls() as calls:
        loss = model(input_ids=tokens, labels=tokens).loss
    assert calls["LoRA_MLP"] == 2 and calls["LoRA_QKV"] == 2
    expected = reference(input_ids=tokens, labels=tokens).loss
    loss.backward()
    expected.backward()
    assert abs(loss.item() - expected.item()) / expected.item() < 1e-5
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, p in reference.named_parameters():
        if p.requires_grad:
            assert rel_err(grads[name], p.grad) < 1e-5, name


@runs_liger
def test_liger_option():
    model = tiny_lora_model(fresh_seed()).to(DEVICE)
    reference = _reference(model)
    report = enable_lora_kernels(model, liger=True, liger_kwargs=LIGER_KWARGS)
    _compare(model, reference, report)


@runs_liger
def test_liger_applied_before_the_model_is_built():
    seed = fresh_seed()
    reference = _reference(tiny_lora_model(seed).to(DEVICE))
    liger.apply_liger_kernel_to_llama(**LIGER_KWARGS)
    model = tiny_lora_model(seed).to(DEVICE)
    model.load_state_dict(reference.state_dict())
    mlp = model.get_base_model().model.layers[0].mlp
    assert type(mlp).__name__ == "LigerSwiGLUMLP"
    _compare(model, reference, enable_lora_kernels(model))


@runs_liger
def test_liger_applied_after_our_patch_then_taken_over_again():
    model = tiny_lora_model(fresh_seed()).to(DEVICE)
    reference = _reference(model)
    first = enable_lora_kernels(model)
    liger._apply_liger_kernel_to_instance(model=model.get_base_model(), **LIGER_KWARGS)
    # Liger rebound the MLP forwards; calling again (the callback does at train begin) takes
    # them over, and the report says so
    report = enable_lora_kernels(model)
    assert report is first
    _compare(model, reference, report)


@pytest.mark.skipif(HAS_CUDA or INTERPRET, reason="runs the tests above directly")
def test_liger_suite_in_triton_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"TRITON_INTERPRET=1 run: {summary}")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert "3 passed" in summary
