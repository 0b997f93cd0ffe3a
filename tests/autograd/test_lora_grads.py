"""``_lora_grads.lora_grads`` (adapters' ``dB`` and ``dXA`` in one pass over their ``dY``).

The GPU tests need an NVIDIA sm_90+ GPU (``-m gpu`` on the device); the interpreter tests run
the same kernels on float32 CPU tensors under ``TRITON_INTERPRET=1``
(``tests/test_interpreter.py``), where CI can check the unit walk, the tails and the sums.
"""

import copy

import pytest
import torch

import lk_autograd._linear as linear
import lk_autograd._plain as plain
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
    (dB,), dXA = _lora_grads.lora_grads([dY], [B], [XA], [0.5])
    ref_dB, ref_dXA = _reference(dY, B, XA, 0.5)
    assert dB.shape == (N, r) and dXA.shape == (M, r)
    assert rel_err(dB, ref_dB) < 1e-5 and rel_err(dXA, ref_dXA) < 1e-5


def _group(M, Ns, r, device, dtype):
    """Gradients and ``B``'s of several widths, and their ``XA``'s as column slices of one
    ``X [A_1; A_2; ...]^T``, as ``_plain`` makes them."""
    dYs = [torch.randn(M, N, device=device, dtype=dtype) for N in Ns]
    Bs = [torch.randn(N, r, device=device, dtype=dtype) for N in Ns]
    XAs = torch.randn(M, r * len(Ns), device=device, dtype=dtype).split(r, dim=1)
    return dYs, Bs, list(XAs)


def _check_group(dYs, Bs, XAs, ss, bound, baseline=None):
    """Each projection's ``dB`` and its slice of ``dXA`` against float64, within ``bound`` (or
    no worse than ``baseline``'s, cuBLAS's, when given)."""
    dBs, dXA = _lora_grads.lora_grads(dYs, Bs, XAs, ss)
    r = XAs[0].shape[1]
    assert dXA.shape == (dYs[0].shape[0], r * len(dYs))
    for j, (dY, B, XA, s) in enumerate(zip(dYs, Bs, XAs, ss, strict=True)):
        ref_dB, ref_dXA = _reference(dY, B, XA, s)
        got = {"dB": (dBs[j], ref_dB), "dXA": (dXA[:, j * r : (j + 1) * r], ref_dXA)}
        for name, (value, ref) in got.items():
            limit = bound if baseline is None else 1.25 * rel_err(baseline[name](j), ref) + 1e-4
            assert rel_err(value, ref) <= limit, (j, name, rel_err(value, ref), limit)
    return dBs, dXA


@interpreter
@pytest.mark.parametrize(
    "M, Ns, r, programs",
    [(130, (1100, 300, 40), 16, 3), (70, (600, 520), 8, 3), (300, (100, 60), 16, 8)],
    ids=["qkv-like", "pair-rank8", "pair-row-chunks"],
)
def test_group_in_the_interpreter(M, Ns, r, programs, monkeypatch):
    """Two or three projections in one launch: column blocks numbered across them, each
    projection's own scale, tails in every width; with eight programs, row chunks too."""
    monkeypatch.setattr(_lora_grads, "persistent_programs", lambda t: programs)
    dYs, Bs, XAs = _group(M, Ns, r, "cpu", torch.float32)
    _check_group(dYs, Bs, XAs, [0.5, 2.0, -1.0][: len(Ns)], 1e-5)


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
    assert _lora_grads.fusable_grads([dY], [B], [XA])
    ref_dB, ref_dXA = _reference(dY, B, XA, 2.0)
    (dB,), dXA = _lora_grads.lora_grads([dY], [B], [XA], [2.0])
    cublas_dB, cublas_dXA = linear.scaled_mm(dY.t(), XA, 2.0), linear.scaled_mm(dY, B, 2.0)
    assert rel_err(dB, ref_dB) <= 1.25 * rel_err(cublas_dB, ref_dB) + 1e-4
    assert rel_err(dXA, ref_dXA) <= 1.25 * rel_err(cublas_dXA, ref_dXA) + 1e-4
    (again_dB,), again_dXA = _lora_grads.lora_grads([dY], [B], [XA], [2.0])
    assert torch.equal(again_dB, dB) and torch.equal(again_dXA, dXA)


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("r", [8, 16])
def test_group_against_float64(r):
    """q, k and v's shapes in one launch: each projection no worse than cuBLAS against float64,
    and the same bits on a second call."""
    dYs, Bs, XAs = _group(8192, (4096, 1024, 1024), r, "cuda", torch.bfloat16)
    ss = [2.0, 0.5, 1.0]
    assert _lora_grads.fusable_grads(dYs, Bs, XAs)
    cublas = {"dB": lambda j: linear.scaled_mm(dYs[j].t(), XAs[j], ss[j]),
              "dXA": lambda j: linear.scaled_mm(dYs[j], Bs[j], ss[j])}  # fmt: skip
    dBs, dXA = _check_group(dYs, Bs, XAs, ss, None, cublas)
    again_dBs, again_dXA = _lora_grads.lora_grads(dYs, Bs, XAs, ss)
    assert torch.equal(again_dXA, dXA) and all(map(torch.equal, again_dBs, dBs))


