"""``_gemm``'s kernels in Triton's interpreter, on float32 CPU tensors: the kernels' logic (tile
walk, extra K pairs, grouped outputs, rank padding, bias, scale) checked where CI can run it.

``tests/test_interpreter.py`` runs this file with ``TRITON_INTERPRET=1``; without it the
kernels cannot run on the CPU and these tests skip. The bf16/fp16 numerics and the TMA
hardware path are ``test_gemm.py``'s, on the GPU.
"""

import pytest
import torch

from lk_autograd import _gemm
from lk_triton import _gated, _reference
from tests.helpers import rel_err

pytestmark = pytest.mark.skipif(
    not _gated.INTERPRET or _gemm.triton is None,
    reason="runs under TRITON_INTERPRET=1 (tests/test_interpreter.py)",
)
TOL = 1e-5  # float32 GEMMs of these sizes against float64


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float32)


@pytest.mark.parametrize(
    "w_kn, with_bias", [(False, False), (False, True), (True, False)], ids=["XWt", "XWt-bias", "XW"]
)
def test_lora_matmul(w_kn, with_bias):
    M, N, K, r, s = 130, 264, 72, 16, 0.5
    X, XA = _randn(M, K), _randn(M, r)
    W, U = (_randn(K, N), _randn(r, N)) if w_kn else (_randn(N, K), _randn(N, r))
    bias = _randn(N) if with_bias else None
    Wm, Um = (W, U) if w_kn else (W.t(), U.t())
    ref = X.double() @ Wm.double() + s * (XA.double() @ Um.double())
    if with_bias:
        ref += bias.double()
    assert rel_err(_gemm.lora_matmul(X, W, XA, U, s, w_kn, bias=bias), ref) < TOL


def test_lora_matmul_more_pairs():
    """Three base pairs of different K (q, k, v's input gradient) and a rank below 16."""
    M, N, r = 130, 264, 8
    pairs = [(_randn(M, K), _randn(K, N)) for K in (72, 24, 520)]
    XA, A = _randn(M, r), _randn(r, N)
    (X, W), *more = pairs
    ref = 2.0 * (XA.double() @ A.double()) + sum(x.double() @ w.double() for x, w in pairs)
    assert rel_err(_gemm.lora_matmul(X, W, XA, A, 2.0, True, more), ref) < TOL


def test_lora_matmul_group():
    """Three outputs of other widths, ranks, scales and biases (one without), the LoRA inputs
    column slices of one ``XA`` as ``_plain`` splits it."""
    M, K = 130, 72
    Ns, ranks, ss = (264, 40, 48), (8, 16, 8), (2.0, 0.3, 1.0)
    X = _randn(M, K)
    XAs = _randn(M, sum(ranks)).split(ranks, dim=1)
    Ws = [_randn(N, K) for N in Ns]
    Bs = [_randn(N, r) for N, r in zip(Ns, ranks, strict=True)]
    biases = [_randn(Ns[0]), None, _randn(Ns[2])]
    outs = _gemm.lora_matmul_group(X, Ws, XAs, Bs, ss, biases)
    for Y, W, XA, B, s, bias in zip(outs, Ws, XAs, Bs, ss, biases, strict=True):
        ref = X.double() @ W.double().t() + s * (XA.double() @ B.double().t())
        if bias is not None:
            ref += bias.double()
        assert Y.shape == ref.shape and rel_err(Y, ref) < TOL


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_gated_lora_matmul(activation):
    """Gate and up of other ranks and scales (column slices of one ``XA``), with the
    activation in the epilogue."""
    M, N, K, ranks, ss = 130, 264, 72, (16, 8), (0.5, 2.0)
    X = _randn(M, K)
    XAs = _randn(M, sum(ranks)).split(ranks, dim=1)
    Ws = [_randn(N, K) / K**0.5 for _ in ranks]  # e of order 1: no overflow in GELU's tanh
    Bs = [_randn(N, r) for r in ranks]
    e, g, h = _gemm.gated_lora_matmul(X, Ws, XAs, Bs, ss, activation)
    e_ref, g_ref = (X.double() @ W.double().t() + s * (XA.double() @ B.double().t())
                    for W, XA, B, s in zip(Ws, XAs, Bs, ss, strict=True))  # fmt: skip
    assert rel_err(e, e_ref) < TOL and rel_err(g, g_ref) < TOL
    assert rel_err(h, _reference.gated_forward(e.double(), g.double(), activation)) < TOL
