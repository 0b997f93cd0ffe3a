"""``_gated_grads.gated_lora_grads``: the gated activation's backward with gate's and up's
``dB`` and ``dXA`` and down's ``dA`` in one pass, and ``LoRA_MLP`` taking it.

The interpreter tests run the kernel on float32 CPU tensors under ``TRITON_INTERPRET=1``
(``tests/test_interpreter.py``); the GPU tests (``-m gpu``) need an NVIDIA sm_90+ GPU, where
``LoRA_MLP`` takes the kernel.
"""

import copy

import pytest
import torch

import lk_autograd._mlp as mlp
from lk_autograd import _gated_grads
from lk_triton import _gated, _reference
from tests.helpers import fresh_seed, rel_err

from .models import MLP, compare, make_model, peft_mlp
from .test_lora_grads import interpreter, sm90

KINDS = ("silu", "gelu", "gelu_tanh")


@pytest.fixture
def _gradients_fuse(monkeypatch):
    """The tests' gradients are below ``_MIN_GRADIENT``; fuse them anyway."""
    monkeypatch.setattr(_gated_grads, "_MIN_GRADIENT", 0)


def _case(M, N, r, device, dtype, has_da):
    """``dh``, ``e``, ``g``, gate's and up's ``B``, their ``XA`` as column slices of one ``X [A_g;
    A_u]^T`` (as ``_mlp`` saves them) and down's ``dXA`` (or None)."""
    dh, e, g = (torch.randn(M, N, device=device, dtype=dtype) for _ in range(3))
    Bs = [torch.randn(N, r, device=device, dtype=dtype) for _ in range(2)]
    XAs = list(torch.randn(M, 2 * r, device=device, dtype=dtype).split(r, dim=1))
    dXA_down = torch.randn(M, r, device=device, dtype=dtype) if has_da else None
    return dh, e, g, Bs, XAs, dXA_down


def _sums(de, dg, h, Bs, XAs, ss, dXA_down):
    """The rank-r sums in float64 from given ``de``, ``dg`` and ``h``: ``dB_g``, ``dB_u``,
    ``dXA``, ``dA_d``."""
    de, dg, h = de.double(), dg.double(), h.double()
    (B_g, B_u), (XA_g, XA_u) = [B.double() for B in Bs], [XA.double() for XA in XAs]
    dXA = torch.cat([ss[0] * de @ B_g, ss[1] * dg @ B_u], dim=1)
    dA = None if dXA_down is None else dXA_down.double().t() @ h
    return {"dB_g": ss[0] * de.t() @ XA_g, "dB_u": ss[1] * dg.t() @ XA_u, "dXA": dXA, "dA": dA}


def _run(dh, e, g, Bs, XAs, ss, dXA_down, kind, inplace):
    de, dg, (dB_g, dB_u), dXA, dA = _gated_grads.gated_lora_grads(
        dh, e, g, Bs, XAs, ss, dXA_down, kind, inplace
    )
    return de, dg, {"dB_g": dB_g, "dB_u": dB_u, "dXA": dXA, "dA": dA}


@interpreter
@pytest.mark.parametrize(
    "M, N, r, kind, has_da, inplace, programs",
    [(130, 700, 8, "silu", True, True, 3), (300, 260, 16, "gelu", False, False, 8),
     (70, 1100, 16, "gelu_tanh", True, False, 3)],
    ids=["tails-rank8-inplace", "row-chunks-no-dA", "column-blocks-tanh"],
)  # fmt: skip
def test_in_the_interpreter(M, N, r, kind, has_da, inplace, programs, monkeypatch):
    """Row and column tails, several column blocks and row chunks, a rank below 16, each
    activation, with and without down's ``dA``, in place or not, against float64."""
    monkeypatch.setattr(_gated_grads, "persistent_programs", lambda t: programs)
    torch.manual_seed(fresh_seed())
    dh, e, g, Bs, XAs, dXA_down = _case(M, N, r, "cpu", torch.float32, has_da)
    h, ref_de, ref_dg = _reference.gated_backward(dh.double(), e.double(), g.double(), kind)
    ref = _sums(ref_de, ref_dg, h, Bs, XAs, [0.5, -2.0], dXA_down)
    e_in, g_in = e.clone(), g.clone()
    de, dg, got = _run(dh, e_in, g_in, Bs, XAs, [0.5, -2.0], dXA_down, kind, inplace)
    assert (de is e_in and dg is g_in) == inplace
    if not inplace:
        assert torch.equal(e_in, e) and torch.equal(g_in, g)
    assert rel_err(de, ref_de) < 1e-5 and rel_err(dg, ref_dg) < 1e-5
    assert got["dXA"].shape == (M, 2 * r) and got["dB_g"].shape == (N, r)
    assert (got["dA"] is None) == (not has_da)
    for name, value in got.items():
        if value is not None:
            assert value.shape == ref[name].shape, name
            assert rel_err(value, ref[name]) < 1e-5, (name, rel_err(value, ref[name]))


