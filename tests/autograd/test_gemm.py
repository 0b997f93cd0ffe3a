"""``_gemm.lora_matmul`` (the LoRA term in the base GEMM's epilogue) and its use by the Functions.

The kernel runs on NVIDIA sm_90+ only; these tests skip elsewhere. Run on the device:
``uv run pytest tests/autograd -m gpu -q``.
"""

import copy

import pytest
import torch

import lk_autograd._linear as linear
from lk_autograd import _gemm
from tests.helpers import rel_err

from .models import compare, make_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (
            torch.cuda.is_available()
            and torch.version.hip is None
            and torch.cuda.get_device_capability()[0] >= 9
        ),
        reason="lora_matmul needs an NVIDIA sm_90+ GPU",
    ),
]


@pytest.fixture(autouse=True)
def _small_outputs_fuse(monkeypatch):
    """The tests' outputs are below ``_MIN_OUTPUT``; fuse them anyway."""
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 0)


def _case(M, N, K, r, w_kn, dtype, view):
    dev = "cuda"
    X = torch.randn(M, K, device=dev, dtype=dtype)
    W = torch.randn(*((K, N) if w_kn else (N, K)), device=dev, dtype=dtype) / K**0.5
    XA = torch.randn(M, 3 * r if view else r, device=dev, dtype=dtype)
    XA = XA[:, r : 2 * r] if view else XA  # a column slice, as _plain's split of X [A_1; ...]^T
    U = torch.randn(*((r, N) if w_kn else (N, r)), device=dev, dtype=dtype)
    return X, W, XA, U


@pytest.mark.parametrize(
    "M, N, K, r, s",
    [(130, 264, 72, 8, 2.0), (37, 48, 520, 24, 0.3), (300, 520, 64, 64, 1.0)],
    ids=["tails", "rank24-k520", "rank64"],
)
@pytest.mark.parametrize("w_kn", [False, True], ids=["XWt", "XW"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("view", [False, True], ids=["contiguous", "slice"])
def test_lora_matmul_against_float64(M, N, K, r, s, w_kn, dtype, view):
    """Against float64: no worse than cuBLAS's LoRA-first pair, which rounds the LoRA term to
    ``dtype`` before the base GEMM adds onto it (the fused kernel never does)."""
    X, W, XA, U = _case(M, N, K, r, w_kn, dtype, view)
    assert _gemm.fusable(X, W, XA, U)
    Wm, Um = (W, U) if w_kn else (W.t(), U.t())
    ref = X.double() @ Wm.double() + s * (XA.double() @ Um.double())
    pair = torch.addmm(XA @ Um, X, Wm, beta=s)
    err = rel_err(_gemm.lora_matmul(X, W, XA, U, s, w_kn), ref)
    assert err <= 1.25 * rel_err(pair, ref) + 1e-4, (err, rel_err(pair, ref))


def test_fusable_rejects(monkeypatch):
    """Every layout the kernel cannot take, and outputs too small to pay, go to cuBLAS."""
    X, W, XA, U = _case(64, 64, 64, 16, False, torch.bfloat16, False)
    assert _gemm.fusable(X, W, XA, U)
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 64 * 64 + 1)
    assert not _gemm.fusable(X, W, XA, U)
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 64 * 64)
    assert _gemm.fusable(X, W, XA, U)
    assert not _gemm.fusable(X.float(), W.float(), XA.float(), U.float())  # 32-bit
    assert not _gemm.fusable(X, W, XA, U.float())  # mixed dtypes
    assert not _gemm.fusable(X, W, XA[:, :12], U[:, :12])  # rank not a multiple of 8
    r128 = torch.randn(64, 128, device=X.device, dtype=X.dtype)
    assert not _gemm.fusable(X, W, r128, r128.clone())  # rank above _MAX_RANK
    assert not _gemm.fusable(X[:, 1:63], W[:, 1:63], XA, U)  # base not 16-byte aligned
    assert not _gemm.fusable(X, W.t(), XA, U)  # a transposed (column-major) operand


def test_set_fused_gemm_turns_it_off():
    import lk_autograd

    X, W, XA, U = _case(64, 64, 64, 16, False, torch.bfloat16, False)
    lk_autograd.set_fused_gemm(False)
    try:
        assert not _gemm.fusable(X, W, XA, U)
    finally:
        lk_autograd.set_fused_gemm(True)
    assert _gemm.fusable(X, W, XA, U)


@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
def test_functions_take_the_fused_gemm(block, monkeypatch):
    """bf16 adapters of rank 8 on 8-aligned shapes: every projection's forward and the input
    gradients go through ``lora_matmul``, and the block still matches PEFT in float64."""
    dev = "cuda"
    calls = []
    real = _gemm.lora_matmul

    def counting(*args, **kwargs):
        calls.append(kwargs["w_kn"])
        return real(*args, **kwargs)

    monkeypatch.setattr(linear, "lora_matmul", counting)
    model = make_model(torch.bfloat16, r=8, autocast_adapter_dtype=False).to(dev)
    ref = copy.deepcopy(model).double()
    X = torch.randn(4, 40, 16, device=dev, dtype=torch.bfloat16, requires_grad=True)
    errs = compare(block, model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_())
    assert max(errs.values()) < 2e-2, errs
    forwards = {"mlp": 3, "qkv": 3, "o": 1}[block]
    backwards = {"mlp": 2, "qkv": 1, "o": 1}[block]  # dh, then dX (gate's GEMM takes the term)
    assert calls.count(False) == forwards and calls.count(True) == backwards, calls
