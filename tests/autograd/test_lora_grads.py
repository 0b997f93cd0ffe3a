"""``_lora_grads.lora_grads`` (an adapter's ``dB`` and ``dXA`` in one pass over ``dY``).

The GPU tests need an NVIDIA sm_90+ GPU (``-m gpu`` on the device); the interpreter tests run
the same kernels on float32 CPU tensors under ``TRITON_INTERPRET=1``
(``tests/test_interpreter.py``), where CI can check the unit walk, the tails and the sums.
"""

import copy

import pytest
import torch

import lk_autograd._linear as linear
from lk_autograd import _lora_grads
from lk_triton import _gated
from tests.helpers import rel_err

from .models import compare, make_model

sm90 = pytest.mark.skipif(
    not (
        torch.cuda.is_available()
        and torch.version.hip is None
        and torch.cuda.get_device_capability()[0] >= 9
    ),
    reason="lora_grads needs an NVIDIA sm_90+ GPU",
)
interpreter = pytest.mark.skipif(
    not _gated.INTERPRET or _lora_grads.triton is None,
    reason="runs under TRITON_INTERPRET=1 (tests/test_interpreter.py)",
)


@pytest.fixture
def _gradients_fuse(monkeypatch):
    """The tests' gradients are below ``_MIN_GRADIENT``; fuse them anyway."""
    monkeypatch.setattr(_lora_grads, "_MIN_GRADIENT", 0)


def _case(M, N, r, view, device, dtype):
    dY = torch.randn(M, N, device=device, dtype=dtype)
    B = torch.randn(N, r, device=device, dtype=dtype)
    XA = torch.randn(M, 3 * r if view else r, device=device, dtype=dtype)
    return dY, B, XA[:, r : 2 * r] if view else XA  # a slice, as _plain splits X [A_1; ...]^T


def _reference(dY, B, XA, s):
    dY, B, XA = dY.double(), B.double(), XA.double()
    return s * (dY.t() @ XA), s * (dY @ B)


@interpreter
@pytest.mark.parametrize(
    "M, N, r, view",
    [(300, 300, 16, False), (70, 1100, 8, True), (130, 2100, 16, True)],
    ids=["row-chunks", "column-blocks-rank8", "more-units-than-programs"],
)
def test_lora_grads_in_the_interpreter(M, N, r, view):
    """Row and column tails, several row chunks (N within one column block), several column
    blocks, more units than the interpreter's three programs, a rank below 16."""
    dY, B, XA = _case(M, N, r, view, "cpu", torch.float32)
    dB, dXA = _lora_grads.lora_grads(dY, B, XA, 0.5)
    ref_dB, ref_dXA = _reference(dY, B, XA, 0.5)
    assert dB.shape == (N, r) and dXA.shape == (M, r)
    assert rel_err(dB, ref_dB) < 1e-5 and rel_err(dXA, ref_dXA) < 1e-5


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "M, N, r, view", [(8192, 1096, 16, False), (333, 4096, 8, True)], ids=["tall", "wide-rank8"]
)
@pytest.mark.usefixtures("_gradients_fuse")
def test_lora_grads_against_float64(M, N, r, view, dtype):
    """No worse than cuBLAS's two GEMMs against float64, and the same bits on a second call
    (the partials are summed in a fixed order)."""
    dY, B, XA = _case(M, N, r, view, "cuda", dtype)
    assert _lora_grads.fusable_grads(dY, B, XA)
    ref_dB, ref_dXA = _reference(dY, B, XA, 2.0)
    dB, dXA = _lora_grads.lora_grads(dY, B, XA, 2.0)
    cublas_dB, cublas_dXA = linear.scaled_mm(dY.t(), XA, 2.0), linear.scaled_mm(dY, B, 2.0)
    assert rel_err(dB, ref_dB) <= 1.25 * rel_err(cublas_dB, ref_dB) + 1e-4
    assert rel_err(dXA, ref_dXA) <= 1.25 * rel_err(cublas_dXA, ref_dXA) + 1e-4
    again = _lora_grads.lora_grads(dY, B, XA, 2.0)
    assert torch.equal(again[0], dB) and torch.equal(again[1], dXA)


@pytest.mark.gpu
@sm90
def test_fusable_grads_rejects(monkeypatch):
    """What the kernel cannot take, or would not pay for, goes to cuBLAS."""
    dY, B, XA = _case(64, 8192, 16, False, "cuda", torch.bfloat16)
    monkeypatch.setattr(_lora_grads, "_MIN_GRADIENT", 64 * 8192 + 1)
    assert not _lora_grads.fusable_grads(dY, B, XA)  # too small to pay for the extra launch
    monkeypatch.setattr(_lora_grads, "_MIN_GRADIENT", 0)
    assert _lora_grads.fusable_grads(dY, B, XA)
    assert not _lora_grads.fusable_grads(dY.float(), B.float(), XA.float())  # 32-bit
    assert not _lora_grads.fusable_grads(dY, B.half(), XA)  # mixed dtypes
    assert not _lora_grads.fusable_grads(dY, B[:, :12], XA[:, :12])  # rank not a multiple of 8
    r32 = torch.randn(64, 32, device="cuda", dtype=dY.dtype)
    assert not _lora_grads.fusable_grads(dY, B.repeat(1, 2), r32)  # rank above _MAX_RANK
    assert not _lora_grads.fusable_grads(dY[:, 1:8001], B[1:8001], XA)  # not 16-byte aligned


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("fp32_adapters", [False, True], ids=["bf16-adapters", "fp32-adapters"])
@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
@pytest.mark.usefixtures("_gradients_fuse")
def test_functions_take_it(block, fp32_adapters, monkeypatch):
    """Every adapter's ``dB`` and ``dXA`` go through ``lora_grads``, on the lean path (bf16
    adapters) and on ``_linear``'s (fp32 adapters, narrowed), and the block still matches
    PEFT in float64."""
    calls = []
    real = _lora_grads.lora_grads
    monkeypatch.setattr(linear, "lora_grads", lambda *a: calls.append(a[0].shape) or real(*a))
    model = make_model(torch.bfloat16, r=8, autocast_adapter_dtype=fp32_adapters).cuda()
    ref = copy.deepcopy(model).double()
    X = torch.randn(4, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    errs = compare(block, model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_())
    assert max(errs.values()) < 2e-2, errs
    assert len(calls) == {"mlp": 3, "qkv": 3, "o": 1}[block], calls