@pytest.mark.gpu
@sm90
def test_fusable_grads_rejects(monkeypatch):
    """What the kernel cannot take, or would not pay for, goes to cuBLAS."""
    dY, B, XA = _case(64, 8192, 16, False, "cuda", torch.bfloat16)

    def fusable(dY, B, XA):
        return _lora_grads.fusable_grads([dY], [B], [XA])

    monkeypatch.setattr(_lora_grads, "_MIN_GRADIENT", 64 * 8192 + 1)
    assert not fusable(dY, B, XA)  # too small to pay for the extra launch
    assert _lora_grads.fusable_grads([dY, dY], [B, B], [XA, XA])  # large enough together
    monkeypatch.setattr(_lora_grads, "_MIN_GRADIENT", 0)
    assert fusable(dY, B, XA)
    assert not fusable(dY.float(), B.float(), XA.float())  # 32-bit
    assert not fusable(dY, B.half(), XA)  # mixed dtypes
    assert not fusable(dY, B[:, :12], XA[:, :12])  # rank not a multiple of 8
    r32 = torch.randn(64, 32, device="cuda", dtype=dY.dtype)
    assert not fusable(dY, B.repeat(1, 2), r32)  # rank above _MAX_RANK
    assert not fusable(dY[:, 1:8001], B[1:8001], XA)  # not 16-byte aligned
    assert not _lora_grads.fusable_grads([dY] * 4, [B] * 4, [XA] * 4)  # above _MAX_GROUP
    assert not _lora_grads.fusable_grads([dY, dY], [B, B[:, :8]], [XA, XA[:, :8]])  # two ranks
    assert not _lora_grads.fusable_grads([dY, dY[:32]], [B, B], [XA, XA[:32]])  # two lengths


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("fp32_adapters", [False, True], ids=["bf16-adapters", "fp32-adapters"])
@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
@pytest.mark.usefixtures("_gradients_fuse")
def test_functions_take_it(block, fp32_adapters, monkeypatch):
    """Every adapter's ``dB`` and ``dXA`` go through ``lora_grads`` (q, k and v in one call),
    with bf16 adapters and PEFT's fp32 ones narrowed, and the block still matches PEFT in
    float64."""
    calls = []
    real = _lora_grads.lora_grads
    for module in (linear, plain):
        monkeypatch.setattr(module, "lora_grads", lambda *a: calls.append(len(a[0])) or real(*a))
    model = make_model(torch.bfloat16, r=8, autocast_adapter_dtype=fp32_adapters).cuda()
    ref = copy.deepcopy(model).double()
    X = torch.randn(4, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    errs = compare(block, model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_())
    assert max(errs.values()) < 2e-2, errs
    assert calls == {"mlp": [1, 1, 1], "qkv": [3], "o": [1]}[block], calls
