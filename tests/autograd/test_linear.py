"""Outputs and every gradient of LoRA_MLP / LoRA_QKV / LoRA_O against PEFT's own forward and
backward (``_linear`` holds the shared math), over the supported adapter configurations."""

import copy

import pytest
import torch

from lk_autograd import _plain

from .models import BLOCKS as BLOCK_FNS
from .models import compare, make_model

VARIANTS = {
    "plain": {},
    "base_bias": {"bias": True},
    "lora_bias": {"bias": True, "lora_bias": True},
    "rslora": {"use_rslora": True},
    "dropout": {"lora_dropout": 0.3},
    "dora": {"use_dora": True},
    "dora_bias": {"use_dora": True, "bias": True},
    "dora_dropout": {"use_dora": True, "lora_dropout": 0.3, "bias": True},
    "multi": {"adapters": 3, "lora_bias": True, "bias": True},
    "multi_dropout": {"adapters": 2, "lora_dropout": 0.25},
}
BLOCKS = ["mlp", "qkv", "o"]


def _X(*shape, dtype=torch.float64, grad=True):
    return torch.randn(*shape, 16, dtype=dtype, requires_grad=grad)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float64(block, variant):
    model = make_model(**VARIANTS[variant])
    errs = compare(block, model, _X(2, 3))
    assert max(errs.values()) < 1e-10, errs


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("variant", ["plain", "multi", "dora_dropout"])
def test_float32(block, variant):
    model = make_model(torch.float32, **VARIANTS[variant])
    errs = compare(block, model, _X(5, dtype=torch.float32))
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("adapter_fp32", [True, False], ids=["fp32_adapters", "bf16_adapters"])
@pytest.mark.parametrize("variant", ["plain", "dora", "multi"])
def test_bfloat16_against_float64(block, adapter_fp32, variant):
    model = make_model(torch.bfloat16, autocast_adapter_dtype=adapter_fp32, **VARIANTS[variant])
    A = model.q_proj.lora_A.default.weight
    assert A.dtype == (torch.float32 if adapter_fp32 else torch.bfloat16)
    ref = copy.deepcopy(model).double()
    X = _X(4, 8, dtype=torch.bfloat16)
    errs = compare(block, model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_())
    assert max(errs.values()) < 2e-2, errs
    # ours vs PEFT, both bf16: each is within 2e-2 of float64 (above), so they may differ by
    # up to twice that (seen: 2.1e-2 on multi-bf16_adapters-mlp); a wrong formula gives O(1)
    peft = compare(block, copy.deepcopy(model), X, ours_fn=None)
    assert max(peft.values()) < 4e-2, peft


def test_set_scale_read_each_call():
    model = make_model()
    compare("o", model, _X(3))
    model.o_proj.set_scale("default", 0.37)
    errs = compare("o", model, _X(3))
    assert max(errs.values()) < 1e-10, errs


@pytest.mark.parametrize("block", BLOCKS)
def test_two_dim_input_and_eval_mode_dropout(block):
    model = make_model(lora_dropout=0.5, use_dora=True).eval()
    errs = compare(block, model, _X(7))
    assert max(errs.values()) < 1e-10, errs


@pytest.mark.parametrize("block", BLOCKS)
def test_requires_grad_subsets(block):
    model = make_model(adapters=2, bias=True, lora_bias=True)
    for name, p in model.named_parameters():
        if "lora_A.default" in name or "up_proj.lora_B" in name or "k_proj" in name:
            p.requires_grad_(False)
    errs = compare(block, model, _X(2, 3, grad=False))
    assert max(errs.values()) < 1e-10, errs


@pytest.mark.parametrize("block", BLOCKS)
def test_adapters_narrower_than_activations(block):
    """bf16 adapters on a float32 model: PEFT computes the branch in bf16 and adds it to the
    float32 base output; ours matches within the bf16 bound (a fresh model, fresh data)."""
    model = make_model(torch.float32, seed=int(torch.randint(0, 2**31, ())))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(torch.bfloat16)
    errs = compare(block, model, _X(3, 5, dtype=torch.float32))
    assert max(errs.values()) < 2e-2, errs


@pytest.mark.parametrize("block", ["qkv", "o"])
def test_plain_path_only_for_plain_adapters(block, monkeypatch):
    """``_plain``'s body runs for one plain adapter per projection and no autocast, PEFT's fp32
    adapters on bf16 activations included (narrowed); dropout in training, a LoRA bias,
    several adapters or autocast take ``_linear``'s."""
    calls = []
    forward = _plain.forward
    monkeypatch.setattr(_plain, "forward", lambda *a: calls.append(1) or forward(*a))
    ours = BLOCK_FNS[block][0]
    cases = [({}, True), ({"lora_dropout": 0.3}, False), ({"bias": True, "lora_bias": True}, False),
             ({"adapters": 2}, False)]  # fmt: skip
    for config, plain in cases:
        calls.clear()
        ours(make_model(**config), _X(2, 3))
        assert bool(calls) == plain, config
    calls.clear()
    ours(make_model(torch.bfloat16), _X(2, 3, dtype=torch.bfloat16))  # fp32 adapters
    assert calls
    calls.clear()
    model = make_model(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours(model, _X(2, 3, dtype=torch.float32))
    assert not calls


def test_fused_gemm_declines_cpu_tensors(monkeypatch):
    """Off the GPU, whatever the sizes, ``_gemm`` declines and the cuBLAS/CPU ops run."""
    from lk_autograd import _gemm

    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 0)
    X, W, XA, U = torch.randn(8, 16), torch.randn(32, 16), torch.randn(8, 8), torch.randn(32, 8)
    assert not _gemm.fusable(X, W, XA, U)
    assert not _gemm.fusable(X, W, XA, U, [(X, W)])
    assert not _gemm.fusable_group(X, [W, W], [XA, XA], [U, U])
    with pytest.raises(ValueError, match="a bias belongs to a projection's output"):
        _gemm.lora_matmul(X, W.t(), XA, U.t(), 1.0, w_kn=True, bias=torch.randn(32))
