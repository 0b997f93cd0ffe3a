"""lk_triton's raw kernels against a float64 torch reference, on every dispatch path."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lk_triton
from tests.helpers import DEVICES, TOLERANCE, rel_err

try:  # the raw kernels; triton is a Linux-only dependency
    import triton
    import triton.language as tl

    from lk_triton import _kernels
except ImportError:
    triton = None

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# (name, forward, backward, float64 reference of act(g)); one entry per activation.
ACTIVATIONS = {
    "silu": (lk_triton.swiglu_forward, lk_triton.swiglu_backward, F.silu),
    "gelu": (
        lambda g, u: lk_triton.geglu_forward(g, u, "none"),
        lambda dh, g, u, **kw: lk_triton.geglu_backward(dh, g, u, "none", **kw),
        lambda g: F.gelu(g, approximate="none"),
    ),
    "gelu_tanh": (
        lambda g, u: lk_triton.geglu_forward(g, u, "tanh"),
        lambda dh, g, u, **kw: lk_triton.geglu_backward(dh, g, u, "tanh", **kw),
        lambda g: F.gelu(g, approximate="tanh"),
    ),
}


def _inputs(shape, dtype, device, seed=None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    make = lambda: (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype)  # noqa: E731
    return make().to(device), make().to(device), make().to(device)


def _reference(act, dh, gate, up):
    """float64 autograd reference: ``(h, dgate, dup)``."""
    g = gate.detach().double().requires_grad_()
    u = up.detach().double().requires_grad_()
    h = act(g) * u
    h.backward(dh.double())
    return h.detach(), g.grad, u.grad


def _check(kind, shape, dtype, device, seed=None):
    forward, backward, act = ACTIVATIONS[kind]
    dh, gate, up = _inputs(shape, dtype, device, seed)
    ref_h, ref_dgate, ref_dup = _reference(act, dh, gate, up)
    tol = TOLERANCE[dtype]

    h = forward(gate, up)
    assert h.shape == gate.shape and h.dtype == dtype and h.device == gate.device
    assert rel_err(h, ref_h) < tol

    h2, dgate, dup = backward(dh, gate, up, inplace=False)
    for name, out, ref in [("h", h2, ref_h), ("dgate", dgate, ref_dgate), ("dup", dup, ref_dup)]:
        assert out.dtype == dtype, name
        assert rel_err(out, ref) < tol, f"{kind} {dtype} {name}: {rel_err(out, ref):.2e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(ACTIVATIONS))
def test_matches_float64_reference(kind, dtype, device):
    _check(kind, (3, 5, 1000), dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=15, deadline=None)
@given(
    shape=st.lists(st.integers(1, 67), min_size=1, max_size=3),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(list(ACTIVATIONS)),
    seed=st.integers(0, 2**31 - 1),
)
def test_odd_shapes(device, shape, dtype, kind, seed):
    _check(kind, tuple(shape), dtype, device, seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(ACTIVATIONS))
def test_backward_inplace_overwrites_inputs(kind, device):
    _, backward, _ = ACTIVATIONS[kind]
    dh, gate, up = _inputs((4, 33), torch.float32, device)
    expected = backward(dh, gate, up, inplace=False)
    buffers = (dh.clone(), gate.clone(), up.clone())
    returned = backward(*buffers, inplace=True)
    for buf, out, exp in zip(buffers, returned, expected, strict=True):
        assert out is buf  # h in dh, dgate in gate, dup in up
        torch.testing.assert_close(buf, exp, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_not_inplace_leaves_inputs(device):
    dh, gate, up = _inputs((4, 33), torch.bfloat16, device)
    copies = (dh.clone(), gate.clone(), up.clone())
    lk_triton.swiglu_backward(dh, gate, up, inplace=False)
    for t, c in zip((dh, gate, up), copies, strict=True):
        assert torch.equal(t, c)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [True, False])
def test_non_contiguous_inputs(device, inplace):
    dh, gate, up = (t.transpose(0, 1) for t in _inputs((16, 24), torch.float32, device))
    assert not gate.is_contiguous()
    ref_h, ref_dgate, ref_dup = _reference(F.silu, dh, gate, up)
    assert rel_err(lk_triton.swiglu_forward(gate, up), ref_h) < 1e-5
    buffers = (dh.clone(), gate.clone(), up.clone())
    outs = lk_triton.swiglu_backward(*buffers, inplace=inplace)
    for out, ref in zip(outs, (ref_h, ref_dgate, ref_dup), strict=True):
        assert out.shape == ref.shape
        assert rel_err(out, ref) < 1e-5
    if inplace:
        for buf, out in zip(buffers, outs, strict=True):
            assert out is buf


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    gate = torch.empty(0, 8, device=device)
    assert lk_triton.swiglu_forward(gate, gate.clone()).shape == (0, 8)
    assert all(t.shape == (0, 8) for t in lk_triton.swiglu_backward(gate, gate, gate))


@pytest.mark.parametrize(
    ("gate", "up", "message"),
    [
        (torch.randn(2, 3), torch.randn(3, 2), "same shape"),
        (torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64), "same dtype"),
        (torch.randn(2, 3), torch.randn(2, 3, device="meta"), "same device"),
        (torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int32), "dtype"),
    ],
)
def test_bad_input_raises_value_error(gate, up, message):
    with pytest.raises(ValueError, match=message):
        lk_triton.swiglu_forward(gate, up)
    with pytest.raises(ValueError, match=message):
        lk_triton.geglu_backward(gate, gate, up)


def test_bad_approximate_raises():
    with pytest.raises(ValueError, match="approximate"):
        lk_triton.geglu_forward(torch.randn(2), torch.randn(2), "erf")


def test_dispatch_path():
    """CPU tensors take the Triton interpreter exactly when TRITON_INTERPRET=1 was set."""
    from lk_triton import _gated

    assert lk_triton.uses_triton(torch.empty(1)) == _gated.INTERPRET
    if torch.cuda.is_available():
        assert lk_triton.uses_triton(torch.empty(1, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40e9,
    reason="needs a CUDA device with 40 GB",
)
def test_more_than_2_31_elements():
    """Offsets past 2^31 need 64-bit index arithmetic; check the far end of the tensor."""
    n = 2**31 + 4099
    gate = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    up = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    h = lk_triton.swiglu_forward(gate, up)
    tail = slice(n - 2**20, n)
    ref = F.silu(gate[tail].double()) * up[tail].double()
    assert rel_err(h[tail], ref) < 2e-2
    del h
    dh = torch.randn_like(gate)
    ref_h, ref_dgate, ref_dup = _reference(F.silu, dh[tail], gate[tail], up[tail])
    h, dgate, dup = lk_triton.swiglu_backward(dh, gate, up)
    for out, ref in [(h, ref_h), (dgate, ref_dgate), (dup, ref_dup)]:
        assert rel_err(out[tail], ref) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(
    triton is None or not torch.cuda.is_available() or torch.version.hip is not None,
    reason="the fast sigmoid is NVIDIA's (CUDA only)",
)
def test_fast_sigmoid_same_bits():
    """``_sigmoid``'s fast float32 path gives ``tl.sigmoid``'s bits wherever ``x > -87.33``
    (``1 + e^-x < 2^126``), on every finite bfloat16 value and 2^24 random floats in
    [-100, 100]; below, both are below ``2^-125``."""
    assert _kernels._FAST_SIGMOID
    bf16 = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    x = torch.cat([bf16.float(), torch.empty(2**24).uniform_(-100, 100)]).cuda()
    x = x[torch.isfinite(x)]
    fast, ref = torch.empty_like(x), torch.empty_like(x)
    _both_sigmoids[(triton.cdiv(x.numel(), 1024),)](x, fast, ref, x.numel(), BLOCK=1024)
    same = x > -87.33
    assert torch.equal(fast[same].view(torch.int32), ref[same].view(torch.int32))
    assert fast[~same].max() < 2**-125 and ref[~same].max() < 2**-125


if triton is not None:

    @triton.jit
    def _both_sigmoids(x_ptr, fast_ptr, ref_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        x = tl.load(x_ptr + offs, live)
        tl.store(fast_ptr + offs, _kernels._sigmoid(x), live)
        tl.store(ref_ptr + offs, tl.sigmoid(x), live)