@pytest.mark.parametrize(
    "M, BM, blocks, programs",
    [(8192, 64, 56, 132), (70, 64, 3, 3), (300, 32, 2, 8), (8192, 64, 200, 132)],
)
def test_row_chunks_cover_the_rows(M, BM, blocks, programs):
    """Whole ``BM`` tiles, every row in exactly one chunk, no empty chunk, at most
    ``_MAX_CHUNKS``; 56 column blocks on 132 programs: seven chunks, 392 units in three turns."""
    chunks, rows = _gated_grads._row_chunks(M, BM, blocks, programs)
    assert rows % BM == 0 and (chunks - 1) * rows < M <= chunks * rows
    assert 1 <= chunks <= _gated_grads._MAX_CHUNKS
    if (M, blocks, programs) == (8192, 56, 132):
        assert (chunks, rows) == (7, 1216)


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "M, N, r, has_da", [(4096, 14336, 16, True), (1000, 4104, 8, False)], ids=["mlp", "tails"]
)
@pytest.mark.usefixtures("_gradients_fuse")
def test_against_float64_and_the_separate_kernels(M, N, r, has_da, kind):
    """bf16: ``de`` and ``dg`` bit for bit the activation kernel's; each sum no worse than
    cuBLAS's against float64 (from those ``de``, ``dg`` and ``h``); the same bits on a second
    call."""
    torch.manual_seed(fresh_seed())
    dh, e, g, Bs, XAs, dXA_down = _case(M, N, r, "cuda", torch.bfloat16, has_da)
    assert _gated_grads.fusable_gated_grads(dh, e, g, Bs, XAs, dXA_down)
    h, sep_de, sep_dg = _gated.gated_backward(dh, e, g, kind, inplace=False)
    ss = [2.0, 0.5]
    ref = _sums(sep_de, sep_dg, h, Bs, XAs, ss, dXA_down)
    cublas = {"dB_g": ss[0] * (sep_de.t() @ XAs[0]), "dB_u": ss[1] * (sep_dg.t() @ XAs[1]),
              "dXA": torch.cat([ss[0] * (sep_de @ Bs[0]), ss[1] * (sep_dg @ Bs[1])], dim=1),
              "dA": None if dXA_down is None else dXA_down.t() @ h}  # fmt: skip
    de, dg, got = _run(dh, e.clone(), g.clone(), Bs, XAs, ss, dXA_down, kind, True)
    assert torch.equal(de, sep_de) and torch.equal(dg, sep_dg)
    for name, value in got.items():
        if value is None:
            assert ref[name] is None
            continue
        limit = 1.25 * rel_err(cublas[name], ref[name]) + 1e-4
        assert rel_err(value, ref[name]) <= limit, (name, rel_err(value, ref[name]), limit)
    _, _, again = _run(dh, e.clone(), g.clone(), Bs, XAs, ss, dXA_down, kind, True)
    assert all(torch.equal(again[n], v) for n, v in got.items() if v is not None)


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("activation", ["swiglu", "geglu_tanh"])
@pytest.mark.parametrize("fp32_adapters", [False, True], ids=["bf16-adapters", "fp32-adapters"])
@pytest.mark.parametrize("variant", ["plain", "dora"])
@pytest.mark.usefixtures("_gradients_fuse")
def test_mlp_takes_it(variant, fp32_adapters, activation, monkeypatch):
    """Plain adapters (bf16, or PEFT's fp32 ones narrowed) take the one-pass backward, DoRA
    the separate kernels; either way the block matches PEFT in float64, and a second
    backward over a retained graph gives the same gradients (``e`` and ``g`` kept)."""
    calls = []
    real = _gated_grads.gated_lora_grads
    monkeypatch.setattr(mlp, "gated_lora_grads", lambda *a: calls.append(1) or real(*a))
    config = {"use_dora": True} if variant == "dora" else {}
    model = make_model(torch.bfloat16, r=8, autocast_adapter_dtype=fp32_adapters, **config)
    model = model.cuda()
    ref = copy.deepcopy(model).double()
    X = torch.randn(4, 40, 16, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def ours(m, X):
        return mlp.apply_lora_mlp(m, X, activation)

    def peft(m, X):
        return peft_mlp(m, X, activation)

    errs = compare("mlp", model, X, ref_model=ref, ref_X=X.detach().double().requires_grad_(),
                   ours_fn=ours, peft_fn=peft)  # fmt: skip
    assert max(errs.values()) < 2e-2, errs
    assert calls == ([1] if variant == "plain" else []), calls
    torch.manual_seed(1)
    Y = ours(model, X)
    dY = torch.randn_like(Y)
    params = [p for n, p in model.named_parameters() if p.requires_grad and n.split(".")[0] in MLP]
    first = torch.autograd.grad(Y, [X, *params], dY, retain_graph=True)
    second = torch.autograd.grad(Y, [X, *params], dY)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
