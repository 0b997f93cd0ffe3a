"""``_gemm.lora_matmul`` (the LoRA term in the base GEMM's epilogue) and its use by the Functions.

The kernel runs on NVIDIA sm_90+ only; these tests skip elsewhere. Run on the device:
``uv run pytest tests/autograd -m gpu -q``.
"""

import copy
import functools

import pytest
import torch

import lk_autograd._linear as linear
import lk_autograd._mlp as mlp
import lk_autograd._plain as plain
from lk_autograd import _gemm
from lk_triton import _gated, _launch, _reference
from tests.helpers import check_gated_against_float64, rel_err

from .models import compare, make_4bit_model, make_model, ours_mlp, peft_mlp

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lora_matmul_bias_against_float64(dtype):
    """A biased projection's output (Qwen2's q/k/v) against float64, no worse than the cuBLAS
    path for a bias (``lora_first``: bias and LoRA term first, the base GEMM onto them)."""
    M, N, K, r, s = 130, 264, 72, 16, 0.5
    X, W, XA, U = _case(M, N, K, r, False, dtype, False)
    bias = torch.randn(N, device="cuda", dtype=dtype)
    assert _gemm.fusable(X, W, XA, U, bias=bias)
    assert not _gemm.fusable(X, W, XA, U, bias=bias.float())  # another dtype: cuBLAS
    ref = X.double() @ W.double().t() + s * (XA.double() @ U.double().t()) + bias.double()
    pair = torch.addmm(bias, XA, U.t(), alpha=s).addmm_(X, W.t())
    err = rel_err(_gemm.lora_matmul(X, W, XA, U, s, False, bias=bias), ref)
    assert err <= 1.25 * rel_err(pair, ref) + 1e-4, (err, rel_err(pair, ref))


