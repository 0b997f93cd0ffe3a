"""``_dx_gemm.input_grad_matmul``: an input gradient ``sum_j dY_j W_j + dXA A`` as a
warp-specialized Gluon GEMM (NVIDIA sm_90; ``-m gpu`` on the device), and its use by the
Functions once switched on (``set_ws_input_grad``). Its compile (shared memory, no spills) is
checked on the CPU by ``tests/test_hopper_compile.py``."""

import copy

import pytest
import torch

import lk_autograd._linear as linear
from lk_autograd import _down_backward, _dx_gemm, _gemm
from tests.helpers import fresh_seed, rel_err

from .models import compare, make_model

on_sm90 = (
    torch.cuda.is_available()
    and torch.version.hip is None
    and torch.cuda.get_device_capability()[0] == 9
    and _down_backward.gluon is not None
)
needs_sm90 = pytest.mark.skipif(not on_sm90, reason="_dx_gemm needs an NVIDIA sm_90 GPU and Gluon")


@pytest.fixture
def switched_on(monkeypatch):
    """The kernel on, for small outputs too (below ``_gemm._MIN_OUTPUT``)."""
    monkeypatch.setattr(_dx_gemm, "_enabled", True)
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 0)


def _pairs(M, N, ks, r, dtype, device="cuda"):
    torch.manual_seed(fresh_seed())
    pairs = [
        (torch.randn(M, k, device=device, dtype=dtype),
         (torch.randn(k, N, device=device) / k**0.5).to(dtype))
        for k in ks
    ]  # fmt: skip
    dXA = torch.randn(M, r, device=device, dtype=dtype)
    return pairs, dXA, torch.randn(r, N, device=device, dtype=dtype)


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "M, N, ks, r",
    [
        pytest.param(8192, 4096, (4096,), 16, id="o-llama"),
        pytest.param(300, 264, (200,), 72, id="tails-rank72"),
        pytest.param(130, 520, (520, 72), 8, id="two-pairs-rank8"),
        pytest.param(2000, 768, (256, 64, 64), 48, id="three-pairs-qkv-like"),
    ],
)
@pytest.mark.usefixtures("switched_on")
def test_against_float64(M, N, ks, r, dtype):
    """Against float64, no worse than cuBLAS accumulating ``dXA A`` and each ``dY_j W_j`` onto
    the output in turn (rounding it to ``dtype`` between GEMMs; the kernel never does). M =
    300, 130 and 2000 end in a part row block, N = 264 and 520 in a part column block, K =
    200 and 72 in a part K step (TMA clips the stores and zero-fills the loads); rank 72 takes
    two ``dXA A`` steps."""
    pairs, dXA, A = _pairs(M, N, ks, r, dtype)
    assert _dx_gemm.fusable_input_grad(pairs, dXA, A)
    ref = dXA.double() @ A.double()
    chain = dXA @ A
    for dY, W in pairs:
        ref += dY.double() @ W.double()
        chain.addmm_(dY, W)
    err = rel_err(_dx_gemm.input_grad_matmul(pairs, dXA, A), ref)
    assert err <= 1.25 * rel_err(chain, ref) + 1e-4, (err, rel_err(chain, ref))


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
@pytest.mark.usefixtures("switched_on")
def test_functions_take_it(block, monkeypatch):
    """Switched on, each block's fused input gradient (MLP: dh, then dX over gate and up; q, k
    and v's dX in one call; o's) goes through ``input_grad_matmul``, and the block matches
    PEFT in float64."""
    calls = []
    real = _dx_gemm.input_grad_matmul
    monkeypatch.setattr(
        linear, "input_grad_matmul", lambda p, *a: calls.append(len(p)) or real(p, *a)
    )
    model = make_model(torch.bfloat16, r=8, autocast_adapter_dtype=False).cuda()
    ref = copy.deepcopy(model).double()
    X = torch.randn(4, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    errs = compare(block, model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_())
    assert max(errs.values()) < 2e-2, errs
    assert calls == {"mlp": [1, 2], "qkv": [3], "o": [1]}[block], calls


def test_off_by_default(monkeypatch):
    """Off unless switched on; on, CPU tensors still take the other routes."""
    assert not _dx_gemm._enabled
    pairs, dXA, A = _pairs(256, 256, (64,), 16, torch.bfloat16, device="cpu")
    assert not _dx_gemm.fusable_input_grad(pairs, dXA, A)
    monkeypatch.setattr(_dx_gemm, "_enabled", True)
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 0)
    assert not _dx_gemm.fusable_input_grad(pairs, dXA, A)


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("switched_on")
def test_fusable_rejects(monkeypatch):
    """Four pairs, a float32 operand, an ``A`` of another width, a rank not a multiple of 8,
    a small output (at the shipped ``_MIN_OUTPUT``), switched off: each turned down."""
    pairs, dXA, A = _pairs(256, 256, (64,), 16, torch.bfloat16)
    assert _dx_gemm.fusable_input_grad(pairs, dXA, A)
    assert not _dx_gemm.fusable_input_grad(pairs * 4, dXA, A)
    assert not _dx_gemm.fusable_input_grad(pairs, dXA, A.float())
    assert not _dx_gemm.fusable_input_grad(pairs, dXA, A[:, :128])
    assert not _dx_gemm.fusable_input_grad(pairs, dXA[:, :12], A[:12])
    _dx_gemm.set_ws_input_grad(False)
    assert not _dx_gemm.fusable_input_grad(pairs, dXA, A)
    _dx_gemm.set_ws_input_grad(True)
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 1 << 25)
    assert not _dx_gemm.fusable_input_grad(pairs, dXA, A)
