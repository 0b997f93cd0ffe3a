"""Triton kernels that fuse the LoRA MLP's rank-r terms into its gated activation.

Rows ``i`` of ``N``, columns ``j`` of ``I``; ``e0 = X W_g^T``, ``g0 = X W_u^T`` (cuBLAS), the
LoRA inputs ``P_g = X A_g^T``, ``P_u = X A_u^T`` ``[N, r]``, every product rounded to the
activation dtype where PEFT rounds it::

    forward:   e = e0 + s_g P_g B_g^T     g = g0 + s_u P_u B_u^T     h = act(e) * g
               hA = h A_d^T  [N, r]        (down's LoRA input, accumulated over all columns)
    backward:  dh = dh0 + Q_d A_d          (dh0 = dY W_d, Q_d = s_d dY B_d  [N, r])
               de = dh * g * act'(e)      dg = dh * act(e)     h written over dh0
               dP_g = de B_g   dP_u = dg B_u  [N, r]  (unscaled; accumulated over all columns)

``e`` and ``g`` are recomputed in the backward from ``e0``, ``g0`` (which the forward saves in
their place) by the same tiles, so the forward writes only ``h``. One program owns ``BM`` full
rows and walks the columns, so the ``[N, r]`` sums need no atomics. Compared with cuBLAS for
the rank-r products plus the elementwise kernels, this saves six passes over ``[N, I]``
tensors per forward+backward (the two LoRA terms of e and g, the read of h for ``hA``, the
LoRA term of dh, and the reads of de and dg for ``dP``).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    from lk_triton.language import ACTIVATION_ID, activation_and_derivative
except ImportError:  # triton is a Linux-only dependency: LoRA_MLP's general path runs instead
    triton = None

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_RANK = 64  # beyond this the [BM, r] accumulators crowd the registers
_BM, _BN, _WARPS = 64, 64, 4

if triton is not None:

    @triton.jit
    def _rank_r(P, B, s, R, cols, cmask, kcols, kmask, IEEE: tl.constexpr):
        """``s * P @ B[cols]^T`` for a ``[BM, BR]`` ``P`` and ``B`` ``[I, R]``: ``[BM, BN]``."""
        b = tl.load(B + cols[:, None] * R + kcols[None, :], cmask[:, None] & kmask[None, :], 0.0)
        if IEEE:
            return s * tl.dot(P, tl.trans(b), input_precision="ieee")
        return s * tl.dot(P, tl.trans(b))

    @triton.jit
    def _load_rows(ptr, rows, stride, rmask, kcols, kmask):
        return tl.load(ptr + rows[:, None] * stride + kcols[None, :],
                       rmask[:, None] & kmask[None, :], 0.0)  # fmt: skip

    @triton.jit
    def _recompute_eg(e0, g0, off, m2, Pg, Bg, sg, Pu, Bu, su, R, cols, cmask, kcols, kmask,
                      IEEE: tl.constexpr):  # fmt: skip
        """``e`` and ``g`` of one tile, rounded to the storage dtype, returned in float32."""
        dtype = e0.dtype.element_ty
        e = tl.load(e0 + off, m2, 0.0).to(tl.float32)
        e += _rank_r(Pg, Bg, sg, R, cols, cmask, kcols, kmask, IEEE)
        g = tl.load(g0 + off, m2, 0.0).to(tl.float32)
        g += _rank_r(Pu, Bu, su, R, cols, cmask, kcols, kmask, IEEE)
        return e.to(dtype).to(tl.float32), g.to(dtype).to(tl.float32)

    @triton.jit
    def _dot_acc(acc, a, b, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee")
        return tl.dot(a, b, acc)

    @triton.jit
    def _forward_kernel(
        e0, g0, h, hA, Pg, Pu, Bg, Bu, Ad, sg, su, N, I, R,
        stride_pg, stride_pu,
        ACTIVATION: tl.constexpr, IEEE: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
        rmask = rows < N
        kcols = tl.arange(0, BR)
        kmask = kcols < R
        P_g = _load_rows(Pg, rows, stride_pg, rmask, kcols, kmask)
        P_u = _load_rows(Pu, rows, stride_pu, rmask, kcols, kmask)
        acc = tl.zeros([BM, BR], dtype=tl.float32)
        for n0 in range(0, I, BN):
            cols = n0 + tl.arange(0, BN)
            cmask = cols < I
            m2 = rmask[:, None] & cmask[None, :]
            off = rows[:, None] * I + cols[None, :]
            e, g = _recompute_eg(e0, g0, off, m2, P_g, Bg, sg, P_u, Bu, su, R, cols, cmask,
                                 kcols, kmask, IEEE)  # fmt: skip
            a, _ = activation_and_derivative(e, ACTIVATION)
            hv = (a * g).to(h.dtype.element_ty)
            tl.store(h + off, hv, m2)
            ad = tl.load(Ad + kcols[None, :] * I + cols[:, None],
                         cmask[:, None] & kmask[None, :], 0.0)  # fmt: skip  # A_d^T [BN, BR]
            acc = _dot_acc(acc, hv, ad, IEEE)
        out = rows[:, None] * R + kcols[None, :]
        tl.store(hA + out, acc.to(hA.dtype.element_ty), rmask[:, None] & kmask[None, :])

    @triton.jit
    def _backward_kernel(
        dh0, e0, g0, de, dg, dPg, dPu, Pg, Pu, Bg, Bu, Qd, Ad, sg, su, N, I, R,
        stride_pg, stride_pu,
        ACTIVATION: tl.constexpr, IEEE: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
        rmask = rows < N
        kcols = tl.arange(0, BR)
        kmask = kcols < R
        P_g = _load_rows(Pg, rows, stride_pg, rmask, kcols, kmask)
        P_u = _load_rows(Pu, rows, stride_pu, rmask, kcols, kmask)
        Q_d = _load_rows(Qd, rows, R, rmask, kcols, kmask)
        acc_g = tl.zeros([BM, BR], dtype=tl.float32)
        acc_u = tl.zeros([BM, BR], dtype=tl.float32)
        dtype = e0.dtype.element_ty
        for n0 in range(0, I, BN):
            cols = n0 + tl.arange(0, BN)
            cmask = cols < I
            m2 = rmask[:, None] & cmask[None, :]
            off = rows[:, None] * I + cols[None, :]
            ad = tl.load(Ad + kcols[:, None] * I + cols[None, :],
                         kmask[:, None] & cmask[None, :], 0.0)  # fmt: skip  # A_d [BR, BN]
            dh = _dot_acc(tl.load(dh0 + off, m2, 0.0).to(tl.float32), Q_d, ad, IEEE)
            dh = dh.to(dtype).to(tl.float32)
            e, g = _recompute_eg(e0, g0, off, m2, P_g, Bg, sg, P_u, Bu, su, R, cols, cmask,
                                 kcols, kmask, IEEE)  # fmt: skip
            a, da = activation_and_derivative(e, ACTIVATION)
            tl.store(dh0 + off, (a * g).to(dtype), m2)  # h, over dh0
            dev = (dh * g * da).to(dtype)
            dgv = (dh * a).to(dtype)
            tl.store(de + off, dev, m2)  # may alias e0: this tile was read above
            tl.store(dg + off, dgv, m2)
            bg = tl.load(Bg + cols[:, None] * R + kcols[None, :],
                         cmask[:, None] & kmask[None, :], 0.0)  # fmt: skip
            bu = tl.load(Bu + cols[:, None] * R + kcols[None, :],
                         cmask[:, None] & kmask[None, :], 0.0)  # fmt: skip
            acc_g = _dot_acc(acc_g, dev, bg, IEEE)
            acc_u = _dot_acc(acc_u, dgv, bu, IEEE)
        out = rows[:, None] * R + kcols[None, :]
        omask = rmask[:, None] & kmask[None, :]
        tl.store(dPg + out, acc_g.to(dPg.dtype.element_ty), omask)
        tl.store(dPu + out, acc_u.to(dPu.dtype.element_ty), omask)


def _meta(e0: Tensor, rank: int, activation: str) -> dict:
    return {
        "ACTIVATION": ACTIVATION_ID[activation],
        "IEEE": e0.dtype == torch.float32,
        "BM": _BM,
        "BN": _BN,
        "BR": max(16, triton.next_power_of_2(rank)),
        "num_warps": _WARPS,
    }


def fused_forward(
    e0: Tensor, g0: Tensor, Pg: Tensor, Pu: Tensor, Bg: Tensor, Bu: Tensor, Ad: Tensor,
    sg: float, su: float, activation: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(h, hA)`` for lk_triton's ``activation`` (``"silu"``, ``"gelu"``, ``"gelu_tanh"``);
    ``e0``, ``g0`` contiguous ``[N, I]``, ``P`` ``[N, r]`` with unit column
    stride, ``B`` ``[I, r]`` and ``Ad`` ``[r, I]`` contiguous, all one dtype."""
    N, I = e0.shape
    R = Bg.shape[1]
    h = torch.empty_like(e0)
    hA = torch.empty(N, R, dtype=e0.dtype, device=e0.device)
    if N:
        _forward_kernel[(triton.cdiv(N, _BM),)](
            e0, g0, h, hA, Pg, Pu, Bg, Bu, Ad, sg, su, N, I, R, Pg.stride(0), Pu.stride(0),
            **_meta(e0, R, activation),
        )  # fmt: skip
    return h, hA


def fused_backward(
    dh0: Tensor, e0: Tensor, g0: Tensor, Pg: Tensor, Pu: Tensor, Bg: Tensor, Bu: Tensor,
    Qd: Tensor, Ad: Tensor, sg: float, su: float, activation: str, overwrite: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(h, de, dg, dPg, dPu)``. ``h`` is written over ``dh0``; with ``overwrite`` ``de`` and
    ``dg`` are written over ``e0`` and ``g0`` (no later backward may read them)."""
    N, I = e0.shape
    R = Bg.shape[1]
    de, dg = (e0, g0) if overwrite else (torch.empty_like(e0), torch.empty_like(g0))
    dPg = torch.empty(N, R, dtype=e0.dtype, device=e0.device)
    dPu = torch.empty_like(dPg)
    if N:
        _backward_kernel[(triton.cdiv(N, _BM),)](
            dh0, e0, g0, de, dg, dPg, dPu, Pg, Pu, Bg, Bu, Qd, Ad, sg, su, N, I, R,
            Pg.stride(0), Pu.stride(0), **_meta(e0, R, activation),
        )  # fmt: skip
    return dh0, de, dg, dPg, dPu
