"""patch_model / unpatch_model: atomicity, idempotence, exact restore, errors, the report."""

import copy

import pytest
import torch
import transformers
from conftest import verify_arch
from peft import LoraConfig, get_peft_model
from torch import nn

import lk_patch
from lk_patch import (
    NoLoraError,
    PatchError,
    RemoteCodeError,
    SourceMismatchError,
    UnsupportedArchitectureError,
    _bind,
    _registry,
)


def _llama(**lora):
    config = verify_arch.tiny_config("llama")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, init_lora_weights=False, **lora))
    return model.double()


ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _instance_forwards(model):
    return {name: dict(vars(m)).get("forward") for name, m in model.named_modules()}


def _logits(model):
    ids = torch.arange(12).view(2, 6)
    return model(input_ids=ids).logits


def test_patch_unpatch_restores_exactly_and_is_idempotent():
    model = _llama(target_modules=ALL)
    before = _instance_forwards(model)
    reference = _logits(model)
    report = lk_patch.patch_model(model)
    assert lk_patch.is_patched(model)
    patched_forwards = _instance_forwards(model)
    assert sum(f is not None for f in patched_forwards.values()) == 4  # 2 attention + 2 MLP
    assert lk_patch.patch_model(model) is report  # no-op
    assert _instance_forwards(model) == patched_forwards
    torch.testing.assert_close(_logits(model), reference, rtol=1e-12, atol=0)
    lk_patch.unpatch_model(model)
    assert _instance_forwards(model) == before
    assert torch.equal(_logits(model), reference)
    lk_patch.unpatch_model(model)  # unpatching twice is a no-op


def test_unpatch_a_deep_copy_of_a_patched_model():
    model = _llama(target_modules=ALL)
    reference = _logits(model)
    lk_patch.patch_model(model)
    copied = copy.deepcopy(model)
    lk_patch.unpatch_model(copied)
    assert not any(f is not None for f in _instance_forwards(copied).values())
    assert torch.equal(_logits(copied), reference)


def test_patch_through_the_inner_model_is_the_same_patch():
    model = _llama(target_modules=ALL)
    report = lk_patch.patch_model(model)
    assert lk_patch.patch_model(model.base_model.model) is report
    lk_patch.unpatch_model(model.base_model.model)
    assert not lk_patch.is_patched(model)


def test_different_flags_need_an_unpatch_first():
    model = _llama(target_modules=ALL)
    lk_patch.patch_model(model, mlp=False)
    with pytest.raises(PatchError, match="unpatch_model"):
        lk_patch.patch_model(model)


def test_flags_select_groups():
    model = _llama(target_modules=ALL)
    report = lk_patch.patch_model(model, mlp=False, o=False)
    assert {(e.module, e.group) for e in report.entries} == {("LlamaAttention", "q/k/v")}


def test_failure_while_applying_leaves_model_untouched(monkeypatch):
    model = _llama(target_modules=ALL)
    before = _instance_forwards(model)
    original_apply = _bind.Binding.apply
    applied = []

    def failing_apply(self):
        if len(applied) == 2:
            raise RuntimeError("boom")
        applied.append(self)
        original_apply(self)

    monkeypatch.setattr(_bind.Binding, "apply", failing_apply)
    with pytest.raises(RuntimeError, match="boom"):
        lk_patch.patch_model(model)
    assert _instance_forwards(model) == before
    assert not lk_patch.is_patched(model)


def test_source_mismatch_leaves_model_untouched(monkeypatch):
    model = _llama(target_modules=ALL)
    before = _instance_forwards(model)
    spec = _registry.REGISTRY["llama"]
    monkeypatch.setitem(
        _registry.REGISTRY,
        "llama",
        _registry.ArchSpec("llama", spec.attention, spec.mlp, o="out_proj"),
    )
    with pytest.raises(SourceMismatchError) as error:
        lk_patch.patch_model(model)
    message = str(error.value)
    assert "LlamaAttention.forward" in message
    assert transformers.__version__ in message
    assert "`self.out_proj(...)`" in message
    assert _instance_forwards(model) == before


def test_report_says_what_is_fused_and_why_not():
    model = _llama(target_modules=["q_proj", "v_proj", "up_proj"])
    model.base_model.model.model.layers[1].mlp.act_fn = nn.ReLU()
    report = lk_patch.patch_model(model)
    rows = {(r[0], r[1], r[3], r[4]) for r in report.rows()}
    assert ("LlamaAttention", "q/k/v", "fused: LoRA_QKV", "no LoRA on k_proj (base only)") in rows
    assert ("LlamaAttention", "o_proj", "PEFT path", "no LoRA on o_proj") in rows
    assert (
        "LlamaMLP",
        "mlp",
        "fused: LoRA_MLP (swiglu)",
        "no LoRA on gate_proj, down_proj (base only)",
    ) in rows
    assert any(r[1] == "mlp" and "ReLU has no fused kernel" in r[3] for r in rows)
    text = str(report)
    assert "llama" in text and "LoRA_QKV" in text and "PEFT path" in text
    assert "layers" in text.splitlines()[1]


def test_report_gives_can_fuse_reason():
    model = _llama(target_modules=ALL)
    model.base_model.model.model.layers[0].self_attn.k_proj.register_forward_hook(
        lambda *args: None
    )
    report = lk_patch.patch_model(model, mlp=False, o=False)
    reasons = [e.detail for e in report.skipped]
    assert len(reasons) == 1 and reasons[0].startswith("k_proj: forward hooks")


def test_report_renders_with_rich():
    from rich.console import Console

    report = lk_patch.patch_model(_llama(target_modules=ALL))
    console = Console(record=True, width=160)
    console.print(report)
    assert "LoRA_MLP (swiglu)" in console.export_text()


def test_attention_only_architectures_say_why():
    config = verify_arch.tiny_config("starcoder2")
    model = transformers.AutoModelForCausalLM.from_config(config)
    model = get_peft_model(model, LoraConfig(target_modules=["q_proj", "o_proj"]))
    report = lk_patch.patch_model(model)
    assert any(e.group == "mlp" and e.detail == _registry.NON_GATED_NOTE for e in report.skipped)


def test_model_without_lora():
    with pytest.raises(NoLoraError, match="get_peft_model"):
        lk_patch.patch_model(_llama())


def test_unregistered_architecture():
    config = verify_arch.tiny_config("gpt2")
    model = transformers.AutoModelForCausalLM.from_config(config)
    model = get_peft_model(model, LoraConfig(target_modules=["c_attn"], fan_in_fan_out=True))
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2' is not registered") as error:
        lk_patch.patch_model(model)
    assert "verify_arch.py gpt2" in str(error.value)


def test_trust_remote_code_classes():
    model = _llama(target_modules=ALL)
    remote = type("RemoteBlock", (nn.Module,), {"__module__": "transformers_modules.x.modeling"})
    model.base_model.model.model.extra = remote()
    with pytest.raises(RemoteCodeError, match="trust_remote_code"):
        lk_patch.patch_model(model)


def test_not_a_transformers_model():
    with pytest.raises(PatchError, match="not a transformers model"):
        lk_patch.patch_model(nn.Linear(2, 2))


def test_supported_architectures_cover_the_issue():
    required = {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "gemma3_text",
        "granite",
        "glm4",
        "smollm3",
        "cohere2",
        "olmo2",
        "llama4",
        "llama4_text",
        "mistral3",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "phi3",
        "starcoder2",
        "qwen2_vl",
    }
    assert required <= set(lk_patch.supported_architectures())
