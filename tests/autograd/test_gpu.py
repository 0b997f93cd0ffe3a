"""The same comparisons on CUDA (Triton kernels, cuBLAS, CUDA dropout); skipped without a GPU.

Run on the device: ``uv run pytest tests/autograd -m gpu -q``.
"""

import copy
import functools

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lk_autograd import apply_lora_mlp

from .models import MLP, Block, compare, make_4bit_model, make_model, peft_mlp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm device"),
]

VARIANTS = {
    "plain": {},
    "bias": {"bias": True, "lora_bias": True},
    "dropout": {"lora_dropout": 0.2},
    "dora": {"use_dora": True, "bias": True},
    "dora_dropout": {"use_dora": True, "lora_dropout": 0.2},
    "multi": {"adapters": 3},
}


def _X(dtype, *shape):
    return torch.randn(*shape, 16, device="cuda", dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_cuda_against_peft(block, variant, dtype):
    model = make_model(dtype, **VARIANTS[variant]).cuda()
    errs = compare(block, model, _X(dtype, 3, 37))
    assert max(errs.values()) < (1e-10 if dtype == torch.float64 else 1e-5), errs


@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
@pytest.mark.parametrize("variant", ["plain", "dora", "multi"])
@pytest.mark.parametrize("adapter_fp32", [True, False], ids=["fp32_adapters", "bf16_adapters"])
def test_cuda_bfloat16_against_float64(block, variant, adapter_fp32):
    model = make_model(torch.bfloat16, autocast_adapter_dtype=adapter_fp32, **VARIANTS[variant])
    model = model.cuda()
    ref = copy.deepcopy(model).double()
    X = _X(torch.bfloat16, 4, 64)
    errs = compare(block, model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_())
    assert max(errs.values()) < 2e-2, errs


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["single", "double"])
def test_cuda_4bit(quant_type, double_quant):
    pytest.importorskip("bitsandbytes")
    model = make_4bit_model(quant_type, double_quant, dtype=torch.bfloat16, use_dora=False)
    model = model.cuda()
    errs = compare("mlp", model, _X(torch.bfloat16, 2, 40))
    assert max(errs.values()) < 2e-2, errs


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_cuda_torch_compile(backend):
    """PEFT's gradients under torch.compile(fullgraph=True) on CUDA, on every torch (before
    2.12 through ``_args.output``, see ``test_functions.test_torch_compile``)."""
    model = make_model(torch.float32, bias=True, adapters=2).cuda()
    peft = functools.partial(peft_mlp, activation="geglu_tanh")

    torch._dynamo.reset()
    compiled = torch.compile(
        lambda m, X: apply_lora_mlp(m, X, "geglu_tanh"), backend=backend, fullgraph=True
    )
    errs = compare("mlp", model, _X(torch.float32, 2, 33), ours_fn=compiled, peft_fn=peft)
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.parametrize("fused", [False, True], ids=["cublas", "fused_gemm"])
@pytest.mark.parametrize("retain", [False, True], ids=["freed_graph", "retain_graph"])
def test_cuda_mlp_backward_memory(retain, fused, monkeypatch):
    """Memory the MLP backward allocates beyond what the forward left, in [N, I] buffers: h
    reuses dh's buffer always; de and dg reuse e and g's only when the graph dies with the
    backward (about 1 buffer), not under retain_graph (about 3: h, de, dg). The same whether
    the GEMMs are cuBLAS's or ``_gemm``'s."""
    from lk_autograd import _gemm

    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 0 if fused else 1 << 62)
    if fused and not _gemm.fusable(*(torch.zeros(8, 8, device="cuda", dtype=torch.bfloat16),) * 4):
        pytest.skip("the fused GEMM needs an NVIDIA sm_90+ GPU")
    n, d, inter = 4096, 256, 4096
    model = Block(d, inter, heads=2, kv=1, hd=128)
    cfg = LoraConfig(r=8, target_modules=list(MLP), init_lora_weights=False)
    model = get_peft_model(model, cfg).base_model.model.to("cuda", torch.bfloat16)
    X = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    params = [X] + [p for p in model.parameters() if p.requires_grad]
    Y = apply_lora_mlp(model, X, "swiglu")
    dY = torch.randn_like(Y)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    grads = torch.autograd.grad(Y, params, dY, retain_graph=retain)
    buffers = (torch.cuda.max_memory_allocated() - before) / (n * inter * 2)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (2.5 < buffers < 3.5) if retain else (buffers < 1.5), buffers
