"""An adapter's ``dB`` and ``dXA`` in one pass over its output gradient (Hopper and later).

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

Measured on an H200 (``tools/bench_lora_grads.py``, BENCHMARKS.md eighth session; CUDA-graph
replay, both kernels, rank 16): ``[8192, 14336]`` 85 us against cuBLAS's 129, ``[8192, 4096]``
36 against 51, but ``[8192, 1024]`` 27 against 22, and the two launches cost ~50 us more host
time than cuBLAS's; gradients below ``_MIN_GRADIENT`` stay on cuBLAS, the same bound as
``_gemm``'s outputs. At rank 64 the ``[BN, r]`` float32 accumulator costs more than the pass
saves (142 against 119 us in the sweep), so ranks above 16 stay on cuBLAS too.
``fusable_grads`` says when it applies.
"""

from __future__ import annotations

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
_MIN_GRADIENT = 1 << 25  # M x N: at 8192 tokens, q, o, down, gate and up; not k or v
# BM x BN tiles of dY, three stages, eight warps: the fastest of six configurations at
# [8192, 14336] and of six at [8192, 4096] (each with as many units as SMs; BN = 256 or 128,
# four warps, two programs per SM and four stages were slower).
_TILE = (64, 512)
_REDUCE_BLOCK = 1024


def fusable_grads(dY: Tensor, B: Tensor, XA: Tensor) -> bool:
    """True when ``lora_grads`` can and should run: where ``_gemm`` runs (enabled, eager, NVIDIA
    sm_90+), one 16-bit dtype, a rank that is a multiple of 8 up to ``_MAX_RANK``, TMA-aligned
    2-D layouts, a gradient of at least ``_MIN_GRADIENT`` elements."""
    r = XA.shape[1]
    if r % 8 or not 0 < r <= _MAX_RANK or dY.numel() < _MIN_GRADIENT or not _runs_here(dY):
        return False
    if dY.dtype not in _DTYPES:
        return False
    return all(t.dtype == dY.dtype and _aligned(t) for t in (dY, B, XA))


def lora_grads(dY: Tensor, B: Tensor, XA: Tensor, s: float) -> tuple[Tensor, Tensor]:
    """``(dB, dXA) = (s dY^T XA, s dY B)`` in one pass over ``dY`` (see the module docstring).
    The caller checks ``fusable_grads`` first."""
    M, N = dY.shape
    r = XA.shape[1]
    R = max(16, r)  # tl.dot's minimum; TMA zero-fills the columns past r
    BM, BN = _TILE
    n_sm = persistent_programs(dY)
    col_blocks = triton.cdiv(N, BN)
    chunks = max(1, min(n_sm // col_blocks, triton.cdiv(M, BM)))
    rows = triton.cdiv(triton.cdiv(M, chunks), BM) * BM
    chunks = triton.cdiv(M, rows)
    part_dXA = torch.empty(col_blocks, M, R, device=dY.device, dtype=torch.float32)
    part_dB = torch.empty(chunks, N, R, device=dY.device, dtype=torch.float32)
    units = col_blocks * chunks
    programs = min(units, n_sm)
    args = [TensorDescriptor.from_tensor(dY, [BM, BN]),
            TensorDescriptor.from_tensor(B, [BN, R]),
            TensorDescriptor.from_tensor(XA, [BM, R]),
            part_dXA, part_dB, M, N, rows, col_blocks, units, programs]  # fmt: skip
    options = {"BM": BM, "BN": BN, "R": R, "num_stages": 3, "num_warps": 8}
    launch(_partials_kernel, programs, args, options, dY.device)
    dXA = torch.empty(M, r, device=dY.device, dtype=dY.dtype)
    dB = torch.empty(N, r, device=dY.device, dtype=dY.dtype)
    blocks = triton.cdiv(M * r, _REDUCE_BLOCK) + triton.cdiv(N * r, _REDUCE_BLOCK)
    args = [part_dXA, part_dB, dXA, dB, M, N, r, col_blocks, chunks, s]
    launch(_sum_kernel, blocks, args, {"R": R, "BLOCK": _REDUCE_BLOCK}, dY.device)
    return dB, dXA


if triton is not None:

    @triton.jit
    def _partials_kernel(
        dy_desc, b_desc, xa_desc, part_dxa_ptr, part_db_ptr, M, N, ROWS, COL_BLOCKS, UNITS,
        PROGRAMS, BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
    ):  # fmt: skip
        """Per unit (column block ``c``, row chunk ``k``): ``part_dXA[c, rows] = dY[rows, cols]
        B[cols]`` one row tile at a time, and ``part_dB[k, cols] = dY[rows, cols]^T XA[rows]``
        summed over the chunk's row tiles."""
        tile_rows = tl.arange(0, BM)
        rank = tl.arange(0, R)
        for unit in tl.range(tl.program_id(0), UNITS, PROGRAMS):
            c = unit % COL_BLOCKS
            k = unit // COL_BLOCKS
            on = c * BN
            b = b_desc.load([on, 0])
            db = tl.zeros((BN, R), dtype=tl.float32)
            for i in tl.range(0, ROWS // BM):
                om = k * ROWS + i * BM
                dy = dy_desc.load([om, on])
                dxa = tl.dot(dy, b)
                rows = om + tile_rows
                offsets = (c * M + rows)[:, None] * R + rank[None, :]
                tl.store(part_dxa_ptr + offsets, dxa, mask=rows[:, None] < M)
                db = tl.dot(dy.T, xa_desc.load([om, 0]), db)
            cols = on + tl.arange(0, BN)
            offsets = (k * N + cols)[:, None] * R + rank[None, :]
            tl.store(part_db_ptr + offsets, db, mask=cols[:, None] < N)

    @triton.jit
    def _sum_partials(part_ptr, out_ptr, block, rows, r, parts, s, R: tl.constexpr,
                      BLOCK: tl.constexpr):  # fmt: skip
        """``out[i] = s * sum_p part[p, i]`` over a block of ``out``'s ``rows x r`` elements."""
        idx = block * BLOCK + tl.arange(0, BLOCK)
        mask = idx < rows * r
        src = (idx // r) * R + idx % r
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for p in range(parts):
            acc += tl.load(part_ptr + p * rows * R + src, mask=mask, other=0.0)
        tl.store(out_ptr + idx, (acc * s).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _sum_kernel(
        part_dxa_ptr, part_db_ptr, dxa_ptr, db_ptr, M, N, r, COL_BLOCKS, CHUNKS, s,
        R: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Both sums in one launch: ``dXA``'s blocks first, then ``dB``'s."""
        dxa_blocks = tl.cdiv(M * r, BLOCK)
        block = tl.program_id(0)
        if block < dxa_blocks:
            _sum_partials(part_dxa_ptr, dxa_ptr, block, M, r, COL_BLOCKS, s, R, BLOCK)
        else:
            _sum_partials(part_db_ptr, db_ptr, block - dxa_blocks, N, r, CHUNKS, s, R, BLOCK)
