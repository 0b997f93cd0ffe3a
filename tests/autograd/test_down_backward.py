"""``_down_backward.down_backward``: down's ``dh = dY W + dXA A`` GEMM with the gated activation's
backward in its epilogue (a Gluon kernel for NVIDIA sm_90; ``-m gpu`` on the device). Its
compile (shared memory, no spills) is checked on the CPU by ``tests/test_hopper_compile.py``."""

import math

import pytest
import torch

import lk_autograd._mlp as mlp
from lk_autograd import _down_backward as db
from lk_triton import _gated, _launch
from tests.helpers import fresh_seed, rel_err

from .models import (
    check_backward_twice,
    check_mlp_route,
    compare,
    count_calls,
    make_4bit_model,
    make_model,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (
            torch.cuda.is_available()
            and torch.version.hip is None
            and torch.cuda.get_device_capability()[0] == 9
            and db.gluon is not None
        ),
        reason="down_backward needs an NVIDIA sm_90 GPU and Triton's Gluon",
    ),
]
ACTIVATIONS = ["silu", "gelu", "gelu_tanh"]


def _case(M, K, N, r, dtype):
    torch.manual_seed(fresh_seed())
    dY, W = torch.randn(M, K, device="cuda", dtype=dtype), torch.randn(K, N, device="cuda") / 64
    dXA, A = torch.randn(M, r, device="cuda", dtype=dtype), torch.randn(r, N, device="cuda")
    e, g = (torch.randn(M, N, device="cuda", dtype=dtype) for _ in range(2))
    return dY, W.to(dtype), dXA, A.to(dtype), e, g


def _act64(e, kind):
    """``(act(e), act'(e))`` in float64."""
    x = e.double()
    if kind == "silu":
        s = torch.sigmoid(x)
        return x * s, s * (1 + x * (1 - s))
    if kind == "gelu":
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        return x * cdf, cdf + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    c = math.sqrt(2 / math.pi)
    t = torch.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "M, K, N, r",
    [
        pytest.param(8192, 4096, 14336, 16, id="llama-r16"),
        pytest.param(300, 200, 512, 72, id="M-K-tails-rank72"),
        pytest.param(384, 128, 768, 8, id="rank8"),
        pytest.param(2000, 256, 8192, 16, id="M-tail-4-tiles-per-sm"),
    ],
)
def test_against_float64(kind, dtype, M, K, N, r):
    """``de``, ``dg`` and ``dA`` as close to float64 as the separate route (``dh`` rounded
    once, lk_triton's backward, cuBLAS's ``dA = dXA^T h``); in place over ``e`` and ``g``, the
    same bits. Rank 72 takes two ``dXA A`` steps; K = 200 is a zero-filled K tail; M = 300
    and 2000 end in a part row block (masked: rows past M neither read nor written), 2000 x
    8192 makes 512 tiles, four or so per CTA."""
    _check_against_float64(kind, dtype, M, K, N, r)


def test_second_launch_takes_the_cache(monkeypatch):
    """The first launch compiles through the JIT and is kept (``lk_triton._launch``, which
    keys Gluon descriptors on their layout too); the second, on fresh data, runs the kept
    ``CompiledKernel`` and still matches float64."""
    monkeypatch.setattr(_launch, "_compiled", {})
    _check_against_float64("silu", torch.bfloat16, 300, 200, 512, 16)
    kept = dict(_launch._compiled)
    assert [key[0] for key in kept] == [db._kernel]
    _check_against_float64("silu", torch.bfloat16, 300, 200, 512, 16)
    assert _launch._compiled == kept


