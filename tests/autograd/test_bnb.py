"""4-bit bitsandbytes bases (NF4 and FP4, with and without double quantization) on the CPU:
dequantized with ``bitsandbytes.functional.dequantize_4bit``, compared against PEFT's
``lora.bnb.Linear4bit`` forward and backward."""

import pytest
import torch

from lk_autograd import can_fuse, lora_params

from .models import compare, make_4bit_model

bnb = pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["single", "double"])
@pytest.mark.parametrize("block", ["mlp", "qkv"])
def test_4bit_float32(quant_type, double_quant, block):
    model = make_4bit_model(quant_type, double_quant, bias=True, lora_dropout=0.2)
    assert type(model.gate_proj).__module__ == "peft.tuners.lora.bnb"
    assert lora_params(model.gate_proj).quant_state is not None
    assert can_fuse(model.gate_proj) is None
    errs = compare(block, model, torch.randn(2, 3, 16, requires_grad=True))
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize("variant", [{"use_dora": True}, {"use_dora": True, "lora_dropout": 0.2}])
def test_4bit_dora(variant):
    model = make_4bit_model("nf4", True, **variant)
    errs = compare("o", model, torch.randn(5, 16, requires_grad=True))
    assert max(errs.values()) < 1e-5, errs


def test_4bit_bfloat16_fp32_adapters():
    model = make_4bit_model("nf4", True, dtype=torch.bfloat16)
    assert model.up_proj.lora_A.default.weight.dtype == torch.float32
    errs = compare("mlp", model, torch.randn(4, 16, dtype=torch.bfloat16, requires_grad=True))
    assert max(errs.values()) < 2e-2, errs
