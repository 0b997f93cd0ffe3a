"""``_ws_gemm.ws_lora_matmul`` (and its group) and ``_ws_gated.ws_gated_lora_matmul``: ``_gemm``'s
LoRA GEMMs (no bias) and gated gate/up kernel as warp-specialized Gluon GEMMs (NVIDIA sm_90;
``-m gpu`` on the device), and their use by the Functions once switched on (``set_ws_gemm``).
Their compile (shared memory, no spills) is checked on the CPU by
``tests/test_hopper_compile.py``."""

import copy

import pytest
import torch

import lk_autograd._linear as linear
import lk_autograd._mlp as mlp
import lk_autograd._plain as plain
from lk_autograd import _down_backward, _gemm, _ws_gated, _ws_gemm
from lk_triton import _gated
from tests.helpers import check_gated_against_float64, fresh_seed, rel_err

from .models import compare, make_model

on_sm90 = (
    torch.cuda.is_available()
    and torch.version.hip is None
    and torch.cuda.get_device_capability()[0] == 9
    and _down_backward.gluon is not None
)
needs_sm90 = pytest.mark.skipif(not on_sm90, reason="_ws_gemm needs an NVIDIA sm_90 GPU and Gluon")


@pytest.fixture
def switched_on(monkeypatch):
    """The kernel on, for small outputs too (below ``_gemm._MIN_OUTPUT``)."""
    monkeypatch.setattr(_ws_gemm, "_enabled", True)
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 0)