def _check_against_float64(kind, dtype, M, K, N, r):
    dY, W, dXA, A, e, g = _case(M, K, N, r, dtype)
    assert db.fusable_down_backward(dY, W, e, g, A, kind)
    dh64 = dY.double() @ W.double() + dXA.double() @ A.double()
    a, da = _act64(e, kind)
    ref_de, ref_dg, ref_dA = dh64 * g.double() * da, dh64 * a, dXA.double().t() @ (a * g.double())
    dh = (dY.float() @ W.float() + dXA.float() @ A.float()).to(dtype)
    pair_h, pair_de, pair_dg = _gated.gated_backward(dh, e, g, kind, inplace=False)
    pair_dA = dXA.t() @ pair_h
    del dh64, a, da, dh, pair_h

    de, dg, dA = db.down_backward(dY, W, dXA, A, e, g, kind, inplace=False)
    assert rel_err(de, ref_de) <= 1.25 * rel_err(pair_de, ref_de) + 1e-4
    assert rel_err(dg, ref_dg) <= 1.25 * rel_err(pair_dg, ref_dg) + 1e-4
    assert dA.dtype == dtype and dA.shape == (r, N)
    assert rel_err(dA, ref_dA) <= 1.25 * rel_err(pair_dA, ref_dA) + 1e-4
    e2, g2 = e.clone(), g.clone()
    de2, dg2, dA2 = db.down_backward(dY, W, dXA, A, e2, g2, kind, inplace=True)
    assert de2 is e2 and dg2 is g2
    assert torch.equal(de2, de) and torch.equal(dg2, dg) and torch.equal(dA2, dA)


def test_fusable_rejects():
    """What the kernel cannot take goes to the separate ``dh`` GEMM and activation backward."""
    dY, W, _, A, e, g = _case(256, 192, 512, 16, torch.bfloat16)

    def fusable(dY=dY, W=W, e=e, g=g, A=A, activation="silu"):
        return db.fusable_down_backward(dY, W, e, g, A, activation)

    assert fusable() and fusable(W=None)  # None: a 4-bit weight, dequantized for the call
    assert not fusable(*(t.float() for t in (dY, W, e, g, A)))  # 32-bit
    assert not fusable(A=A.half())  # mixed dtypes
    assert fusable(activation="gelu") and fusable(activation="gelu_tanh")
    assert not fusable(activation="relu")
    assert fusable(dY[:200], e=e[:200], g=g[:200])  # a part row block: masked
    assert not fusable(dY[:100], e=e[:100], g=g[:100])  # fewer tokens than one tile's rows
    assert not fusable(W=W[:, :384], e=e[:, :384], g=g[:, :384], A=A[:, :384])  # N % 256
    assert not fusable(e=e.t().contiguous().t())  # not contiguous
    assert not fusable(A=A[:12])  # rank not a multiple of 8
    assert not fusable(W=W.t().contiguous().t())  # not TMA's layout
    assert not fusable(W=W[:100])  # W not [K, N]
    cpu = (t.cpu() for t in (dY, W, e, g, A))
    assert not fusable(*cpu)


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "geglu_tanh"])
@pytest.mark.parametrize("fp32_adapters", [False, True], ids=["bf16-adapters", "fp32-adapters"])
def test_lora_mlp_takes_it(activation, fp32_adapters, monkeypatch):
    """``LoRA_MLP`` takes the kernel once per backward (in place: the graph dies with it) and
    matches PEFT in float64; with dropout on down it takes the separate path. 300 tokens: the
    last row block is masked."""
    calls = count_calls(monkeypatch, mlp, "down_backward")
    check_mlp_route(
        calls,
        activation,
        fp32_adapters,
        (3, 100, 192),
        r=16,
        d=192,
        inter=512,
    )


def test_retained_graph_backward_twice(monkeypatch):
    """With ``retain_graph`` the kernel writes ``de`` and ``dg`` to new buffers: a second
    backward (the graph's last: in place) reads intact ``e`` and ``g`` and doubles every
    gradient."""
    calls = count_calls(monkeypatch, mlp, "down_backward")
    model = make_model(torch.bfloat16, r=16, d=192, inter=512).cuda()
    once = check_backward_twice(model, (256, 192))
    assert calls == [False, True], calls
    assert len(once) == 6  # A and B of gate, up and down


def test_lora_mlp_4bit_takes_it(monkeypatch):
    """An NF4 down weight is dequantized for the call; the MLP matches PEFT's bnb layers."""
    pytest.importorskip("bitsandbytes")
    calls = count_calls(monkeypatch, mlp, "down_backward")
    model = make_4bit_model("nf4", True, dtype=torch.bfloat16, r=16, d=192, inter=512).cuda()
    X = torch.randn(2, 128, 192, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    errs = compare("mlp", model, X)
    assert max(errs.values()) < 2e-2, errs
    assert calls == [True], calls
