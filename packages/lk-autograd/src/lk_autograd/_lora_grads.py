"""Adapters' ``dB`` and ``dXA`` in one pass over their output gradients (Hopper and later).

With the output gradient ``dY`` ``[M, N]``, ``B`` ``[N, r]`` and the saved ``XA = X A^T``
``[M, r]``::

    dXA = s dY B       [M, r]   (a sum over N)
    dB  = s dY^T XA    [N, r]   (a sum over M)

cuBLAS computes these as two GEMMs, and each reads all of ``dY``: at the MLP's
``[8192, 14336]`` gradients ``de`` and ``dg`` that is 235 MB read twice per gradient, near
bandwidth, for a few MFLOP. Here one kernel loads each ``[BM, BN]`` tile of ``dY`` once and
feeds it to both ``tl.dot``\\ s: ``tile B[cols]`` and ``tile^T XA[rows]``.

Each sum runs over an axis the other splits, so the grid splits both: ``dY`` is cut into
column blocks of ``BN`` and row chunks, one (column block, row chunk) unit per program. A unit
writes float32 partials: its rows' ``dXA`` over its columns, and its columns' ``dB`` over its
rows. A second kernel sums the partials in a fixed order, scales by ``s`` and rounds once to
``dY``'s dtype, so the result is deterministic, like cuBLAS's. The partials are about a
tenth of ``dY``'s bytes at the MLP's shapes (``BN`` = 512, four row chunks).

Up to three projections of one input (q, k and v) run in one launch: their column blocks are
numbered one after the other and dealt to the same programs, and the sums come out as one
``dXA = [dXA_q, dXA_k, dXA_v]`` ``[M, 3r]``, the layout ``dX`` and ``dA`` read. Alone, k's and v's
``[8192, 1024]`` gradients have two column blocks each, too few units to beat cuBLAS; with q's
eight they make twelve.

Measured on an H200 (``tools/bench_lora_grads.py``, BENCHMARKS.md eighth session; CUDA-graph
replay, both kernels, rank 16): ``[8192, 14336]`` 85 us against cuBLAS's 129, ``[8192, 4096]``
36 against 51, but ``[8192, 1024]`` 27 against 22, and the two launches cost ~50 us more host
time than cuBLAS's; gradients below ``_MIN_GRADIENT`` (a group's together) stay on cuBLAS, the
same bound as ``_gemm``'s outputs. At rank 64 the ``[BN, r]`` float32 accumulator costs more
than the pass saves (142 against 119 us in the sweep), so ranks above 16 stay on cuBLAS too.
``fusable_grads`` says when it applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lk_triton._launch import launch

from ._gemm import _DTYPES, _aligned, _runs_here, persistent_programs

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton is a Linux-only dependency: cuBLAS runs everything there
    triton = None

_MAX_RANK = 16
_MAX_GROUP = 3  # projections of one launch: q, k and v
_MIN_GRADIENT = 1 << 25  # M x N: at 8192 tokens, q, o, down, gate and up; not k or v
# BM x BN tiles of dY, three stages, eight warps: the fastest of six configurations at
# [8192, 14336] and of six at [8192, 4096] (each with as many units as SMs; BN = 256 or 128,
# four warps, two programs per SM and four stages were slower).
_TILE = (64, 512)
_REDUCE_BLOCK = 1024


def fusable_grads(dYs: Sequence[Tensor], Bs: Sequence[Tensor], XAs: Sequence[Tensor]) -> bool:
    """True when ``lora_grads`` can and should run on these projections (one to
    ``_MAX_GROUP``): where ``_gemm`` runs (enabled, eager, NVIDIA sm_90+), one 16-bit dtype, one
    rank that is a multiple of 8 up to ``_MAX_RANK``, TMA-aligned 2-D layouts, gradients of the
    same length and at least ``_MIN_GRADIENT`` elements together."""
    r = XAs[0].shape[1]
    if not 0 < len(dYs) <= _MAX_GROUP or r % 8 or not 0 < r <= _MAX_RANK:
        return False
    if any(XA.shape[1] != r for XA in XAs) or any(dY.shape[0] != dYs[0].shape[0] for dY in dYs):
        return False
    if sum(dY.numel() for dY in dYs) < _MIN_GRADIENT or not _runs_here(dYs[0]):
        return False
    dtype = dYs[0].dtype
    tensors = (*dYs, *Bs, *XAs)
    return dtype in _DTYPES and all(t.dtype == dtype and _aligned(t) for t in tensors)


def lora_grads(
    dYs: Sequence[Tensor], Bs: Sequence[Tensor], XAs: Sequence[Tensor], ss: Sequence[float]
) -> tuple[list[Tensor], Tensor]:
    """``([s_j dY_j^T XA_j], [s_1 dY_1 B_1, s_2 dY_2 B_2, ...])``: each projection's ``dB`` and
    their ``dXA`` side by side, in one pass over every ``dY_j`` (see the module docstring). The
    caller checks ``fusable_grads`` first."""
    M, r = dYs[0].shape[0], XAs[0].shape[1]
    Ns = [dY.shape[1] for dY in dYs]
    R = max(16, r)  # tl.dot's minimum; masked loads zero the columns past r
    BM, BN = _TILE
    n_sm = persistent_programs(dYs[0])
    col_blocks = [triton.cdiv(N, BN) for N in Ns]
    chunks = max(1, min(n_sm // sum(col_blocks), triton.cdiv(M, BM)))
    rows = triton.cdiv(triton.cdiv(M, chunks), BM) * BM
    chunks = triton.cdiv(M, rows)
    device = dYs[0].device
    part_dXA = torch.empty(sum(col_blocks), M, R, device=device, dtype=torch.float32)
    part_dB = torch.empty(chunks, sum(Ns), R, device=device, dtype=torch.float32)
    units = sum(col_blocks) * chunks
    programs = min(units, n_sm)
    tma = len(dYs) == 1
    projections: list = []
    for dY, B, XA, N, blocks in zip(dYs, Bs, XAs, Ns, col_blocks, strict=True):
        if tma:  # descriptors, which know their strides
            projections += (TensorDescriptor.from_tensor(dY, [BM, BN]), 0,
                            TensorDescriptor.from_tensor(B, [BN, R]), 0,
                            TensorDescriptor.from_tensor(XA, [BM, R]), 0, N, blocks)  # fmt: skip
        else:
            projections += (dY, dY.stride(0), B, B.stride(0), XA, XA.stride(0), N, blocks)
    absent = (*projections[:6], 0, 0)  # the first projection's tensors, with no columns
    projections += absent * (_MAX_GROUP - len(dYs))
    args = [*projections, part_dXA, part_dB, M, r, rows, units, programs]
    options = {"BM": BM, "BN": BN, "R": R, "TMA": tma, "num_stages": 3, "num_warps": 8}
    launch(_partials_kernel, programs, args, options, device)
    dXA = torch.empty(M, len(dYs) * r, device=device, dtype=dYs[0].dtype)
    dB = torch.empty(sum(Ns), r, device=device, dtype=dYs[0].dtype)
    scales = [*ss, 0.0, 0.0][:_MAX_GROUP]
    blocks = triton.cdiv(dXA.numel(), _REDUCE_BLOCK) + triton.cdiv(dB.numel(), _REDUCE_BLOCK)
    bounds = [*col_blocks, 0, 0][:_MAX_GROUP] + [*Ns, 0][:2]
    args = [part_dXA, part_dB, dXA, dB, M, r, len(dYs), *bounds, sum(Ns), chunks, *scales]
    launch(_sum_kernel, blocks, args, {"R": R, "BLOCK": _REDUCE_BLOCK}, device)
    return list(dB.split(Ns)), dXA


if triton is not None:

    @triton.jit
    def _block(src, stride, i0, n_i, k0, n_k, BI: tl.constexpr, BK: tl.constexpr,
               TMA: tl.constexpr):  # fmt: skip
        """The ``[BI, BK]`` block of ``src`` at ``(i0, k0)``, zero past ``n_i`` and ``n_k``:
        through a TMA descriptor (which zero-fills past the edges), or pointers and masks."""
        if TMA:
            block = src.load([i0, k0])
        else:
            i, k = i0 + tl.arange(0, BI), k0 + tl.arange(0, BK)
            mask = (i < n_i)[:, None] & (k < n_k)[None, :]
            block = tl.load(src + i.to(tl.int64)[:, None] * stride + k[None, :], mask=mask,
                            other=0.0)  # fmt: skip
        return block

    @triton.jit
    def _unit(
        dy_src, dy_stride, b_src, b_stride, xa_src, xa_stride, part_dxa_ptr, part_db_ptr, c, k,
        M, N, r, ROWS, c_first, n_first, N_ALL, BM: tl.constexpr, BN: tl.constexpr,
        R: tl.constexpr, TMA: tl.constexpr,
    ):  # fmt: skip
        """One unit (column block ``c`` of a projection whose blocks are numbered from
        ``c_first`` and whose columns from ``n_first``, row chunk ``k``): ``part_dXA[c_first + c,
        rows] = dY[rows, cols] B[cols]`` one row tile at a time, and ``part_dB[k, n_first +
        cols] = dY[rows, cols]^T XA[rows]`` summed over the chunk's row tiles."""
        rank = tl.arange(0, R)
        on = c * BN
        cols = on + tl.arange(0, BN)
        b = _block(b_src, b_stride, on, N, 0, r, BN, R, TMA)
        db = tl.zeros((BN, R), dtype=tl.float32)
        for i in tl.range(0, ROWS // BM):
            om = k * ROWS + i * BM
            rows = om + tl.arange(0, BM)
            dy = _block(dy_src, dy_stride, om, M, on, N, BM, BN, TMA)
            offsets = ((c_first + c) * M + rows)[:, None] * R + rank[None, :]
            tl.store(part_dxa_ptr + offsets, tl.dot(dy, b), mask=(rows < M)[:, None])
            xa = _block(xa_src, xa_stride, om, M, 0, r, BM, R, TMA)
            db = tl.dot(tl.trans(dy), xa, db)
        offsets = (k * N_ALL + n_first + cols)[:, None] * R + rank[None, :]
        tl.store(part_db_ptr + offsets, db, mask=(cols < N)[:, None])

    @triton.jit
    def _partials_kernel(
        dy0, dy0_stride, b0, b0_stride, xa0, xa0_stride, N0, C0,
        dy1, dy1_stride, b1, b1_stride, xa1, xa1_stride, N1, C1,
        dy2, dy2_stride, b2, b2_stride, xa2, xa2_stride, N2, C2,
        part_dxa_ptr, part_db_ptr, M, r, ROWS, UNITS, PROGRAMS,
        BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr, TMA: tl.constexpr,
    ):  # fmt: skip
        """Units ``(column block, row chunk)`` over the projections' column blocks numbered
        one after the other (``C_j`` blocks of ``N_j`` columns each), dealt to the programs in
        turn. One projection loads through TMA descriptors (``TMA``: ``dy0``, ``b0`` and ``xa0``
        are descriptors, the strides unused). A group loads through pointers, which each unit
        picks for its projection, so that one loop (and one set of pipeline buffers) serves
        all three; an absent projection has no blocks. (A loop per projection's descriptors
        needs a set of buffers each: 405 KB of shared memory for three, where 227 KB fit.)"""
        for unit in tl.range(tl.program_id(0), UNITS, PROGRAMS):
            if TMA:
                _unit(dy0, 0, b0, 0, xa0, 0, part_dxa_ptr, part_db_ptr, unit % C0,
                      unit // C0, M, N0, r, ROWS, 0, 0, N0, BM, BN, R, True)  # fmt: skip
            else:
                _grouped_unit(
                    dy0, dy0_stride, b0, b0_stride, xa0, xa0_stride, N0, C0,
                    dy1, dy1_stride, b1, b1_stride, xa1, xa1_stride, N1, C1,
                    dy2, dy2_stride, b2, b2_stride, xa2, xa2_stride, N2, C2,
                    part_dxa_ptr, part_db_ptr, unit, M, r, ROWS, BM, BN, R,
                )  # fmt: skip

    @triton.jit
    def _grouped_unit(
        dy0, dy0_stride, b0, b0_stride, xa0, xa0_stride, N0, C0,
        dy1, dy1_stride, b1, b1_stride, xa1, xa1_stride, N1, C1,
        dy2, dy2_stride, b2, b2_stride, xa2, xa2_stride, N2, C2,
        part_dxa_ptr, part_db_ptr, unit, M, r, ROWS,
        BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
    ):  # fmt: skip
        """Unit ``unit`` of a group, on its projection's pointers."""
        blocks = C0 + C1 + C2
        c = unit % blocks
        j = tl.where(c < C0, 0, tl.where(c < C0 + C1, 1, 2))
        c_first = _pick(j, 0, C0, C0 + C1)
        _unit(
            _pick(j, dy0, dy1, dy2), _pick(j, dy0_stride, dy1_stride, dy2_stride),
            _pick(j, b0, b1, b2), _pick(j, b0_stride, b1_stride, b2_stride),
            _pick(j, xa0, xa1, xa2), _pick(j, xa0_stride, xa1_stride, xa2_stride),
            part_dxa_ptr, part_db_ptr, c - c_first, unit // blocks, M, _pick(j, N0, N1, N2),
            r, ROWS, c_first, _pick(j, 0, N0, N0 + N1), N0 + N1 + N2, BM, BN, R, False,
        )  # fmt: skip

    @triton.jit
    def _pick(j, first, second, third):
        """Per element, ``first``, ``second`` or ``third`` as ``j`` is 0, 1 or 2."""
        return tl.where(j == 0, first, tl.where(j == 1, second, third))

    @triton.jit
    def _sum_kernel(
        part_dxa_ptr, part_db_ptr, dxa_ptr, db_ptr, M, r, GROUP, C0, C1, C2, N0, N1, N_ALL,
        CHUNKS, s0, s1, s2, R: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Both sums in one launch, each in a fixed order: ``dXA[m, j r + i] = s_j sum_c
        part_dXA[c, m, i]`` over projection ``j``'s column blocks, then ``dB[n, i] = s_j sum_k
        part_dB[k, n, i]`` over the row chunks, ``j`` being the projection of row ``n``."""
        width = GROUP * r
        dxa_blocks = tl.cdiv(M * width, BLOCK)
        block = tl.program_id(0)
        if block < dxa_blocks:
            idx = block * BLOCK + tl.arange(0, BLOCK)
            mask = idx < M * width
            m, j, i = idx // width, (idx % width) // r, idx % r
            first, count = _pick(j, 0, C0, C0 + C1), _pick(j, C0, C1, C2)
            acc = tl.zeros((BLOCK,), dtype=tl.float32)
            for c in range(0, max(C0, max(C1, C2))):
                src = ((first + c) * M + m) * R + i
                acc += tl.load(part_dxa_ptr + src, mask=mask & (c < count), other=0.0)
            out = (acc * _pick(j, s0, s1, s2)).to(dxa_ptr.dtype.element_ty)
            tl.store(dxa_ptr + idx, out, mask=mask)
        else:
            idx = (block - dxa_blocks) * BLOCK + tl.arange(0, BLOCK)
            mask = idx < N_ALL * r
            n, i = idx // r, idx % r
            acc = tl.zeros((BLOCK,), dtype=tl.float32)
            for k in range(CHUNKS):
                acc += tl.load(part_db_ptr + (k * N_ALL + n) * R + i, mask=mask, other=0.0)
            j = tl.where(n < N0, 0, tl.where(n < N0 + N1, 1, 2))
            out = (acc * _pick(j, s0, s1, s2)).to(db_ptr.dtype.element_ty)
            tl.store(db_ptr + idx, out, mask=mask)
