"""4-bit bitsandbytes bases (NF4 and FP4, with and without double quantization) on the CPU:
dequantized with ``bitsandbytes.functional.dequantize_4bit``, compared against PEFT's
``lora.bnb.Linear4bit`` forward and backward."""

import pytest
import torch

from lk_autograd import _quant, can_fuse, lora_params
from lk_triton import uses_triton
from tests.helpers import DEVICES

from .models import compare, make_4bit_model

bnb = pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["single", "double"])
@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
@pytest.mark.parametrize("lora_dropout", [0.2, 0.0], ids=["dropout", "plain"])
def test_4bit_float32(quant_type, double_quant, block, lora_dropout):
    """With dropout QKV/O take ``_linear``'s path, without it ``_plain``'s."""
    model = make_4bit_model(quant_type, double_quant, bias=True, lora_dropout=lora_dropout)
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


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["single", "double"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_triton_dequantize_is_bitsandbytes_bit_for_bit(quant_type, double_quant, dtype, device):
    """Our one-launch dequantize against bnb's own, where it runs: CUDA, or the CPU under
    TRITON_INTERPRET=1 (on a plain CPU run both paths are bnb's, so there is nothing to test).
    Shapes leave partial quantization blocks and an odd element count."""
    W = torch.randn(71, 37, device=device, dtype=dtype)
    W = W * torch.rand(71, 1, device=device, dtype=dtype)  # rows of different scales
    packed, qs = bnb.functional.quantize_4bit(
        W, quant_type=quant_type, compress_statistics=double_quant, blocksize=64
    )
    if not uses_triton(packed):
        pytest.skip("bitsandbytes' own ops run here (no CUDA, no TRITON_INTERPRET)")
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter rounds float32 to bfloat16 by truncation")
    expected = bnb.functional.dequantize_4bit(packed, qs)
    assert torch.equal(_quant.dequantize(packed, qs), expected)
