"""``lora_params`` and ``can_fuse``, and the entry points' fallback to PEFT's own forwards."""

import contextlib
import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from lk_autograd import FallbackWarning, apply_lora_o, can_fuse, lora_params

from .models import compare, make_model


def test_lora_params_reads_adapters_and_scaling():
    model = make_model(adapters=2, use_rslora=True, bias=True, lora_bias=True, lora_dropout=0.1)
    p = lora_params(model.q_proj)
    assert p.W is model.q_proj.base_layer.weight and p.bias is model.q_proj.base_layer.bias
    assert p.quant_state is None and [a.name for a in p.adapters] == ["default", "extra1"]
    assert p.adapters[0].s == pytest.approx(7 / 4**0.5) and p.adapters[0].b is not None
    model.q_proj.set_scale("default", 0.5)
    assert lora_params(model.q_proj).adapters[0].s == pytest.approx(0.5 * 7 / 4**0.5)
    assert lora_params(nn.Linear(3, 2)).adapters == ()
    assert lora_params(make_model(use_dora=True).o_proj).adapters[0].m is not None


@pytest.mark.parametrize("state", ["disabled", "merged", "disabled_and_merged"])
def test_disabled_and_merged_take_base_path(state):
    model = make_model(bias=True)
    for name in ("gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj"):
        layer = getattr(model, name)
        if "merged" in state:
            layer.merge()
        if "disabled" in state:
            layer.enable_adapters(False)
    assert lora_params(model.o_proj).adapters == ()
    assert (can_fuse(model.o_proj) is None) == (state != "disabled_and_merged")
    ref = copy.deepcopy(model)
    X = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    fallback = state == "disabled_and_merged"  # PEFT unmerges in its forward: its path runs
    for block in ("mlp", "qkv", "o"):
        with pytest.warns(FallbackWarning) if fallback else contextlib.nullcontext():
            errs = compare(block, model, X, ref_model=ref)
        assert max(errs.values()) < 1e-10, errs


def _reason(module):
    reason = can_fuse(module)
    assert reason is not None
    return reason


def test_can_fuse_reasons():
    model = make_model()
    assert can_fuse(model.o_proj) is None and can_fuse(nn.Linear(2, 2)) is None
    assert "unknown" in _reason(nn.Conv2d(2, 2, 1))
    handle = model.o_proj.register_forward_pre_hook(lambda m, a: None)
    assert "hooks" in _reason(model.o_proj)
    handle.remove()
    model.o_proj.base_layer.weight.requires_grad_(True)
    assert "frozen" in _reason(model.o_proj)
    assert "DoRA" in _reason(make_model(use_dora=True, adapters=2).o_proj)
    mixed = make_model(adapters=2)
    mixed.o_proj.lora_A.extra1.to(torch.float32)
    mixed.o_proj.lora_B.extra1.to(torch.float32)
    assert "dtype" in _reason(mixed.o_proj)


def test_can_fuse_conv1d_fan_in_fan_out():
    from transformers.pytorch_utils import Conv1D

    class GPT2ish(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = Conv1D(12, 4)

    model = get_peft_model(
        GPT2ish(), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    reason = _reason(model.base_model.model.c_attn)
    assert "Conv1D" in reason or "fan_in_fan_out" in reason
    assert "Conv1D" in _reason(Conv1D(12, 4))


def test_can_fuse_8bit_base():
    bnb = pytest.importorskip("bitsandbytes")
    assert "8-bit" in _reason(bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False))


def test_can_fuse_other_lora_variant():
    model = make_model(alora_invocation_tokens=[1, 2], target_modules=["o_proj"])
    assert "variant" in _reason(model.o_proj)


def test_per_sample_adapter_names_fall_back_to_peft():
    peft_model = make_model(adapters=2, peft_model=True).eval()
    block = peft_model.base_model.model
    X = torch.randn(2, 3, 16, dtype=torch.float64)
    names = ["default", "__base__"]
    with peft_model.base_model._enable_peft_forward_hooks(adapter_names=names):
        assert "hooks" in _reason(block.o_proj)
        with pytest.warns(FallbackWarning, match=r"PEFT's own forward runs for Linear.*hooks"):
            ours = apply_lora_o(block, X)
        ref = block.o_proj(X)
    assert torch.equal(ours, ref)
    plain = apply_lora_o(block, X)
    assert not torch.allclose(plain[1], ours[1])  # the mixed batch did differ: row 1 is base only


def test_call_time_dtype_mismatch_warns_and_runs_peft():
    """A float32 input on a float64 model without autocast: PEFT's forward runs (and raises, as
    it does unpatched), after a FallbackWarning naming the dtypes."""
    model = make_model(torch.float64)
    warns = pytest.warns(FallbackWarning, match="float64, input torch.float32")
    with warns, pytest.raises(RuntimeError):
        apply_lora_o(model, torch.randn(3, 16))
