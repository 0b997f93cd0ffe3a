"""``_activation_backward.activation_backward_with_dA`` (the gated backward with down's ``dA``).

The GPU tests need an NVIDIA sm_90+ GPU (``-m gpu`` on the device); the interpreter tests run
the same kernels on float32 CPU tensors under ``TRITON_INTERPRET=1``
(``tests/test_interpreter.py``), where CI can check the tiles' tails, the row chunks and the sum.
"""

import pytest
import torch

import lk_autograd._mlp as mlp
from lk_autograd import _activation_backward as ab
from lk_triton import _gated
from tests.helpers import assert_lk_triton_bits, fresh_seed, rel_err

from .models import check_backward_twice, check_mlp_route, count_calls, make_model

sm90 = pytest.mark.skipif(
    not (
        torch.cuda.is_available()
        and torch.version.hip is None
        and torch.cuda.get_device_capability()[0] >= 9
    ),
    reason="activation_backward_with_dA needs an NVIDIA sm_90+ GPU",
)
interpreter = pytest.mark.skipif(
    not _gated.INTERPRET or ab.triton is None,
    reason="runs under TRITON_INTERPRET=1 (tests/test_interpreter.py)",
)
ACTIVATIONS = ["silu", "gelu", "gelu_tanh"]


def _case(M, N, r, device, dtype, dxa_view=False):
    torch.manual_seed(fresh_seed())
    dh, e, g = (torch.randn(M, N, device=device, dtype=dtype) for _ in range(3))
    dXA = torch.randn(M, 3 * r if dxa_view else r, device=device, dtype=dtype)
    return dh, e, g, dXA[:, r : 2 * r] if dxa_view else dXA


def _expected(dh, e, g, dXA, kind):
    """lk_triton's ``(h, de, dg)`` and ``dA = dXA^T h`` in float64 (``h`` as rounded)."""
    h, de, dg = _gated.gated_backward(dh, e, g, kind, inplace=False)
    return h, de, dg, dXA.double().t() @ h.double()


@interpreter
@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize(
    "M, N, r, rows, dxa_view",
    [(300, 300, 16, 128, False), (70, 130, 8, 64, True), (129, 260, 24, 64, False)],
    ids=["row-chunks-tails", "one-chunk-rank8-view", "rank24-padded"],
)
def test_in_the_interpreter(kind, M, N, r, rows, dxa_view, monkeypatch):
    """Row and column tails, several row chunks, a rank below 16 and one padded to 32, a
    ``dXA`` column slice; ``de`` and ``dg`` are lk_triton's bits, in place over ``e`` and
    ``g``."""
    monkeypatch.setattr(ab, "_ROWS", rows)
    dh, e, g, dXA = _case(M, N, r, "cpu", torch.float32, dxa_view)
    _, ref_de, ref_dg, ref_dA = _expected(dh, e, g, dXA, kind)
    de, dg, dA = ab.activation_backward_with_dA(dh, e, g, dXA, kind, inplace=True)
    assert de is e and dg is g
    assert torch.equal(de, ref_de) and torch.equal(dg, ref_dg)
    assert dA.shape == (r, N) and dA.dtype == dXA.dtype
    assert rel_err(dA, ref_dA) < 1e-5


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "M, N, r, dxa_view",
    [(8192, 14336, 16, False), (1000, 5000, 8, True), (3000, 4100, 64, False)],
    ids=["llama-r16", "tails-rank8-view", "rank64"],
)
def test_against_float64(kind, dtype, M, N, r, dxa_view):
    """``de`` and ``dg`` as lk_triton's backward gives them; ``dA`` no worse than cuBLAS's
    ``dXA^T h`` against float64, and the same bits on a second call (a fixed summing order)."""
    dh, e, g, dXA = _case(M, N, r, "cuda", dtype, dxa_view)
    assert ab.fusable_activation_dA(dh, e, g, dXA, dXA.new_empty(r, N))
    h, ref_de, ref_dg, ref_dA = _expected(dh, e, g, dXA, kind)
    de, dg, dA = ab.activation_backward_with_dA(dh, e, g, dXA, kind, inplace=False)
    assert_lk_triton_bits(de, ref_de, kind)
    assert_lk_triton_bits(dg, ref_dg, kind)
    assert rel_err(dA, ref_dA) <= 1.25 * rel_err(dXA.t() @ h, ref_dA) + 1e-4
    _, _, again = ab.activation_backward_with_dA(dh, e, g, dXA, kind, inplace=False)
    assert torch.equal(again, dA)


@pytest.mark.gpu
@sm90
def test_fusable_rejects():
    """What the kernel cannot take goes to lk_triton's backward and cuBLAS."""
    dh, e, g, dXA = _case(256, 512, 16, "cuda", torch.bfloat16)
    A = dXA.new_empty(16, 512)

    def fusable(dh=dh, e=e, g=g, dXA=dXA, A=A):
        return ab.fusable_activation_dA(dh, e, g, dXA, A)

    assert fusable()
    assert not fusable(dh.float(), e.float(), g.float(), dXA.float(), A.float())  # 32-bit
    assert not fusable(A=A.float())  # fp32 adapter: PEFT's dA is then an fp32 GEMM
    assert not fusable(dXA=dXA.half())  # mixed dtypes
    assert not fusable(e=e.t().contiguous().t())  # not contiguous
    wide = torch.randn(256, 128, device="cuda", dtype=dh.dtype)
    assert not fusable(dXA=wide, A=wide.t())  # rank above _MAX_RANK
    assert not fusable(dXA=dXA.t().contiguous().t())  # rank not the unit stride
    assert not fusable(dh=dh.cpu(), e=e.cpu(), g=g.cpu(), dXA=dXA.cpu(), A=A.cpu())


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("activation", ["swiglu", "geglu", "geglu_tanh"])
@pytest.mark.parametrize("fp32_adapters", [False, True], ids=["bf16-adapters", "fp32-adapters"])
def test_lora_mlp_takes_it(activation, fp32_adapters, monkeypatch):
    """``LoRA_MLP`` takes the kernel once per backward, with bf16 adapters and PEFT's fp32 ones
    narrowed, and still matches PEFT in float64; with dropout on down it does not take it."""
    calls = count_calls(monkeypatch, mlp, "activation_backward_with_dA")
    check_mlp_route(calls, activation, fp32_adapters, (4, 40, 16), r=8)


@pytest.mark.gpu
@sm90
def test_retained_graph_backward_twice():
    """With ``retain_graph`` the kernel writes ``de`` and ``dg`` to new buffers: a second
    backward over the same graph reads intact ``e`` and ``g`` and doubles every gradient."""
    assert check_backward_twice(make_model(torch.bfloat16, r=8).cuda(), (4, 40, 16))