@pytest.mark.parametrize("w_kn", [False, True], ids=["XWt", "XW"])
@pytest.mark.parametrize("extra_ks", [(24,), (520, 72)], ids=["one-more", "two-more"])
def test_lora_matmul_sums_more_pairs(w_kn, extra_ks):
    """Extra base pairs with their own K (q/k/v's input gradient): one accumulator, against
    float64, no worse than cuBLAS accumulating each GEMM onto the output in turn."""
    M, N, K, r, s = 130, 264, 72, 16, 0.5
    X, W, XA, U = _case(M, N, K, r, w_kn, torch.bfloat16, False)
    more = []
    for K_j in extra_ks:
        X_j, W_j, _, _ = _case(M, N, K_j, r, w_kn, torch.bfloat16, False)
        more.append((X_j, W_j))
    assert _gemm.fusable(X, W, XA, U, more)
    mats = [(X_j, W_j if w_kn else W_j.t()) for X_j, W_j in [(X, W), *more]]
    Um = U if w_kn else U.t()
    ref = s * (XA.double() @ Um.double()) + sum(a.double() @ b.double() for a, b in mats)
    pair = XA @ Um * s
    for a, b in mats:
        pair.addmm_(a, b)
    err = rel_err(_gemm.lora_matmul(X, W, XA, U, s, w_kn, more), ref)
    assert err <= 1.25 * rel_err(pair, ref) + 1e-4, (err, rel_err(pair, ref))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "Ns, ranks, ss",
    [((264, 40, 40), (8, 8, 8), (2.0, 2.0, 2.0)), ((48, 520), (24, 16), (1.0, 0.3))],
    ids=["q-k-v-tails", "two-ranks-scales"],
)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_lora_matmul_group_against_float64(dtype, Ns, ranks, ss, with_bias):
    """Each output of the grouped launch (column slices of one ``XA``, as ``_plain`` splits it;
    with a bias on all but the second) against float64, no worse than the cuBLAS path for that
    output."""
    M, K = 130, 72
    X = torch.randn(M, K, device="cuda", dtype=dtype)
    XA = torch.randn(M, sum(ranks), device="cuda", dtype=dtype)
    XAs = XA.split(ranks, dim=1)
    Ws = [torch.randn(N, K, device="cuda", dtype=dtype) / K**0.5 for N in Ns]
    Bs = [torch.randn(N, r, device="cuda", dtype=dtype) for N, r in zip(Ns, ranks, strict=True)]
    biases = [torch.randn(N, device="cuda", dtype=dtype) if with_bias and j != 1 else None
              for j, N in enumerate(Ns)]  # fmt: skip
    assert _gemm.fusable_group(X, Ws, XAs, Bs, biases)
    outs = _gemm.lora_matmul_group(X, Ws, XAs, Bs, ss, biases)
    for Y, W, XA_j, B, s, bias in zip(outs, Ws, XAs, Bs, ss, biases, strict=True):
        ref = X.double() @ W.double().t() + s * (XA_j.double() @ B.double().t())
        pair = torch.addmm(XA_j @ B.t(), X, W.t(), beta=s)
        if bias is not None:
            ref += bias.double()
            pair = torch.addmm(bias, XA_j, B.t(), alpha=s).addmm_(X, W.t())
        assert Y.shape == ref.shape
        assert rel_err(Y, ref) <= 1.25 * rel_err(pair, ref) + 1e-4, (rel_err(Y, ref), s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_gated_lora_matmul_against_float64(dtype, activation):
    """Gate, up and the activation in one launch (ranks 16 and 8, column slices of one XA)
    against float64, no worse than the separate path: the cuBLAS pair per projection, then
    ``lk_triton``'s activation kernel."""
    M, N, K, ranks, ss = 130, 264, 72, (16, 8), (0.5, 2.0)
    X = torch.randn(M, K, device="cuda", dtype=dtype)
    XAs = torch.randn(M, sum(ranks), device="cuda", dtype=dtype).split(ranks, dim=1)
    Ws = [torch.randn(N, K, device="cuda", dtype=dtype) / K**0.5 for _ in ranks]
    Bs = [torch.randn(N, r, device="cuda", dtype=dtype) for r in ranks]
    assert _gemm.fusable_gated(X, Ws, XAs, Bs)
    assert not _gemm.fusable_gated(X, [Ws[0], Ws[1][:-8]], XAs, Bs)  # weights of two shapes
    outs = _gemm.gated_lora_matmul(X, Ws, XAs, Bs, ss, activation)
    check_gated_against_float64(outs, X, Ws, XAs, Bs, ss, activation)


def _count_gated(monkeypatch, calls: list) -> list:
    """``calls``, which gets ``"gated"`` appended at each ``gated_lora_matmul`` call LoRA_MLP
    makes."""
    real = _gemm.gated_lora_matmul
    monkeypatch.setattr(mlp, "gated_lora_matmul", lambda *a: calls.append("gated") or real(*a))
    return calls


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "geglu_tanh"])
@pytest.mark.parametrize("bits", [16, 4], ids=["bf16", "nf4"])
def test_mlp_takes_the_gated_kernels(activation, bits, monkeypatch):
    """LoRA_MLP runs gate, up and the activation in one launch over 16-bit weights (4-bit ones
    are dequantized one at a time, so not there), and matches PEFT."""
    calls = _count_gated(monkeypatch, [])
    if bits == 4:
        pytest.importorskip("bitsandbytes")
        model = make_4bit_model("nf4", True, dtype=torch.bfloat16, r=8).cuda()
    else:
        model = make_model(torch.bfloat16, r=8, autocast_adapter_dtype=False).cuda()
    X = torch.randn(3, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    errs = compare(
        "mlp",
        model,
        X,
        ours_fn=functools.partial(ours_mlp, activation=activation),
        peft_fn=functools.partial(peft_mlp, activation=activation),
    )
    assert max(errs.values()) < 2e-2, errs
    assert calls == (["gated"] if bits == 16 else []), calls


def test_fusable_group_rejects(monkeypatch):
    X, W, XA, U = _case(64, 64, 64, 16, False, torch.bfloat16, False)
    assert _gemm.fusable_group(X, [W, W], [XA, XA], [U, U])
    assert not _gemm.fusable_group(X, [W], [XA], [U])  # one output: lora_matmul's
    assert not _gemm.fusable_group(X, [W] * 4, [XA] * 4, [U] * 4)  # above _MAX_GROUP
    assert not _gemm.fusable_group(X, [W, W], [XA, XA[:, :12]], [U, U[:, :12]])  # a rank of 12
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 2 * 64 * 64 + 1)
    assert not _gemm.fusable_group(X, [W, W], [XA, XA], [U, U])  # too small together


def test_lora_matmul_rejects_pairs_of_another_shape():
    X, W, XA, U = _case(64, 64, 64, 16, True, torch.bfloat16, False)
    X_j, W_j, _, _ = _case(64, 32, 64, 16, True, torch.bfloat16, False)  # N = 32, not 64
    with pytest.raises(ValueError, match="does not add onto"):
        _gemm.lora_matmul(X, W, XA, U, 1.0, True, [(X_j, W_j)])


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
    assert _gemm.fusable(X, W, XA, U, [(X, W), (X, W)])
    assert not _gemm.fusable(X, W, XA, U, [(X, W)] * 3)  # more than _MAX_MORE extra pairs
    assert not _gemm.fusable(X, W, XA, U, [(X.half(), W.half())])  # an extra pair's dtype
    assert not _gemm.fusable(X, W, XA, U, [(X[:, 1:63], W[:, 1:63])])  # its alignment
    X, W, XA, U = _case(64, 68, 64, 16, False, torch.bfloat16, False)  # aligned operands...
    assert not _gemm.fusable(X, W, XA, U)  # ...but the output's rows: 136 bytes, no TMA store
    Ws, XAs, Us = [W, W], [XA, XA], [U, U]
    assert not _gemm.fusable_group(X, Ws, XAs, Us) and not _gemm.fusable_gated(X, Ws, XAs, Us)


