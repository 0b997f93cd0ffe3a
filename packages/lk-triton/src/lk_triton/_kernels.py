"""Elementwise Triton kernels for gated activations, ``h = act(gate) * up``.

The kernels see the tensors as flat, contiguous arrays: the caller guarantees that. Math
runs in float32 (float64 for float64 tensors) and is rounded once on store.
"""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._env import INTERPRET

SILU: tl.constexpr = tl.constexpr(0)
GELU_ERF: tl.constexpr = tl.constexpr(1)
GELU_TANH: tl.constexpr = tl.constexpr(2)

_SQRT1_2: tl.constexpr = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
_INV_SQRT_2PI: tl.constexpr = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)
_2_SQRT_2_OVER_PI: tl.constexpr = tl.constexpr(1.5957691216057308)  # 2 sqrt(2 / pi)
_TANH_CUBIC: tl.constexpr = tl.constexpr(0.044715)
# ``_sigmoid``'s fast float32 path: on NVIDIA GPUs; not in the interpreter (no libdevice), not
# on ROCm (whose approximations were not compared).
_FAST_SIGMOID: tl.constexpr = tl.constexpr(torch.version.hip is None and not INTERPRET)


@triton.jit
def _sigmoid(x):
    """``1 / (1 + e^-x)``. With ``_FAST_SIGMOID``, in float32: libdevice's ``fast_expf`` and
    ``fast_dividef``, PTX ``ex2.approx.ftz`` and ``div.approx.ftz`` (one hardware instruction
    each, MUFU.EX2 and MUFU.RCP). ``tl.sigmoid`` lowers to ``ex2.approx`` and ``div.full``:
    the same two, on the same operands, plus fix-ups that keep denormals: ~6 instructions more
    per element (``tools/sass_loops.py``: SiLU's ``down_backward`` epilogue loop, 931 against
    734 per subtile). The bits are the same wherever ``1 + e^-x < 2^126`` (``x > -87.3``):
    there ``e^-x`` is a normal number or a denormal that ``1 +`` absorbs, and
    ``div.full(1, y)`` is ``rcp(y)``; below, both are under ``2^-125`` (the fast one may be
    0). On an H100 (twenty-third session) ``tests/triton/test_kernels.py`` found the same bits
    over every bfloat16 value and 2^24 random floats, and the fewer instructions saved 14-17 us
    of ``down_backward``'s 1.64 ms."""
    if _FAST_SIGMOID and x.dtype == tl.float32:
        s = libdevice.fast_dividef(1.0, 1.0 + libdevice.fast_expf(-x))
    else:
        s = tl.sigmoid(x)
    return s


@triton.jit
def activation_and_derivative(g, ACTIVATION: tl.constexpr):
    """Return ``(act(g), act'(g))`` for the selected activation (``SILU``, ``GELU_ERF`` or
    ``GELU_TANH``), in ``g``'s float dtype. ``lk_autograd._gemm`` calls it in its gate/up GEMM's
    epilogue, so that the fused and the separate kernels compute the same values."""
    if ACTIVATION == SILU:
        s = _sigmoid(g)
        a = g * s
        da = s * (1.0 + g * (1.0 - s))
    elif ACTIVATION == GELU_ERF:
        cdf = 0.5 * (1.0 + tl.math.erf(g * _SQRT1_2))
        a = g * cdf
        da = cdf + g * tl.exp(-0.5 * g * g) * _INV_SQRT_2PI
    else:
        # With u = sqrt(2 / pi) (g + c g^3) and s = sigmoid(2 u) = (1 + tanh u) / 2:
        # act = g s, and act' = s + g (1 - tanh^2 u) u' / 2 = s + 2 g s (1 - s) u'.
        g2 = g * g
        s = _sigmoid(g * (1.0 + _TANH_CUBIC * g2) * _2_SQRT_2_OVER_PI)
        a = g * s
        da = s + g * s * (1.0 - s) * (1.0 + 3.0 * _TANH_CUBIC * g2) * _2_SQRT_2_OVER_PI
    return a, da


@triton.jit
def _offsets(BLOCK: tl.constexpr, INT64: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def gated_forward_kernel(
    gate_ptr,
    up_ptr,
    h_ptr,
    n_elements,
    ACTIVATION: tl.constexpr,
    FP64: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``h = act(gate) * up``."""
    offsets = _offsets(BLOCK, INT64)
    mask = offsets < n_elements
    compute = tl.float64 if FP64 else tl.float32
    g = tl.load(gate_ptr + offsets, mask=mask).to(compute)
    u = tl.load(up_ptr + offsets, mask=mask).to(compute)
    a, _ = activation_and_derivative(g, ACTIVATION)
    tl.store(h_ptr + offsets, (a * u).to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gated_backward_kernel(
    dh_ptr,
    gate_ptr,
    up_ptr,
    h_out_ptr,
    dgate_out_ptr,
    dup_out_ptr,
    n_elements,
    ACTIVATION: tl.constexpr,
    STORE_H: tl.constexpr,
    FP64: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``h = act(g) * u``, ``dgate = dh * u * act'(g)``, ``dup = dh * act(g)``.

    Each element is read before it is written by the same program, so the output
    pointers may alias the inputs (``h_out = dh``, ``dgate_out = gate``, ``dup_out = up``).
    """
    offsets = _offsets(BLOCK, INT64)
    mask = offsets < n_elements
    compute = tl.float64 if FP64 else tl.float32
    dh = tl.load(dh_ptr + offsets, mask=mask).to(compute)
    g = tl.load(gate_ptr + offsets, mask=mask).to(compute)
    u = tl.load(up_ptr + offsets, mask=mask).to(compute)
    a, da = activation_and_derivative(g, ACTIVATION)
    if STORE_H:
        tl.store(h_out_ptr + offsets, (a * u).to(h_out_ptr.dtype.element_ty), mask=mask)
    tl.store(dgate_out_ptr + offsets, (dh * u * da).to(dgate_out_ptr.dtype.element_ty), mask=mask)
    tl.store(dup_out_ptr + offsets, (dh * a).to(dup_out_ptr.dtype.element_ty), mask=mask)