def _operands(M, N, ks, r, w_kn, dtype, device="cuda"):
    """``[(X_j, W_j)]`` (``W_j`` ``[K_j, N]`` if ``w_kn`` else ``[N, K_j]``), ``XA``, ``U``."""
    torch.manual_seed(fresh_seed())
    pairs = []
    for k in ks:
        W = torch.randn(*((k, N) if w_kn else (N, k)), device=device) / k**0.5
        pairs.append((torch.randn(M, k, device=device, dtype=dtype), W.to(dtype)))
    U = torch.randn(*((r, N) if w_kn else (N, r)), device=device, dtype=dtype)
    return pairs, torch.randn(M, r, device=device, dtype=dtype), U


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("switched_on")
@pytest.mark.parametrize("w_kn", [False, True], ids=["XWt", "XW"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "M, N, ks, r, s",
    [
        pytest.param(8192, 4096, (4096,), 16, 2.0, id="o-llama"),
        pytest.param(300, 264, (200,), 72, 0.5, id="tails-rank72"),
        pytest.param(130, 520, (520, 72), 8, 1.0, id="two-pairs-rank8"),
        pytest.param(2000, 768, (256, 64, 64), 48, 1.0, id="three-pairs-qkv-like"),
    ],
)
def test_against_float64(M, N, ks, r, s, w_kn, dtype):
    """Against float64, no worse than cuBLAS's chain (``s XA U``, then each base GEMM onto the
    output in turn, rounding it to ``dtype`` between GEMMs; the kernel never does). M = 300,
    130 and 2000 end in a part row block, N = 264 and 520 in a part column block, K = 200 and
    72 in a part K step (TMA clips the stores and zero-fills the loads); rank 72 takes two
    ``XA U`` steps."""
    pairs, XA, U = _operands(M, N, ks, r, w_kn, dtype)
    (X, W), *more = pairs
    assert _ws_gemm.fusable_ws(X, W, XA, U, w_kn, more)
    mats = [(X_j, W_j if w_kn else W_j.t()) for X_j, W_j in pairs]
    Um = U if w_kn else U.t()
    ref = s * (XA.double() @ Um.double()) + sum(a.double() @ b.double() for a, b in mats)
    chain = XA @ Um * s
    for a, b in mats:
        chain.addmm_(a, b)
    err = rel_err(_ws_gemm.ws_lora_matmul(X, W, XA, U, s, w_kn, more), ref)
    assert err <= 1.25 * rel_err(chain, ref) + 1e-4, (err, rel_err(chain, ref))


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("switched_on")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "M, Ns, K, ranks, ss",
    [
        pytest.param(8192, (4096, 1024, 1024), 4096, (16, 16, 16), (2.0,) * 3, id="qkv-llama"),
        pytest.param(300, (264, 520), 200, (72, 8), (0.5, 1.0), id="two-tails-rank72"),
        pytest.param(2000, (768, 256, 256), 256, (16, 8, 24), (1.0,) * 3, id="three-ranks"),
    ],
)
def test_group_against_float64(M, Ns, K, ranks, ss, dtype):
    """Each projection of the group (``XA_j`` column slices of one ``XA``, as ``_plain``
    splits it) against float64, no worse than cuBLAS's chain for it (``s_j XA_j B_j^T``, then
    ``X W_j^T`` onto it). M = 300 and 2000 end in a part row block, N = 264 and 520 in a part
    column block (a tile of the next projection follows), K = 200 in a part K step; ranks 72
    and 8 in one group run two rank steps each (``XA_j`` zero-filled past its rank); unit
    scales keep the slices as views."""
    torch.manual_seed(fresh_seed())
    X = torch.randn(M, K, device="cuda", dtype=dtype)
    XAs = torch.randn(M, sum(ranks), device="cuda", dtype=dtype).split(ranks, dim=1)
    Ws = [(torch.randn(N, K, device="cuda") / K**0.5).to(dtype) for N in Ns]
    Bs = [torch.randn(N, r, device="cuda", dtype=dtype) for N, r in zip(Ns, ranks, strict=True)]
    assert _ws_gemm.fusable_ws_group(X, Ws, XAs, Bs)
    outs = _ws_gemm.ws_lora_matmul_group(X, Ws, XAs, Bs, ss)
    for Y, W, XA, B, s in zip(outs, Ws, XAs, Bs, ss, strict=True):
        ref = X.double() @ W.double().t() + s * (XA.double() @ B.double().t())
        chain = (XA @ B.t() * s).addmm_(X, W.t())
        err = rel_err(Y, ref)
        assert Y.shape == ref.shape and err <= 1.25 * rel_err(chain, ref) + 1e-4, err


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("switched_on")
def test_group_fusable_rejects():
    """One projection, four, a bias, a float32 operand, a ``B`` of another rank, an output
    row of 136 bytes (68 columns: no TMA store), a rank not a multiple of 8: turned down."""
    torch.manual_seed(fresh_seed())
    X = torch.randn(256, 64, device="cuda", dtype=torch.bfloat16)
    XA = torch.randn(256, 16, device="cuda", dtype=torch.bfloat16)
    W = torch.randn(128, 64, device="cuda", dtype=torch.bfloat16)
    B = torch.randn(128, 16, device="cuda", dtype=torch.bfloat16)
    assert _ws_gemm.fusable_ws_group(X, [W, W], [XA, XA], [B, B])
    assert not _ws_gemm.fusable_ws_group(X, [W], [XA], [B])
    assert not _ws_gemm.fusable_ws_group(X, [W] * 4, [XA] * 4, [B] * 4)
    assert not _ws_gemm.fusable_ws_group(X, [W, W], [XA, XA], [B, B], [None, B[:, 0].clone()])
    assert not _ws_gemm.fusable_ws_group(X, [W, W.float()], [XA, XA], [B, B])
    assert not _ws_gemm.fusable_ws_group(X, [W, W], [XA, XA], [B, B[:, :8]])
    assert not _ws_gemm.fusable_ws_group(X, [W, W[:68]], [XA, XA], [B, B[:68]])
    assert not _ws_gemm.fusable_ws_group(X, [W, W], [XA, XA[:, :12]], [B, B[:, :12]])


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("switched_on")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("M, N, K", [(300, 384, 200), (8192, 14336, 4096)], ids=["tails", "llama"])
def test_gated_against_float64(M, N, K, activation, dtype):
    """Gate, up and the activation (ranks 16 and 8, column slices of one ``XA``, scales 0.5
    and 2) against float64, no worse than the separate path: the cuBLAS pair per projection,
    then ``lk_triton``'s activation kernel. M = 300 ends in a part row block (masked), K = 200
    in a part K step, N = 384 is three column tiles."""
    torch.manual_seed(fresh_seed())
    ranks, ss = (16, 8), (0.5, 2.0)
    X = torch.randn(M, K, device="cuda", dtype=dtype)
    XAs = torch.randn(M, sum(ranks), device="cuda", dtype=dtype).split(ranks, dim=1)
    Ws = [(torch.randn(N, K, device="cuda") / K**0.5).to(dtype) for _ in ranks]
    Bs = [torch.randn(N, r, device="cuda", dtype=dtype) for r in ranks]
    assert _ws_gated.fusable_ws_gated(X, Ws, XAs, Bs)
    e, g, h = _ws_gated.ws_gated_lora_matmul(X, Ws, XAs, Bs, ss, activation)
    check_gated_against_float64((e, g, h), X, Ws, XAs, Bs, ss, activation)
    # h from the rounded e and g, as the separate kernels compute it
    assert torch.equal(h, _gated.gated_forward(e, g, activation))


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("switched_on")
@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
def test_functions_take_it(block, monkeypatch):
    """Switched on (an MLP width of 128: a whole column tile), gate, up and the activation go
    through ``ws_gated_lora_matmul``, q, k and v's forwards through ``ws_lora_matmul_group``
    and every other fused sum without a bias through ``ws_lora_matmul``: o's and down's
    forwards, and each input gradient (MLP: dh, then dX over gate and up; q, k and v's dX in
    one call; o's); the block matches PEFT in float64."""
    calls = []
    real = _ws_gemm.ws_lora_matmul

    def counting(*args, **kwargs):
        calls.append((kwargs["w_kn"], len(kwargs.get("more", ()))))
        return real(*args, **kwargs)

    monkeypatch.setattr(linear, "ws_lora_matmul", counting)
    real_gated, real_group = _ws_gated.ws_gated_lora_matmul, _ws_gemm.ws_lora_matmul_group
    monkeypatch.setattr(
        mlp, "ws_gated_lora_matmul", lambda *a: calls.append("gated") or real_gated(*a)
    )
    monkeypatch.setattr(
        plain, "ws_lora_matmul_group", lambda *a: calls.append("group") or real_group(*a)
    )
    model = make_model(torch.bfloat16, r=8, inter=128, autocast_adapter_dtype=False).cuda()
    ref = copy.deepcopy(model).double()
    X = torch.randn(4, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    errs = compare(block, model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_())
    assert max(errs.values()) < 2e-2, errs
    expected = {
        "mlp": ["gated", (False, 0), (True, 0), (True, 1)],
        "qkv": ["group", (True, 2)],
        "o": [(False, 0), (True, 0)],
    }
    assert calls == expected[block], calls


def test_off_by_default(monkeypatch):
    """Off unless switched on; on, CPU tensors still take the other routes."""
    assert not _ws_gemm._enabled
    (pair,), XA, U = _operands(256, 256, (64,), 16, True, torch.bfloat16, device="cpu")
    X, W, B = pair[0], pair[1].t().contiguous(), U.t().contiguous()  # q/k/v-like operands
    for _ in range(2):  # off, then on with CPU tensors
        assert not _ws_gemm.fusable_ws(*pair, XA, U, True)
        assert not _ws_gemm.fusable_ws_group(X, [W, W], [XA, XA], [B, B])
        monkeypatch.setattr(_ws_gemm, "_enabled", True)
        monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 0)


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("switched_on")
def test_fusable_rejects(monkeypatch):
    """Three more pairs, a bias, a float32 operand, a ``U`` of another width or layout, a
    rank not a multiple of 8, switched off, a small output (at the shipped
    ``_MIN_OUTPUT``): each turned down."""
    (pair,), XA, U = _operands(256, 256, (64,), 16, True, torch.bfloat16)
    X, W = pair
    assert _ws_gemm.fusable_ws(X, W, XA, U, True)
    assert not _ws_gemm.fusable_ws(X, W, XA, U, True, [pair] * 3)
    assert not _ws_gemm.fusable_ws(X, W, XA, U, True, bias=torch.zeros_like(U[0]))
    assert not _ws_gemm.fusable_ws(X, W, XA, U.float(), True)
    assert not _ws_gemm.fusable_ws(X, W, XA, U[:, :128], True)
    assert not _ws_gemm.fusable_ws(X, W, XA, U.t().contiguous(), True)
    assert not _ws_gemm.fusable_ws(X, W, XA[:, :12], U[:12], True)
    _ws_gemm.set_ws_gemm(False)
    assert not _ws_gemm.fusable_ws(X, W, XA, U, True)
    _ws_gemm.set_ws_gemm(True)
    monkeypatch.setattr(_gemm, "_MIN_OUTPUT", 1 << 25)
    assert not _ws_gemm.fusable_ws(X, W, XA, U, True)
