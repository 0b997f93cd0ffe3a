"""Probe: does warp specialization hide the SwiGLU activation backward under the ``dh`` GEMM?

LLaMA MLP backward (SiLU): ``dh = dY @ W_d`` ([M, D] @ [D, I] -> [M, I], K = D, W_d row-major as
``nn.Linear`` stores it), then with the saved gate pre-activation ``e`` and up output ``g`` and
``s = sigmoid(e)`` (fp32)::

    de = dh * g * s * (1 + e * (1 - s))
    dg = dh * e * s

Same structure as ``gluon_ws_gemm.py`` (persistent, grouped tile order, one CTA per SM; Gluon API
of Triton 3.6.0), except that B is fed as [K, N] row-major (TMA block [BK, BN], no permute) and the
epilogue partition has 4 warps (one warpgroup):

- default partition, 8 warps: wgmma consumer. Per tile it drains the accumulator, waits
  ``c_empty``, writes the bf16 ``dh`` tile into the single 128x256 shared buffer, syncs its
  warps, fences and arrives on ``c_ready``.
- worker 0, 1 warp: TMA producer of the A/B ring (``STAGES`` deep).
- worker 1, 2 warps: the epilogue (it shares one warpgroup with the producer warp, so both
  get the same register count).
  ``FUSE=False``: TMA-store ``dh`` (the GEMM-only baseline, same kernel).
  ``FUSE=True``: walks the shared tile in [SUB_M, SUB_N] subtiles (sliced views of the buffer);
  per subtile it loads ``e``/``g`` from global with plain pointer loads (the next subtile's loads
  are issued before the current one is computed, and the first subtile's before ``c_ready`` is
  waited on, since they do not depend on ``dh``), computes ``de``/``dg`` in fp32 and stores them
  with ``gl.store``; after the last subtile has been read from shared memory it syncs its 4 warps
  and arrives on ``c_empty``. ``dh`` is never written to global memory.

Why 2 epilogue warps, not 4: Triton 3.6 caps the whole kernel at ``.maxnreg`` = 65536 / threads
(rounded to 8) and ptxas allocates every partition under that cap, setmaxnreg notwithstanding.
8 + 1 + 4 warps pads to 16 warps = 128 registers, and ptxas then refuses the 128x256 wgmma
("Insufficient registers (128) ... register target of 154 or higher"). 8 + 1 + 2 warps stays at
12 warps = 168 registers (as the GEMM-only kernel had). Subtile 32x64 (32 elements per thread per
tensor); 64x64 spills ~7 KB under the 168 cap.

Shared memory is unchanged from the GEMM: 3 x 48 KB A/B stages + 64 KB C buffer = 208 KB.

Epilogue variants (``--epilogue``; ``dh_actgrad(epi=...)`` defaults to ``"tma"``):

- ``ptr``: the pointer loads/stores above (H100: 2.88 ms; not bound by its loads, see ``--diag``).
- ``tma``: e/g come in by TMA into a ``slots``-deep shared ring of [SUB_M, SUB_N] subtile pairs
  (one mbarrier per slot, ``expect`` + two loads), ``prefetch`` subtiles ahead, across the tile
  boundary (the next tile's first subtiles do not wait for ``c_ready``; none past the CTA's last
  tile). de/dg overwrite the slot's e/g, ``fence_async_shared`` + warp sync, and go out by TMA
  store; ``store_wait(2 * (slots - prefetch - 1))`` before a slot is refilled. Shared: 3 stages
  + 2 slots of 32x64 = 224.3 KB; 2 stages + 4 slots = 192.3 KB (VARIANTS lists what --bench runs).
- ``loop``: the ``ptr`` I/O, but the subtiles run in a runtime loop (both variants above unroll
  them: ~219 KB of code that two warps fetch once per tile; see BENCHMARKS.md, nineteenth
  session). ``--diag`` times the ``ptr`` epilogue with its loads and/or stores sent to L2.
- ``loop_da`` (``dh_actgrad_da``): ``loop`` plus down's LoRA ``dA = dXA^T h`` ([r, N], r = 16,
  ``dXA`` [M, r]), ``h = silu(e) g`` rounded to bf16 (as the forward stored it): per subtile
  ``dXA[rows]^T h`` by mma_v2 into one [r, 64] fp32 accumulator per column block, stored as
  the partial ``part[pid_m]`` ([M // 128, r, N]) that the host sums. Its baseline is the
  shipped ``lk_autograd`` path: cuBLAS ``dh`` + ``activation_backward_with_dA``.
- ``loop_h`` (``dh_actgrad_h``): ``loop`` that also stores ``h`` (bf16, [M, N]), then cuBLAS
  ``dA = dXA^T h``: the same outputs and baseline as ``loop_da``, with the MMA out of the epilogue.

Usage::

    python gluon_ws_dh_actgrad.py --compile   # CPU only: sm_90a compile, shared/regs/spills
    python gluon_ws_dh_actgrad.py --bench     # H100/H200: correctness vs fp64, then timing
    # one configuration only, e.g.:
    python gluon_ws_dh_actgrad.py --bench --epilogue tma --stages 3 --slots 4 --prefetch 2 \\
        --sub 16x64
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.runtime.jit import constexpr_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gluon_ws_gemm import _ptxas_info, _sm90_driver, _tile_mn

BLOCK_M, BLOCK_N, BLOCK_K = 128, 256, 64
STAGES = 3
GROUP_M = 8
NUM_WARPS = 8  # default (MMA) partition
EPI_WARPS = 2  # epilogue partition (see the docstring: why not 4)
LOAD_REGS, EPI_REGS = 168, 168  # the 1+2 worker warps share one warpgroup: equal regs
SUB_M, SUB_N = 32, 64  # epilogue subtile of the 128x256 dh tile
DA_RANK = 16  # loop_da: down's LoRA rank r


# ----------------------------------------------------------------------------------------------
# kernel
# ----------------------------------------------------------------------------------------------


@gluon.jit
def _load_partition(
    a_desc,
    b_desc,
    a_bufs,
    b_bufs,
    ready,
    empty,
    num_pid_m,
    num_pid_n,
    k_tiles,
    BM: gl.constexpr,
    BN: gl.constexpr,
    BK: gl.constexpr,
    NSTAGE: gl.constexpr,
    GROUP: gl.constexpr,
):
    num_tiles = num_pid_m * num_pid_n
    nbytes: gl.constexpr = a_desc.block_type.nbytes + b_desc.block_type.nbytes
    it = 0
    for tile_id in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m, pid_n = _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
        off_m = pid_m * BM
        off_n = pid_n * BN
        for kk in range(k_tiles):
            s = it % NSTAGE
            mbarrier.wait(empty.index(s), ((it // NSTAGE) & 1) ^ 1)
            mbarrier.expect(ready.index(s), nbytes)
            tma.async_copy_global_to_shared(
                a_desc, [off_m, kk * BK], ready.index(s), a_bufs.index(s)
            )
            # B = W_d [K, N] row-major: block [BK, BN] at (k, n).
            tma.async_copy_global_to_shared(
                b_desc, [kk * BK, off_n], ready.index(s), b_bufs.index(s)
            )
            it += 1


@gluon.jit
def _mma_partition(
    a_bufs,
    b_bufs,
    ready,
    empty,
    c_smem,
    c_ready,
    c_empty,
    num_pid_m,
    num_pid_n,
    k_tiles,
    BM: gl.constexpr,
    BN: gl.constexpr,
    NSTAGE: gl.constexpr,
    WARPS: gl.constexpr,
):
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, BN, 16]
    )
    num_tiles = num_pid_m * num_pid_n
    it = 0
    t = 0
    for _tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        acc = gl.zeros((BM, BN), dtype=gl.float32, layout=acc_layout)
        for kk in range(k_tiles):
            s = it % NSTAGE
            mbarrier.wait(ready.index(s), (it // NSTAGE) & 1)
            acc = warpgroup_mma(
                a_bufs.index(s), b_bufs.index(s), acc, use_acc=kk > 0, is_async=True
            )
            acc, _, _ = warpgroup_mma_wait(1, deps=(acc, a_bufs.index(s), b_bufs.index(s)))
            mbarrier.arrive(empty.index((it + NSTAGE - 1) % NSTAGE), count=1, pred=kk > 0)
            it += 1
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((it + NSTAGE - 1) % NSTAGE), count=1)

        mbarrier.wait(c_empty, (t & 1) ^ 1)
        c_smem.store(acc.to(c_smem.dtype))
        gl.thread_barrier()  # all 8 warps' writes before the single-thread arrive
        fence_async_shared()  # for the TMA store (FUSE=False)
        mbarrier.arrive(c_ready, count=1)
        t += 1  # noqa: SIM113 (Gluon loops have no enumerate)


@gluon.jit
def _epilogue_store_partition(
    c_desc,
    c_smem,
    c_ready,
    c_empty,
    num_pid_m,
    num_pid_n,
    BM: gl.constexpr,
    BN: gl.constexpr,
    GROUP: gl.constexpr,
):
    """FUSE=False: TMA-store the dh tile."""
    num_tiles = num_pid_m * num_pid_n
    t = 0
    for tile_id in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m, pid_n = _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
        mbarrier.wait(c_ready, t & 1)
        tma.async_copy_shared_to_global(c_desc, [pid_m * BM, pid_n * BN], c_smem)
        tma.store_wait(0)
        mbarrier.arrive(c_empty, count=1)
        t += 1  # noqa: SIM113 (Gluon loops have no enumerate)


# Integer arithmetic on static_range indices (// and % would make runtime tensors in the JIT).
@constexpr_function
def _sub_row(j, nsub, nsub_n, sub_m):
    """Row origin of subtile j (mod nsub) in a tile of nsub subtiles, nsub_n per row."""
    j, nsub, nsub_n, sub_m = (int(getattr(x, "value", x)) for x in (j, nsub, nsub_n, sub_m))
    return ((j % nsub) // nsub_n) * sub_m


@constexpr_function
def _sub_col(j, nsub, nsub_n, sub_n):
    j, nsub, nsub_n, sub_n = (int(getattr(x, "value", x)) for x in (j, nsub, nsub_n, sub_n))
    return ((j % nsub) % nsub_n) * sub_n


@constexpr_function
def _is_last(j, nsub):
    j, nsub = (int(getattr(x, "value", x)) for x in (j, nsub))
    return 1 if j + 1 == nsub else 0


@gluon.jit
def _tile_base(
    tile_id, num_pid_m, num_pid_n, N, BM: gl.constexpr, BN: gl.constexpr, GROUP: gl.constexpr
):
    pid_m, pid_n = _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
    return pid_m * BM * N + pid_n * BN


@gluon.jit
def _epilogue_actgrad_partition(
    e_ptr,
    g_ptr,
    de_ptr,
    dg_ptr,
    c_smem,
    c_ready,
    c_empty,
    num_pid_m,
    num_pid_n,
    N,
    BM: gl.constexpr,
    BN: gl.constexpr,
    SM_: gl.constexpr,
    SN: gl.constexpr,
    GROUP: gl.constexpr,
    EWARPS: gl.constexpr,
    DIAG_ON: gl.constexpr,
    diag,
):
    """FUSE=True: dh tile (shared) + e, g (global) -> de, dg (global), in [SM_, SN] subtiles.

    With ``DIAG_ON``, ``diag`` (runtime, 4 + bits, so that one binary serves every setting)
    switches: bit 0 loads every e/g subtile from the tensors' first subtile, bit 1 stores every
    de/dg subtile there (wrong results): the same instructions, but L2 hits instead of HBM
    traffic. The switch costs registers (~1 KB of spills), so ``DIAG_ON`` is off otherwise.
    """
    VEC: gl.constexpr = 8  # 16-byte bf16 vectors
    TPW_N: gl.constexpr = SN // VEC
    blk: gl.constexpr = gl.BlockedLayout([1, VEC], [32 // TPW_N, TPW_N], [EWARPS, 1], [1, 0])
    rows = gl.arange(0, SM_, layout=gl.SliceLayout(1, blk))
    cols = gl.arange(0, SN, layout=gl.SliceLayout(0, blk))
    offs = gl.expand_dims(rows, 1) * N + gl.expand_dims(cols, 0)  # int32: host asserts M*N < 2^31
    NSUB_N: gl.constexpr = BN // SN
    NSUB: gl.constexpr = (BM // SM_) * NSUB_N

    num_tiles = num_pid_m * num_pid_n
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    # e/g of a tile's first subtile do not depend on dh: they are loaded during the previous
    # subtile (the previous tile's last one), before c_ready is waited on.
    base = _tile_base(pid, num_pid_m, num_pid_n, N, BM, BN, GROUP)
    if DIAG_ON:
        ld_on = 1 - diag % 2  # 0: e/g offsets collapse to the first subtile
        st_on = 1 - (diag // 2) % 2  # 0: de/dg offsets likewise
    else:
        ld_on: gl.constexpr = 1
        st_on: gl.constexpr = 1
    e_cur = gl.load(e_ptr + ld_on * base + offs, eviction_policy="evict_first")
    g_cur = gl.load(g_ptr + ld_on * base + offs, eviction_policy="evict_first")
    t = 0
    for tile_id in range(pid, num_tiles, nprog):
        base = _tile_base(tile_id, num_pid_m, num_pid_n, N, BM, BN, GROUP)
        # The next tile of this CTA (past the end: this one again, a harmless extra load).
        nxt_tile = gl.minimum(tile_id + nprog, num_tiles - 1)
        nxt_base = _tile_base(nxt_tile, num_pid_m, num_pid_n, N, BM, BN, GROUP)
        mbarrier.wait(c_ready, t & 1)
        for j in gl.static_range(NSUB):
            # (Subtile origins stay inline: a plain assignment would turn them into runtime
            # tensors, and an annotated constexpr cannot be reassigned across static_range.)
            # Prefetch the next subtile's e/g (wrapping to the next tile's first subtile).
            nb = base + _is_last(j, NSUB) * (nxt_base - base)
            pn = nb + _sub_row(j + 1, NSUB, NSUB_N, SM_) * N + _sub_col(j + 1, NSUB, NSUB_N, SN)
            e_nxt = gl.load(e_ptr + ld_on * pn + offs, eviction_policy="evict_first")
            g_nxt = gl.load(g_ptr + ld_on * pn + offs, eviction_policy="evict_first")
            dh_view = c_smem.slice(_sub_row(j, NSUB, NSUB_N, SM_), SM_, dim=0)
            dh_view = dh_view.slice(_sub_col(j, NSUB, NSUB_N, SN), SN, dim=1)
            dh = dh_view.load(blk).to(gl.float32)
            if j + 1 == NSUB:
                gl.thread_barrier()  # all epilogue warps have read the whole tile
                mbarrier.arrive(c_empty, count=1)
            ef = e_cur.to(gl.float32)
            gf = g_cur.to(gl.float32)
            s = 1.0 / (1.0 + gl.exp(-ef))
            dhs = dh * s
            de = dhs * gf * (1.0 + ef * (1.0 - s))
            dg = dhs * ef
            o = base + _sub_row(j, NSUB, NSUB_N, SM_) * N + _sub_col(j, NSUB, NSUB_N, SN)
            gl.store(de_ptr + st_on * o + offs, de.to(de_ptr.dtype.element_ty))
            gl.store(dg_ptr + st_on * o + offs, dg.to(dg_ptr.dtype.element_ty))
            e_cur = e_nxt
            g_cur = g_nxt
        t += 1  # noqa: SIM113 (Gluon loops have no enumerate)


@gluon.jit
def _epilogue_actgrad_loop_partition(
    e_ptr,
    g_ptr,
    de_ptr,
    dg_ptr,
    dxa_ptr,
    part_ptr,
    c_smem,
    c_ready,
    c_empty,
    num_pid_m,
    num_pid_n,
    N,
    BM: gl.constexpr,
    BN: gl.constexpr,
    SN: gl.constexpr,
    GROUP: gl.constexpr,
    EWARPS: gl.constexpr,
    DA: gl.constexpr,
    R: gl.constexpr,
    HOUT: gl.constexpr,
):
    """FUSE=True as the ptr epilogue, but over a runtime loop of subtiles, not an unrolled one.

    The unrolled epilogue is ~219 KB of straight-line code per tile, run by two warps once per
    tile: the hypothesis is that it stalls on instruction fetch. Here the loop body is one
    subtile. Subtiles are [BM // 4, SN], indexed at run time: the [BM, BN] 128-byte-swizzled C
    buffer is laid out as BN // SN column blocks of [BM, SN] (each row 128 B), so it is
    reinterpreted as [NSUB, BM // 4, SN], column block major.

    With ``DA`` (``loop_da``), also down's LoRA ``dA = dXA^T h`` partials, ``h = silu(e) g``
    computed in fp32 and rounded to bf16 (as the forward stored it); ``dXA`` is [M, R] bf16,
    contiguous. Per subtile ``acc[R, SN] += dXA[rows]^T @ h[rows, cols]`` (mma_v2, fp32). The NR
    row subtiles of one column block are consecutive and share ``acc``; after the last of them
    it is stored to the fp32 partial ``part[pid_m, :, cols]`` ([M // BM, R, N]) and reset. The
    host sums over ``pid_m``. Register pressure (ptxas is sensitive to the order): ``dXA`` is
    loaded in the subtile that uses it (prefetching it with e/g spilled 176 B), and ``h`` and
    the product come before de/dg (after them: ~100-200 B of spills).

    With ``HOUT`` (``loop_h``), ``h`` (bf16, as above) is stored to ``part_ptr`` ([M, N]) instead.
    """
    SM_: gl.constexpr = BM // 4
    NR: gl.constexpr = BM // SM_  # row subtiles per column block
    NSUB: gl.constexpr = NR * (BN // SN)
    VEC: gl.constexpr = 8
    TPW_N: gl.constexpr = SN // VEC
    blk: gl.constexpr = gl.BlockedLayout([1, VEC], [32 // TPW_N, TPW_N], [EWARPS, 1], [1, 0])
    sub_layout: gl.constexpr = gl.NVMMASharedLayout(128, 16, rank=2)  # leading dim: batch
    subs = c_smem._reinterpret(c_smem.dtype, [NSUB, SM_, SN], sub_layout)
    rows = gl.arange(0, SM_, layout=gl.SliceLayout(1, blk))
    cols = gl.arange(0, SN, layout=gl.SliceLayout(0, blk))
    offs = gl.expand_dims(rows, 1) * N + gl.expand_dims(cols, 0)
    if DA:
        # dA's product: [R, SM_] @ [SM_, SN] -> [R, SN]; the EWARPS warps split the SN columns.
        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[2, 0], warps_per_cta=[1, EWARPS], instr_shape=[16, 8]
        )
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_op: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        # dXA^T [R, SM_] loaded with the rank (contiguous in memory) fastest, 16-byte vectors.
        TPW_R: gl.constexpr = R // VEC
        xt_blk: gl.constexpr = gl.BlockedLayout([VEC, 1], [TPW_R, 32 // TPW_R], [1, EWARPS], [0, 1])
        xk = gl.arange(0, R, layout=gl.SliceLayout(1, xt_blk))
        xm = gl.arange(0, SM_, layout=gl.SliceLayout(0, xt_blk))
        x_offs = gl.expand_dims(xm, 0) * R + gl.expand_dims(xk, 1)
        pk = gl.arange(0, R, layout=gl.SliceLayout(1, mma))
        pc = gl.arange(0, SN, layout=gl.SliceLayout(0, mma))
        p_offs = gl.expand_dims(pk, 1) * N + gl.expand_dims(pc, 0)
        acc = gl.zeros([R, SN], gl.float32, mma)

    num_tiles = num_pid_m * num_pid_n
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    base = _tile_base(pid, num_pid_m, num_pid_n, N, BM, BN, GROUP)
    e_cur = gl.load(e_ptr + base + offs, eviction_policy="evict_first")
    g_cur = gl.load(g_ptr + base + offs, eviction_policy="evict_first")
    t = 0
    for tile_id in range(pid, num_tiles, nprog):
        pid_m, pid_n = _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
        base = pid_m * BM * N + pid_n * BN
        nxt_tile = gl.minimum(tile_id + nprog, num_tiles - 1)
        nxt_base = _tile_base(nxt_tile, num_pid_m, num_pid_n, N, BM, BN, GROUP)
        mbarrier.wait(c_ready, t & 1)
        for j in range(NSUB):
            jn = (j + 1) % NSUB  # the next subtile, in this tile or (jn == 0) the next one
            nb = gl.where(jn == 0, nxt_base, base)
            pn = nb + (jn % NR) * SM_ * N + (jn // NR) * SN
            e_nxt = gl.load(e_ptr + pn + offs, eviction_policy="evict_first")
            g_nxt = gl.load(g_ptr + pn + offs, eviction_policy="evict_first")
            if DA:
                xt = gl.load(dxa_ptr + (pid_m * BM + (j % NR) * SM_) * R + x_offs)  # L2-resident
            dh = subs.index(j).load(blk).to(gl.float32)
            ef = e_cur.to(gl.float32)
            gf = g_cur.to(gl.float32)
            sg = 1.0 / (1.0 + gl.exp(-ef))
            if DA:
                h = (ef * sg * gf).to(dxa_ptr.dtype.element_ty)
                acc = mma_v2(gl.convert_layout(xt, a_op), gl.convert_layout(h, b_op), acc)
            dhs = dh * sg
            de = dhs * gf * (1.0 + ef * (1.0 - sg))
            dg = dhs * ef
            o = base + (j % NR) * SM_ * N + (j // NR) * SN
            gl.store(de_ptr + o + offs, de.to(de_ptr.dtype.element_ty))
            gl.store(dg_ptr + o + offs, dg.to(dg_ptr.dtype.element_ty))
            if HOUT:
                gl.store(part_ptr + o + offs, (ef * sg * gf).to(part_ptr.dtype.element_ty))
            if DA:  # noqa: SIM102 (compile-time; the inner test is a runtime one)
                if j % NR == NR - 1:  # the column block's last row subtile
                    po = pid_m * R * N + pid_n * BN + (j // NR) * SN
                    gl.store(part_ptr + po + p_offs, acc)
                    acc = gl.zeros([R, SN], gl.float32, mma)
            e_cur = e_nxt
            g_cur = g_nxt
        gl.thread_barrier()  # all epilogue warps have read the whole tile
        mbarrier.arrive(c_empty, count=1)
        t += 1  # noqa: SIM113 (Gluon loops have no enumerate)


@constexpr_function
def _wraps(j, pf, nsub):
    """1 if subtile j + pf lies in the next tile."""
    j, pf, nsub = (int(getattr(x, "value", x)) for x in (j, pf, nsub))
    return 1 if j + pf >= nsub else 0


@gluon.jit
def _issue_eg(e_desc, g_desc, e_bufs, g_bufs, eg_bar, it, R: gl.constexpr, row, col, pred):
    """TMA-load the e and g subtiles at (row, col) into ring slot it % R."""
    s = it % R
    mbarrier.expect(eg_bar.index(s), 2 * e_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(e_desc, [row, col], eg_bar.index(s), e_bufs.index(s), pred=pred)
    tma.async_copy_global_to_shared(g_desc, [row, col], eg_bar.index(s), g_bufs.index(s), pred=pred)


@gluon.jit
def _epilogue_actgrad_tma_partition(
    e_desc,
    g_desc,
    de_desc,
    dg_desc,
    e_bufs,
    g_bufs,
    eg_bar,
    c_smem,
    c_ready,
    c_empty,
    num_pid_m,
    num_pid_n,
    BM: gl.constexpr,
    BN: gl.constexpr,
    SM_: gl.constexpr,
    SN: gl.constexpr,
    GROUP: gl.constexpr,
    EWARPS: gl.constexpr,
    R: gl.constexpr,
    PF: gl.constexpr,
):
    """FUSE=True, TMA I/O: e, g -> R-slot shared ring (PF subtiles ahead) -> de, dg in place -> TMA.

    Subtile ``it`` (counted over all of this CTA's tiles) uses slot ``it % R``; de/dg overwrite
    the e/g they were computed from and are TMA-stored from there. Before slot ``(it + PF) % R``
    is refilled, the stores of subtile ``it + PF - R`` must have read it: ``store_wait`` leaves
    the ``2 * (R - PF - 1)`` store groups of the later subtiles pending.
    """
    VEC: gl.constexpr = 8
    TPW_N: gl.constexpr = SN // VEC
    blk: gl.constexpr = gl.BlockedLayout([1, VEC], [32 // TPW_N, TPW_N], [EWARPS, 1], [1, 0])
    NSUB_N: gl.constexpr = BN // SN
    NSUB: gl.constexpr = (BM // SM_) * NSUB_N
    PENDING: gl.constexpr = 2 * (R - PF - 1)

    num_tiles = num_pid_m * num_pid_n
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    # Prologue: the first PF subtiles of the first tile (grid <= num_tiles: it exists).
    pid_m, pid_n = _tile_mn(pid, num_pid_m, num_pid_n, GROUP)
    for q in gl.static_range(PF):
        _issue_eg(
            e_desc, g_desc, e_bufs, g_bufs, eg_bar, q, R,
            pid_m * BM + _sub_row(q, NSUB, NSUB_N, SM_),
            pid_n * BN + _sub_col(q, NSUB, NSUB_N, SN),
            True,
        )  # fmt: skip
    it = 0
    t = 0
    for tile_id in range(pid, num_tiles, nprog):
        pid_m, pid_n = _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
        nxt = tile_id + nprog
        has_next = nxt < num_tiles  # past the last tile: no prefetch (nothing may stay in flight)
        nxt_m, nxt_n = _tile_mn(gl.minimum(nxt, num_tiles - 1), num_pid_m, num_pid_n, GROUP)
        for j in gl.static_range(NSUB):
            # Refill slot (it + PF) % R with subtile j + PF (of this tile or the next one).
            tma.store_wait(PENDING)
            gl.thread_barrier()  # the store-issuing thread's wait, before any thread reuses it
            if _wraps(j, PF, NSUB):
                _issue_eg(
                    e_desc, g_desc, e_bufs, g_bufs, eg_bar, it + PF, R,
                    nxt_m * BM + _sub_row(j + PF, NSUB, NSUB_N, SM_),
                    nxt_n * BN + _sub_col(j + PF, NSUB, NSUB_N, SN),
                    has_next,
                )  # fmt: skip
            else:
                _issue_eg(
                    e_desc, g_desc, e_bufs, g_bufs, eg_bar, it + PF, R,
                    pid_m * BM + _sub_row(j + PF, NSUB, NSUB_N, SM_),
                    pid_n * BN + _sub_col(j + PF, NSUB, NSUB_N, SN),
                    True,
                )  # fmt: skip
            if j == 0:
                mbarrier.wait(c_ready, t & 1)  # after issuing the prefetch: it does not need dh
            s = it % R
            mbarrier.wait(eg_bar.index(s), (it // R) & 1)
            e_slot = e_bufs.index(s)
            g_slot = g_bufs.index(s)
            ef = e_slot.load(blk).to(gl.float32)
            gf = g_slot.load(blk).to(gl.float32)
            dh_view = c_smem.slice(_sub_row(j, NSUB, NSUB_N, SM_), SM_, dim=0)
            dh_view = dh_view.slice(_sub_col(j, NSUB, NSUB_N, SN), SN, dim=1)
            dh = dh_view.load(blk).to(gl.float32)
            if j + 1 == NSUB:
                gl.thread_barrier()  # all epilogue warps have read the whole tile
                mbarrier.arrive(c_empty, count=1)
            sg = 1.0 / (1.0 + gl.exp(-ef))
            dhs = dh * sg
            de = dhs * gf * (1.0 + ef * (1.0 - sg))
            dg = dhs * ef
            # Same layout as the loads: each thread overwrites only the elements it has read.
            e_slot.store(de.to(de_desc.dtype))
            g_slot.store(dg.to(dg_desc.dtype))
            fence_async_shared()
            gl.thread_barrier()  # all warps' de/dg in shared before the TMA store is issued
            r0 = pid_m * BM + _sub_row(j, NSUB, NSUB_N, SM_)
            c0 = pid_n * BN + _sub_col(j, NSUB, NSUB_N, SN)
            tma.async_copy_shared_to_global(de_desc, [r0, c0], e_slot)
            tma.async_copy_shared_to_global(dg_desc, [r0, c0], g_slot)
            it += 1
        t += 1  # noqa: SIM113 (Gluon loops have no enumerate)
    tma.store_wait(0)


@gluon.jit
def ws_dh_actgrad_kernel(
    a_desc,
    b_desc,
    c_desc,
    e_desc,
    g_desc,
    de_desc,
    dg_desc,
    e_ptr,
    g_ptr,
    de_ptr,
    dg_ptr,
    dxa_ptr,
    part_ptr,
    M,
    N,
    K,
    FUSE: gl.constexpr,
    NSTAGE: gl.constexpr,
    GROUP: gl.constexpr,
    SM_: gl.constexpr,
    SN: gl.constexpr,
    EWARPS: gl.constexpr,
    LOAD_NREG: gl.constexpr,
    EPI_NREG: gl.constexpr,
    EPI_TMA: gl.constexpr,
    EPI_LOOP: gl.constexpr,  # any runtime-loop epilogue: loop, loop_da, loop_h
    EPI_DA: gl.constexpr,
    EPI_HOUT: gl.constexpr,
    R: gl.constexpr,
    SLOTS: gl.constexpr,
    PF: gl.constexpr,
    DIAG_ON: gl.constexpr,
    diag,
):
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    dtype: gl.constexpr = a_desc.dtype
    WARPS: gl.constexpr = gl.num_warps()

    a_bufs = gl.allocate_shared_memory(dtype, [NSTAGE, BM, BK], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [NSTAGE, BK, BN], b_desc.layout)
    c_smem = gl.allocate_shared_memory(dtype, [BM, BN], c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NSTAGE, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NSTAGE, 1], mbarrier.MBarrierLayout())
    c_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    c_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NSTAGE):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    mbarrier.init(c_ready, count=1)
    mbarrier.init(c_empty, count=1)

    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k_tiles = gl.cdiv(K, BK)

    # (The JIT cannot hold functions in tuples, so each branch spells out its partition list.)
    if FUSE and EPI_TMA:
        # e/g ring of the TMA epilogue; de/dg are staged in the slot they were computed from.
        e_bufs = gl.allocate_shared_memory(e_desc.dtype, [SLOTS, SM_, SN], e_desc.layout)
        g_bufs = gl.allocate_shared_memory(g_desc.dtype, [SLOTS, SM_, SN], g_desc.layout)
        eg_bar = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(SLOTS):
            mbarrier.init(eg_bar.index(i), count=1)
        gl.warp_specialize(
            [
                (
                    _mma_partition,
                    (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                     num_pid_m, num_pid_n, k_tiles, BM, BN, NSTAGE, WARPS),
                ),
                (
                    _load_partition,
                    (a_desc, b_desc, a_bufs, b_bufs, ready, empty,
                     num_pid_m, num_pid_n, k_tiles, BM, BN, BK, NSTAGE, GROUP),
                ),
                (
                    _epilogue_actgrad_tma_partition,
                    (e_desc, g_desc, de_desc, dg_desc, e_bufs, g_bufs, eg_bar, c_smem, c_ready,
                     c_empty, num_pid_m, num_pid_n, BM, BN, SM_, SN, GROUP, EWARPS, SLOTS, PF),
                ),
            ],
            [1, EWARPS],
            [LOAD_NREG, EPI_NREG],
        )  # fmt: skip
        for i in gl.static_range(SLOTS):
            mbarrier.invalidate(eg_bar.index(i))
    elif FUSE and EPI_LOOP:
        gl.warp_specialize(
            [
                (
                    _mma_partition,
                    (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                     num_pid_m, num_pid_n, k_tiles, BM, BN, NSTAGE, WARPS),
                ),
                (
                    _load_partition,
                    (a_desc, b_desc, a_bufs, b_bufs, ready, empty,
                     num_pid_m, num_pid_n, k_tiles, BM, BN, BK, NSTAGE, GROUP),
                ),
                (
                    _epilogue_actgrad_loop_partition,
                    (e_ptr, g_ptr, de_ptr, dg_ptr, dxa_ptr, part_ptr, c_smem, c_ready, c_empty,
                     num_pid_m, num_pid_n, N, BM, BN, SN, GROUP, EWARPS, EPI_DA, R,
                     EPI_HOUT),
                ),
            ],
            [1, EWARPS],
            [LOAD_NREG, EPI_NREG],
        )  # fmt: skip
    elif FUSE:
        gl.warp_specialize(
            [
                (
                    _mma_partition,
                    (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                     num_pid_m, num_pid_n, k_tiles, BM, BN, NSTAGE, WARPS),
                ),
                (
                    _load_partition,
                    (a_desc, b_desc, a_bufs, b_bufs, ready, empty,
                     num_pid_m, num_pid_n, k_tiles, BM, BN, BK, NSTAGE, GROUP),
                ),
                (
                    _epilogue_actgrad_partition,
                    (e_ptr, g_ptr, de_ptr, dg_ptr, c_smem, c_ready, c_empty,
                     num_pid_m, num_pid_n, N, BM, BN, SM_, SN, GROUP, EWARPS, DIAG_ON, diag),
                ),
            ],
            [1, EWARPS],
            [LOAD_NREG, EPI_NREG],
        )  # fmt: skip
    else:
        gl.warp_specialize(
            [
                (
                    _mma_partition,
                    (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                     num_pid_m, num_pid_n, k_tiles, BM, BN, NSTAGE, WARPS),
                ),
                (
                    _load_partition,
                    (a_desc, b_desc, a_bufs, b_bufs, ready, empty,
                     num_pid_m, num_pid_n, k_tiles, BM, BN, BK, NSTAGE, GROUP),
                ),
                (
                    _epilogue_store_partition,
                    (c_desc, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, BM, BN, GROUP),
                ),
            ],
            [1, EWARPS],
            [LOAD_NREG, EPI_NREG],
        )  # fmt: skip

    for i in gl.static_range(NSTAGE):
        mbarrier.invalidate(ready.index(i))
        mbarrier.invalidate(empty.index(i))
    mbarrier.invalidate(c_ready)
    mbarrier.invalidate(c_empty)


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------


def _descs(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    a_l = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.bfloat16)
    b_l = gl.NVMMASharedLayout.get_default_for([BLOCK_K, BLOCK_N], gl.bfloat16)
    c_l = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N], gl.bfloat16)
    return (
        TensorDescriptor.from_tensor(a, [BLOCK_M, BLOCK_K], a_l),
        TensorDescriptor.from_tensor(b, [BLOCK_K, BLOCK_N], b_l),
        TensorDescriptor.from_tensor(c, [BLOCK_M, BLOCK_N], c_l),
    )


def _io_descs(sub_m: int, sub_n: int, *ts: torch.Tensor) -> list:
    """[sub_m, sub_n] TMA descriptors of e, g, de, dg (one shared layout: de/dg reuse e/g slots)."""
    lay = gl.NVMMASharedLayout.get_default_for([sub_m, sub_n], gl.bfloat16)
    return [TensorDescriptor.from_tensor(t, [sub_m, sub_n], lay) for t in ts]


def _check_shapes(M: int, N: int, K: int, sub_m: int, sub_n: int) -> None:
    # The fused epilogue has no masks and int32 offsets.
    assert M % BLOCK_M == 0 and N % BLOCK_N == 0 and K % BLOCK_K == 0, (M, N, K)
    assert M * N < 2**31, "int32 offsets in the epilogue"
    assert BLOCK_M % sub_m == 0 and BLOCK_N % sub_n == 0, (sub_m, sub_n)
    assert sub_n % 8 == 0 and 32 % (sub_n // 8) == 0, sub_n
    assert sub_m % ((32 // (sub_n // 8)) * EPI_WARPS) == 0, (sub_m, sub_n)


def _check_tma(sub_m: int, sub_n: int, slots: int, pf: int) -> None:
    nsub = (BLOCK_M // sub_m) * (BLOCK_N // sub_n)
    assert 1 <= pf < slots, (slots, pf)  # slot it + PF must not be the one being computed
    assert pf < nsub, (pf, nsub)  # prefetch reaches at most into the next tile


def _args(
    a,
    b,
    c,
    e,
    g,
    de,
    dg,
    fuse: bool,
    sub_m: int,
    sub_n: int,
    stages: int = STAGES,
    epi: str = "ptr",
    slots: int = 2,
    pf: int = 1,
    mnk: tuple[int, int, int] | None = None,
    diag: int | None = None,
    dxa: torch.Tensor | None = None,
    part: torch.Tensor | None = None,
) -> tuple:
    M, K = a.shape
    N = b.shape[1]
    if mnk is not None:
        M, N, K = mnk
    da = fuse and epi == "loop_da"
    hout = fuse and epi == "loop_h"
    assert da == (dxa is not None), (epi, dxa is None)
    assert (da or hout) == (part is not None), (epi, part is None)
    tma_io = fuse and epi == "tma"
    if tma_io:
        _check_tma(sub_m, sub_n, slots, pf)
        io = _io_descs(sub_m, sub_n, e, g, de, dg)
    else:
        io = [None] * 4  # constexpr None: unused by the ptr / FUSE=False kernels
        slots, pf = 1, 0
    return (
        *_descs(a, b, c),
        *io,
        e,
        g,
        de,
        dg,
        dxa,  # constexpr None except for loop_da
        part,  # loop_da: the dA partials; loop_h: h
        M,
        N,
        K,
        fuse,
        stages,
        GROUP_M,
        sub_m,
        sub_n,
        EPI_WARPS,
        LOAD_REGS,
        EPI_REGS,
        tma_io,
        fuse and epi in ("loop", "loop_da", "loop_h"),
        da,
        hout,
        DA_RANK,
        slots,
        pf,
        diag is not None,
        4 + (diag or 0),  # never 0 or 1, which Triton would specialize into a constant
    )


def _grid(M: int, N: int, num_sms: int) -> tuple[int]:
    return (min(num_sms, triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N)),)


_NUM_SMS: int | None = None


def _launch(a, b, c, e, g, de, dg, fuse, sub_m, sub_n, **cfg) -> None:
    global _NUM_SMS
    if _NUM_SMS is None:
        _NUM_SMS = torch.cuda.get_device_properties(a.device).multi_processor_count
    M, N = a.shape[0], b.shape[1]
    ws_dh_actgrad_kernel[_grid(M, N, _NUM_SMS)](
        *_args(a, b, c, e, g, de, dg, fuse, sub_m, sub_n, **cfg), num_warps=NUM_WARPS
    )


def _check_inputs(dy: torch.Tensor, w: torch.Tensor, *rest: torch.Tensor) -> None:
    for t in (dy, w, *rest):
        assert t.dtype == torch.bfloat16 and t.is_contiguous() and t.is_cuda
    assert dy.shape[1] == w.shape[0]
    for t in rest:
        assert t.shape == (dy.shape[0], w.shape[1])


def dh_only(dy: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """FUSE=False: dh = dy [M, K] @ w [K, N] (w row-major, as W_d is stored)."""
    _check_inputs(dy, w)
    M, K = dy.shape
    N = w.shape[1]
    _check_shapes(M, N, K, SUB_M, SUB_N)
    dh = torch.empty(M, N, device=dy.device, dtype=dy.dtype)
    # e/g/de/dg are unused here: pass dh for the pointers.
    _launch(dy, w, dh, dh, dh, dh, dh, False, SUB_M, SUB_N)
    return dh


def dh_actgrad(
    dy: torch.Tensor,
    w: torch.Tensor,
    e: torch.Tensor,
    g: torch.Tensor,
    sub_m: int = SUB_M,
    sub_n: int = SUB_N,
    epi: str = "tma",
    stages: int = STAGES,
    slots: int = 2,
    pf: int = 1,
    diag: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FUSE=True: (de, dg) from dh = dy @ w without writing dh.

    ``epi="ptr"``: e/g/de/dg through pointer loads/stores; ``"tma"``: through TMA and a
    ``slots``-deep shared ring, ``pf`` subtiles of prefetch. ``diag`` (ptr only, None: off):
    the switch of ``_epilogue_actgrad_partition``; nonzero gives wrong results.
    """
    _check_inputs(dy, w, e, g)
    M, K = dy.shape
    N = w.shape[1]
    _check_shapes(M, N, K, sub_m, sub_n)
    de, dg = torch.empty_like(e), torch.empty_like(g)
    # c_desc only fixes the C buffer's shape/layout; FUSE=True never stores through it.
    cfg = {"stages": stages, "epi": epi, "slots": slots, "pf": pf, "diag": diag}
    _launch(dy, w, de, e, g, de, dg, True, sub_m, sub_n, **cfg)
    return de, dg


def _check_da_inputs(
    dy: torch.Tensor, w: torch.Tensor, e: torch.Tensor, g: torch.Tensor, dxa: torch.Tensor
) -> tuple[int, int]:
    """The checks of the dA variants (``dxa`` is [M, r] bf16, contiguous); returns (M, N)."""
    _check_inputs(dy, w, e, g)
    M, K = dy.shape
    N = w.shape[1]
    _check_shapes(M, N, K, SUB_M, SUB_N)
    assert dxa.dtype == torch.bfloat16 and dxa.is_contiguous() and dxa.shape == (M, DA_RANK)
    return M, N


def dh_actgrad_da(
    dy: torch.Tensor,
    w: torch.Tensor,
    e: torch.Tensor,
    g: torch.Tensor,
    dxa: torch.Tensor,
    stages: int = STAGES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop epilogue's (de, dg) plus down's ``dA = dXA^T h`` ([r, N], bf16), ``h = silu(e) g``.

    The kernel writes one fp32 partial per 128-row tile, ``part`` [M // 128, r, N].
    """
    M, N = _check_da_inputs(dy, w, e, g, dxa)
    de, dg = torch.empty_like(e), torch.empty_like(g)
    part = torch.empty(M // BLOCK_M, DA_RANK, N, device=e.device, dtype=torch.float32)
    cfg = {"stages": stages, "epi": "loop_da", "dxa": dxa, "part": part}
    _launch(dy, w, de, e, g, de, dg, True, SUB_M, SUB_N, **cfg)
    # A torch reduction over the partials (deterministic, not a fixed-order kernel like the
    # shipped _sum_kernel's; enough for this probe).
    return de, dg, part.sum(0).to(torch.bfloat16)


def dh_actgrad_h(
    dy: torch.Tensor,
    w: torch.Tensor,
    e: torch.Tensor,
    g: torch.Tensor,
    dxa: torch.Tensor,
    stages: int = STAGES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dh_actgrad_da``'s outputs, with the loop epilogue storing ``h`` and cuBLAS ``dXA^T h``."""
    _check_da_inputs(dy, w, e, g, dxa)
    de, dg, h = torch.empty_like(e), torch.empty_like(g), torch.empty_like(e)
    _launch(dy, w, de, e, g, de, dg, True, SUB_M, SUB_N, stages=stages, epi="loop_h", part=h)
    return de, dg, dxa.T @ h


# Fused variants: (tag, epilogue, mainloop stages, ring slots, prefetch distance). The TMA ring
# costs slots * 2 * sub_m * sub_n * 2 B: 3 stages leave room for 2 slots of 32x64 (208 KB + 16 KB),
# 2 stages for more (160 KB + 32 KB with 4 slots).
VARIANTS = [
    ("ptr s3", "ptr", 3, 1, 0),
    ("loop s3", "loop", 3, 1, 0),
    ("loop_da s3", "loop_da", 3, 1, 0),
    ("loop_h s3", "loop_h", 3, 1, 0),
    ("tma s3 r2 pf1", "tma", 3, 2, 1),
    ("tma s2 r4 pf2", "tma", 2, 4, 2),
]


# --- --compile -----------------------------------------------------------------------------------


def compile_only(
    fuse: bool,
    sub_m: int = SUB_M,
    sub_n: int = SUB_N,
    epi: str = "ptr",
    stages: int = STAGES,
    slots: int = 2,
    pf: int = 1,
    M: int = 8192,
    N: int = 14336,
    K: int = 4096,
    diag: int | None = None,
) -> Any:
    from triton.runtime import driver

    tag = f"FUSE={fuse}" + (f" {epi} stages={stages} slots={slots} pf={pf}" if fuse else "")
    tag += "" if diag is None else f" diag={diag}"
    previous = driver._active
    driver.set_active(_sm90_driver())
    try:
        a = torch.empty(256, 128, dtype=torch.bfloat16)
        b = torch.empty(128, 512, dtype=torch.bfloat16)
        c = torch.empty(256, 512, dtype=torch.bfloat16)
        _check_shapes(M, N, K, sub_m, sub_n)
        mnk = (M, N, K)
        da = {}
        if fuse and epi == "loop_da":
            da = {"dxa": torch.empty(256, DA_RANK, dtype=torch.bfloat16)}
            da["part"] = torch.empty(2, DA_RANK, 512, dtype=torch.float32)
        if fuse and epi == "loop_h":
            da = {"part": c}
        args = _args(
            a, b, c, c, c, c, c, fuse, sub_m, sub_n, stages, epi, slots, pf, mnk, diag, **da
        )
        k = ws_dh_actgrad_kernel.warmup(*args, grid=_grid(M, N, 132), num_warps=NUM_WARPS)
    finally:
        driver.set_active(previous)
    md = k.metadata
    print(
        f"[compile {tag}] name={k.name} num_warps={md.num_warps} "
        f"shared={md.shared} B ({md.shared / 1024:.1f} KB; limit 232448 B = 227 KB)"
        + ("" if md.shared <= 232448 else "  OVER THE LIMIT")
    )
    ptx = k.asm.get("ptx", "")
    maxnreg = re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx)
    print(f"[compile {tag}] setmaxnreg in PTX: {maxnreg}")
    print(
        f"[compile {tag}] PTX: wgmma.mma_async={ptx.count('wgmma.mma_async')} "
        f"cp.async.bulk.tensor={ptx.count('cp.async.bulk.tensor')} "
        f"wait_group.read={ptx.count('cp.async.bulk.wait_group.read')} "
        f"ld.global={ptx.count('ld.global')} st.global={ptx.count('st.global')} "
        f"ld.shared={ptx.count('ld.shared')} st.shared={ptx.count('st.shared')} "
        f"bar.sync={ptx.count('bar.sync')} local={ptx.count('.local')}"
    )
    _ptxas_info(ptx, md)
    return k


# --- --bench -------------------------------------------------------------------------------------


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


def _p(*a: Any) -> None:
    print(*a, flush=True)


def _finish_or_die(what: str, timeout_s: float = 30.0) -> None:
    """Synchronize, but give up (and exit: the context is unusable) on a hung kernel."""
    import time

    ev = torch.cuda.Event()
    ev.record()
    t0 = time.time()
    while not ev.query():
        if time.time() - t0 > timeout_s:
            _p(f"HANG: {what} did not finish in {timeout_s:.0f} s; exiting")
            os._exit(3)
        time.sleep(0.005)


def _rounds(cases: dict, times: dict, n: int = 3) -> None:
    from triton.testing import do_bench

    for r in range(n):
        for name, fn in cases.items():
            ms = do_bench(fn, return_mode="median")
            _finish_or_die(name)
            times.setdefault(name, []).append(ms)
            _p(f"  round {r}: {name:<52} {ms:7.3f} ms")


def _table(times: dict, base_name: str) -> dict:
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    base = med[base_name]
    _p(f"{'case':<52} {'ms':>7} {'x cuBLAS dh':>11}   rounds")
    for name, v in times.items():
        _p(f"{name:<52} {med[name]:7.3f} {med[name] / base:11.3f}   {[round(x, 3) for x in v]}")
    return med


def bench(sub_m: int, sub_n: int, variants: list) -> None:
    from lk_autograd._activation_backward import activation_backward_with_dA
    from lk_triton._gated import gated_backward
    from lk_triton._swiglu import swiglu_backward

    torch.manual_seed(0)
    M, D, I = 8192, 4096, 14336
    dev = torch.cuda.get_device_name()
    _p(f"device: {dev}, torch {torch.__version__}, triton {triton.__version__}")
    _p(
        f"M={M} D={D} I={I}; tile {BLOCK_M}x{BLOCK_N}x{BLOCK_K}, GROUP_M={GROUP_M}, "
        f"{NUM_WARPS}+1+{EPI_WARPS} warps, regs load/epi={LOAD_REGS}/{EPI_REGS}, "
        f"subtile {sub_m}x{sub_n}; FUSE=False uses {STAGES} stages"
    )
    _p("variants (tag, epilogue, stages, slots, prefetch):", variants)
    dy = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(D, I, device="cuda") * 0.02).to(torch.bfloat16)
    e = torch.randn(M, I, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(M, I, device="cuda", dtype=torch.bfloat16)
    dxa = (torch.randn(M, DA_RANK, device="cuda") * 0.1).to(torch.bfloat16)

    def pair():
        dh = torch.matmul(dy, w)
        _, de, dg = gated_backward(dh, e, g, "silu", inplace=False, store_h=False)
        return de, dg

    def pair_public():  # lk_triton.swiglu_backward: also writes h
        dh = torch.matmul(dy, w)
        _, de, dg = swiglu_backward(dh, e, g, inplace=False)
        return de, dg

    def shipped():  # lk_autograd: cuBLAS dh, then de/dg/dA in one pass
        dh = torch.matmul(dy, w)
        return activation_backward_with_dA(dh, e, g, dxa, "silu", False)

    def fused(v):
        _, epi, stages, slots, pf = v
        if epi == "loop_da":
            return lambda: dh_actgrad_da(dy, w, e, g, dxa, stages)
        if epi == "loop_h":
            return lambda: dh_actgrad_h(dy, w, e, g, dxa, stages)
        return lambda: dh_actgrad(dy, w, e, g, sub_m, sub_n, epi, stages, slots, pf)

    # --- correctness vs float64 (known-good kernels first)
    dh64 = dy.double() @ w.double()
    e64, g64 = e.double(), g.double()
    s64 = torch.sigmoid(e64)
    de_ref = dh64 * g64 * s64 * (1 + e64 * (1 - s64))
    dg_ref = dh64 * e64 * s64
    del s64, e64, g64
    h_ref = (torch.nn.functional.silu(e.float()) * g.float()).to(torch.bfloat16).double()
    dA_ref = dxa.double().T @ h_ref
    del h_ref
    dh_gemm = dh_only(dy, w)
    _finish_or_die("FUSE=False")
    rel_dh_ours = _rel(dh_gemm, dh64)
    rel_dh_cub = _rel(torch.matmul(dy, w), dh64)
    del dh_gemm, dh64
    de_p, dg_p = pair()
    r_pair = (_rel(de_p, de_ref), _rel(dg_p, dg_ref))
    del de_p, dg_p
    de_s, dg_s, dA_s = shipped()
    r_ship = (_rel(de_s, de_ref), _rel(dg_s, dg_ref), _rel(dA_s, dA_ref))
    del de_s, dg_s, dA_s
    torch.cuda.empty_cache()
    _p(f"dh (FUSE=False) max abs err / max |ref|: ours {rel_dh_ours:.3e}")
    _p(f"dh (cuBLAS)     max abs err / max |ref|: {rel_dh_cub:.3e}")
    _p(f"{'cuBLAS+lk':<16} de {r_pair[0]:.3e}  dg {r_pair[1]:.3e}")
    _p(f"{'shipped':<16} de {r_ship[0]:.3e}  dg {r_ship[1]:.3e}  dA {r_ship[2]:.3e}")
    _p("dh correctness:", "PASS" if rel_dh_ours <= 2.0 * rel_dh_cub else "FAIL")

    base_cases = {
        "cuBLAS dh alone": lambda: torch.matmul(dy, w),
        "pair: cuBLAS dh + lk gated_backward(store_h=False)": pair,
        "pair: cuBLAS dh + lk swiglu_backward (writes h)": pair_public,
        "ours FUSE=False (dh only)": lambda: dh_only(dy, w),
        "shipped: cuBLAS dh + activation_backward_with_dA": shipped,
    }
    good = [v for v in variants if v[1] == "ptr"]
    new = [v for v in variants if v[1] != "ptr"]

    def check(v) -> None:
        out = fused(v)()
        _finish_or_die(v[0])
        r = (_rel(out[0], de_ref), _rel(out[1], dg_ref))
        ok = all(f <= 2.0 * p for f, p in zip(r, r_pair, strict=True))
        msg = f"{v[0]:<16} de {r[0]:.3e}  dg {r[1]:.3e}"
        if len(out) == 3:  # loop_da, loop_h: dA against the shipped path's error
            r_da = _rel(out[2], dA_ref)
            ok = ok and r_da <= 2.0 * r_ship[2]
            msg += f"  dA {r_da:.3e}"
        _p(f"{msg}  {'PASS' if ok else 'FAIL (> 2x the pair / shipped)'}")

    for v in good:
        check(v)
    # Known-good timings first, so a hang in a new variant leaves them on record.
    _p("--- timing, known-good kernels (3 alternated rounds)")
    cases = dict(base_cases)
    cases.update({f"ours FUSE=True {v[0]}": fused(v) for v in good})
    times: dict[str, list[float]] = {}
    _rounds(cases, times)
    _table(times, "cuBLAS dh alone")
    if not new:
        return
    for v in new:
        check(v)
    _p("--- timing, all kernels (3 alternated rounds)")
    cases.update({f"ours FUSE=True {v[0]}": fused(v) for v in new})
    times = {}
    _rounds(cases, times)
    med = _table(times, "cuBLAS dh alone")
    pair_ms = med["pair: cuBLAS dh + lk gated_backward(store_h=False)"]
    own = med["ours FUSE=False (dh only)"]
    ship_ms = med["shipped: cuBLAS dh + activation_backward_with_dA"]
    _p(f"activation cost in the pair: {(pair_ms - med['cuBLAS dh alone']) * 1e3:.1f} us")
    _p(f"activation + dA cost shipped: {(ship_ms - med['cuBLAS dh alone']) * 1e3:.1f} us")
    for v in variants:
        ms = med[f"ours FUSE=True {v[0]}"]
        if v[1] in ("loop_da", "loop_h"):  # also dA: against the shipped path, which gives it too
            ref_name, ref_ms = "shipped", ship_ms
        else:
            ref_name, ref_ms = "pair (store_h=False)", pair_ms
        _p(
            f"{v[0]:<16} vs {ref_name}: {(ref_ms - ms) * 1e3:+8.1f} us saved "
            f"({ms / ref_ms:.3f}x); over FUSE=False: {(ms - own) * 1e3:+8.1f} us"
        )


DIAGS = {0: "full", 1: "e/g from L2", 2: "de/dg to L2", 3: "both in L2"}


def diag_bench(sub_m: int, sub_n: int) -> None:
    """Time the ptr epilogue with its global loads and/or stores left out (wrong results)."""
    torch.manual_seed(0)
    M, D, I = 8192, 4096, 14336
    _p(f"device: {torch.cuda.get_device_name()}, triton {triton.__version__}; diag, ptr s3")
    dy = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(D, I, device="cuda") * 0.02).to(torch.bfloat16)
    e = torch.randn(M, I, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(M, I, device="cuda", dtype=torch.bfloat16)
    cases = {
        "ours FUSE=False (dh only)": lambda: dh_only(dy, w),
        "ptr s3, no switch": lambda: dh_actgrad(dy, w, e, g, sub_m, sub_n, "ptr", STAGES, 1, 0),
    }
    for d, what in DIAGS.items():
        cases[f"ptr s3 diag {d}: {what}"] = lambda d=d: dh_actgrad(
            dy, w, e, g, sub_m, sub_n, "ptr", STAGES, 1, 0, d
        )
    times: dict[str, list[float]] = {}
    _rounds(cases, times)
    _table(times, "ours FUSE=False (dh only)")


def _variants(epilogue: str, stages: int | None, slots: int | None, pf: int | None) -> list:
    vs = [v for v in VARIANTS if epilogue in ("all", v[1])]
    if epilogue != "all" and (stages, slots, pf) != (None, None, None):
        # One explicit configuration instead of the table.
        st = STAGES if stages is None else stages
        sl = (1 if epilogue == "ptr" else 2) if slots is None else slots
        p = (0 if epilogue == "ptr" else 1) if pf is None else pf
        vs = [(f"{epilogue} s{st} r{sl} pf{p}", epilogue, st, sl, p)]
    return vs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--compile", action="store_true", help="CPU-only compile for sm_90a")
    g.add_argument("--bench", action="store_true", help="check + time on an sm_90 GPU")
    g.add_argument("--diag", action="store_true", help="time the ptr epilogue's parts (GPU)")
    p.add_argument("--sub", default=f"{SUB_M}x{SUB_N}", help="fused epilogue subtile, MxN")
    p.add_argument(
        "--epilogue",
        choices=("all", "tma", "ptr", "loop", "loop_da", "loop_h"),
        default="all",
        help="fused variants: all of VARIANTS (default), or only those of one epilogue",
    )
    p.add_argument("--stages", type=int, help="with --epilogue tma|ptr: one config, these stages")
    p.add_argument("--slots", type=int, help="with --epilogue tma: e/g ring slots")
    p.add_argument("--prefetch", type=int, help="with --epilogue tma: prefetch distance")
    args = p.parse_args()
    sub_m, sub_n = (int(x) for x in args.sub.split("x"))
    variants = _variants(args.epilogue, args.stages, args.slots, args.prefetch)
    if args.compile:
        compile_only(False, sub_m, sub_n)
        for _, epi, stages, slots, pf in variants:
            compile_only(True, sub_m, sub_n, epi, stages, slots, pf)
        for d in DIAGS:
            compile_only(True, sub_m, sub_n, "ptr", STAGES, 1, 0, diag=d)
    elif args.diag:
        diag_bench(sub_m, sub_n)
    else:
        bench(sub_m, sub_n, variants)


if __name__ == "__main__":
    main()