def test_set_fused_gemm_turns_it_off():
    import lk_autograd

    X, W, XA, U = _case(64, 64, 64, 16, False, torch.bfloat16, False)
    lk_autograd.set_fused_gemm(False)
    try:
        assert not _gemm.fusable(X, W, XA, U)
    finally:
        lk_autograd.set_fused_gemm(True)
    assert _gemm.fusable(X, W, XA, U)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
def test_functions_take_the_fused_gemm(block, bias, monkeypatch):
    """bf16 adapters of rank 8 on 8-aligned shapes, base biases or not: every projection's
    forward and each input gradient go through ``lora_matmul`` (an input gradient in one call
    over all the block's projections of that input), and the block still matches PEFT in
    float64."""
    dev = "cuda"
    calls = []
    real = _gemm.lora_matmul

    def counting(*args, **kwargs):
        calls.append((kwargs["w_kn"], len(kwargs.get("more", ()))))
        return real(*args, **kwargs)

    def counting_group(X, Ws, *args):
        calls.append(("group", len(Ws)))
        return real_group(X, Ws, *args)

    real_group = _gemm.lora_matmul_group
    monkeypatch.setattr(linear, "lora_matmul", counting)
    monkeypatch.setattr(plain, "lora_matmul_group", counting_group)
    _count_gated(monkeypatch, calls)
    model = make_model(torch.bfloat16, bias=bias, r=8, autocast_adapter_dtype=False).to(dev)
    ref = copy.deepcopy(model).double()
    X = torch.randn(4, 40, 16, device=dev, dtype=torch.bfloat16, requires_grad=True)
    errs = compare(block, model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_())
    assert max(errs.values()) < 2e-2, errs
    # q, k and v in one grouped launch; O alone; gate, up and the activation in one launch
    # (with base biases, one launch per projection and the activation apart), then down
    gate_up = [(False, 0)] * 2 if bias else ["gated"]
    forwards = {"mlp": [*gate_up, (False, 0)], "qkv": [("group", 3)], "o": [(False, 0)]}[block]
    # One kernel per input gradient, summing every base GEMM: MLP dh, then dX over gate and up
    backwards = {"mlp": [(True, 0), (True, 1)], "qkv": [(True, 2)], "o": [(True, 0)]}[block]
    assert calls == forwards + backwards, calls


def test_second_launches_take_the_cache(monkeypatch):
    """Each kernel launched twice per specialization on fresh data: the first launch compiles
    through the JIT and is cached (``lk_triton._launch``), the second runs the cached kernel,
    and both match float64 (a cached kernel fed stale descriptors or constexprs would not)."""
    monkeypatch.setattr(_launch, "_compiled", {})
    M, N, K, r, s = 130, 264, 72, 16, 0.5
    for round_ in range(2):
        X, W, XA, U = _case(M, N, K, r, False, torch.bfloat16, False)
        ref = X.double() @ W.double().t() + s * (XA.double() @ U.double().t())
        assert rel_err(_gemm.lora_matmul(X, W, XA, U, s, False), ref) < 1e-2
        Ws, Bs = [W, W.flip(0)], [U, U.flip(0)]
        outs = _gemm.lora_matmul_group(X, Ws, [XA, XA], Bs, [s, s])
        e, g, h = _gemm.gated_lora_matmul(X, Ws, [XA, XA], Bs, [s, s], "silu")
        for W_j, B_j, Y, Y_gated in zip(Ws, Bs, outs, (e, g), strict=True):
            ref_j = X.double() @ W_j.double().t() + s * (XA.double() @ B_j.double().t())
            assert rel_err(Y, ref_j) < 1e-2 and rel_err(Y_gated, ref_j) < 1e-2
        assert rel_err(h, _reference.gated_forward(e.double(), g.double(), "silu")) < 1e-2
        dh = torch.randn_like(e)
        h_b, de, dg = _gated.gated_backward(dh, e, g, "silu", inplace=False)
        refs = _reference.gated_backward(dh.double(), e.double(), g.double(), "silu")
        assert all(rel_err(got, ref) < 1e-2 for got, ref in zip((h_b, de, dg), refs, strict=True))
        if round_ == 0:
            entries = len(_launch._compiled)
    assert entries == 4  # lora_matmul, the group, the gated forward, the activation backward
    assert len(_launch._compiled) == entries  # the second round compiled nothing new
