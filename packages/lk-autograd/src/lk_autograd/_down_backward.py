"""Down's input gradient with the gated activation's backward in its epilogue (Hopper, Gluon).

With ``dY`` ``[M, K]`` (the MLP's output gradient), down's base weight ``W`` ``[K, N]`` (as
``nn.Linear`` stores it: ``K`` = hidden size, ``N`` = intermediate size), its adapter's
``dXA = s dY B`` ``[M, r]`` and ``A`` ``[r, N]``, and the forward's gate and up outputs ``e``
and ``g`` ``[M, N]``::

    dh = dY W + dXA A                       (never stored)
    de = dh g act'(e)     dg = dh act(e)    h = act(e) g   (rounded to the activations' dtype)

and down's ``dA = dXA^T h``, from cuBLAS over the stored ``h`` (summing it in the epilogue
instead was slower: BENCHMARKS.md, twenty-third session). Separately, the ``dh``
GEMM writes ``[M, N]`` and the activation backward reads it back; here each ``dh`` tile goes
from the accumulator to shared memory and straight into the elementwise math. The kernel is
persistent (one CTA per SM, output tiles grouped along M for L2 reuse) and warp-specialized:

- default partition and worker 0, one warpgroup (4 warps) each: the wgmma consumers, one per
  64-row half of the tile. Each runs the tile's K loop, ``K / 64`` steps of ``dY W`` and then
  ``ceil(r / 64)`` of ``dXA A`` onto its fp32 accumulator (TMA zero-fills the rank past
  ``r``), releasing each stage and publishing its half of the tile with its own arrive, and
  writes its half, rounded to 16 bits, into one ``[128, 256]`` shared buffer; then it goes on
  to the next tile's K loop. (One 8-warp consumer ran two partition-wide ``bar.sync`` per K
  step, which Triton's membar pass puts before the ``ready`` wait and the one-thread
  ``empty`` arrive: 1.609 against 1.583 ms split, BENCHMARKS.md, twenty-fifth session.)
- worker 1, 1 warp: the TMA producer of a 3-stage ring of ``[128, 64]`` / ``[64, 256]`` tiles.
- worker 2, 2 warps: the epilogue. It walks the shared tile in 16 ``[32, 64]`` subtiles in a
  runtime loop (an unrolled one is ~220 KB of code that two warps fetch once per tile: it took
  the kernel from 1.53 to 2.88 ms on an H100, BENCHMARKS.md, twentieth session). Per subtile
  it loads ``e`` and ``g`` of the *next* subtile before computing this one, and stores ``de``,
  ``dg`` and ``h``. Each element of ``e`` and ``g`` is read before it is written, so ``de``
  and ``dg`` may overwrite them. Only where ``M`` is not a multiple of 128 (``TAIL``, a
  specialization of its own) are the last row block's rows past ``M`` masked (TMA
  zero-fills ``dY`` and ``dXA`` there); the columns are not: ``N`` is a multiple of 256.

Where the time goes (H100, ``dY`` ``[8192, 4096]``, twenty-fourth session, BENCHMARKS.md): the
kernel (``gated_grads``, then with one 8-warp consumer) 1.586 ms and cuBLAS's ``dA`` 0.090
(near HBM bandwidth) against 1.398 for the bare cuBLAS ``dY W``. Under ncu the epilogue warps
wait ~40% of the time for the next tile, so the epilogue is not the bound: the mainloop is
(tensor pipe 82% busy against cuBLAS's 93% at the same clock), its MMA warps waiting on TMA
data and on the partition-wide ``bar.sync`` the split removed. Deeper prefetch in the
epilogue, smaller subtiles, BK = 32 with 5 or 6 stages, ``GROUP_M`` = 16 and evict-first
stores were each timed no faster.

Two epilogue warps, not four: Triton caps every partition's registers at ``65536 / threads``,
and 8 + 1 + 4 warps (padded to 16) leaves 128, below what a ``256``-column wgmma accumulator
and its addressing need; 8 + 1 + 2 warps, and 4 + 4 + 1 + 2 now, give 168. Measured on an H100
at ``M, N, K = 8192, 14336, 4096`` (BENCHMARKS.md, twenty-first session,
``tools/bench_down_backward.py``): with cuBLAS's ``dA``, 1.670 ms at ranks 8, 16 and 64,
against 1.811-1.891 ms for the separate route (``_gemm``'s ``dh``, then
``activation_backward_with_dA``) and 1.386 ms for the bare ``dY W``; ``de`` and ``dg`` were the
separate route's bits there.

``_ws_gemm`` runs ``_gemm``'s LoRA GEMMs on the same ring (``_shared_state``) and MMA
partitions (``_mma_half``, which also takes K-major ``W`` tiles) with a TMA-store epilogue.

Gluon is Triton's experimental tile-level dialect; its API moved between releases. This module
is written for Triton 3.6 to 3.9 (``_TRITON_VERSIONS``; the names that moved are looked up
below) and only runs on sm_90: Blackwell has no wgmma. ``fusable_down_backward`` says when it
applies.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from lk_triton._launch import launch

from ._gemm import _DTYPES, _aligned, _runs_here, persistent_programs

# The Triton releases this kernel is compiled against (tests/test_hopper_compile.py, on the CPU,
# with 3.6, 3.7, 3.8 and 3.9; run on an H100 with 3.6). Gluon's API moves between releases:
# elsewhere the MLP keeps the separate route.
_TRITON_VERSIONS = ((3, 6), (3, 9))

try:
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from lk_triton._kernels import activation_and_derivative

    from ._gemm import _ACTIVATION

    # Renamed after Triton 3.6 (there: async_copy_global_to_shared, thread_barrier and the
    # shared-memory descriptor's _reinterpret).
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    _PUBLIC_REINTERPRET = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))
    _version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    if not _TRITON_VERSIONS[0] <= _version <= _TRITON_VERSIONS[1]:
        raise ImportError(f"Triton {triton.__version__}: Gluon API not checked")
except (ImportError, AttributeError, ValueError):  # no triton, or an unchecked Gluon API
    gluon = None

_TILE = (128, 256, 64)  # BM, BN, BK
_STAGES = 3  # 3 x 48 KB of A/B tiles + the 64 KB dh tile: 208 KB of the 227 KB
_GROUP_M = 8
_WARPGROUP = 4  # warps: each of the two MMA partitions, and the default one
_EPILOGUE_WARPS = 2
_WORKER_REGS = 168  # each worker partition (4, 1 and 2 warps): the count Triton caps them at
_SUBTILE = (32, 64)  # epilogue subtiles: [SM, SN], SN = one 128-byte swizzle column block
_INT32_LIMIT = 2**31  # the epilogue's offsets are int32
# The activations whose kernel was timed faster than the separate route (H100, 8192 tokens,
# r = 16, twenty-third session, tools/bench_down_backward.py --activations): SiLU 1.626 against
# 1.770 ms, GELU 1.825 against 2.059, GELU-tanh 1.671 against 1.787.
_TIMED_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")


def gluon_runs_here(t: Tensor) -> bool:
    """The process and device the Gluon kernels (this module's, ``_ws_gemm``'s, ``_ws_gated``'s)
    ask for: a checked Gluon API and what ``_gemm._runs_here`` asks for, on an sm_90 GPU."""
    return (
        gluon is not None and _runs_here(t) and torch.cuda.get_device_capability(t.device)[0] == 9
    )


@functools.cache
def tile_layout(dtype: torch.dtype, rows: int, cols: int) -> Any:
    """Gluon's default shared-memory (NVMMA) layout for a ``[rows, cols]`` TMA tile of a 16-bit
    ``dtype``, kept per argument: building one costs 9-17 us of host time (CPU, Triton 3.6),
    and each launch asks for two."""
    gl_type = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dtype]
    return gl.NVMMASharedLayout.get_default_for([rows, cols], gl_type)


@functools.cache
def tile_buffer_layout() -> Any:
    """The layout of ``_shared_state``'s ``[BM, BN]`` tile buffer (128-byte swizzle, 16-bit),
    which the descriptor of a TMA store from it must carry; kept, as ``tile_layout``'s (~8 us
    of host time to build, CPU, Triton 3.6)."""
    return gl.NVMMASharedLayout(128, 16)


def fusable_down_backward(
    dY: Tensor, W: Tensor | None, e: Tensor, g: Tensor, A: Tensor, activation: str
) -> bool:
    """True when ``down_backward`` can run and is known to be faster: an ``activation`` in
    ``_TIMED_ACTIVATIONS``, Gluon's API, eager, enabled (``set_fused_gemm``),
    an NVIDIA sm_90 GPU, one 16-bit dtype, at least 128 tokens ``M`` (one tile's rows; the
    last tile's are masked), ``N`` a multiple of 256 (the columns are not masked: every common
    MLP width is one), ``M N < 2^31``, contiguous ``e`` and ``g``, TMA-aligned ``dY``,
    ``W`` and ``A``, a rank that is a multiple of 8 (``dXA``'s rows, 16-byte aligned for TMA).
    ``W`` is None for a 4-bit weight, which ``_linear.base_weight`` dequantizes to a contiguous
    ``[K, N]`` for the call."""
    if activation not in _TIMED_ACTIVATIONS or not gluon_runs_here(dY):
        return False
    BM, BN, _ = _TILE
    (M, K), N = dY.shape, e.shape[1]
    operands = [dY, A] if W is None else [dY, W, A]
    if dY.dtype not in _DTYPES or any(t.dtype != dY.dtype for t in (*operands, e, g)):
        return False
    if e.shape != (M, N) or g.shape != (M, N) or A.shape[1] != N or A.shape[0] % 8:
        return False
    if W is not None and W.shape != (K, N):
        return False
    if M < BM or N % BN or M * N >= _INT32_LIMIT or not (e.is_contiguous() and g.is_contiguous()):
        return False
    return all(_aligned(t) for t in operands)


def down_backward(
    dY: Tensor, W: Tensor, dXA: Tensor, A: Tensor, e: Tensor, g: Tensor, activation: str,
    inplace: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(de, dg, dA)`` (see the module docstring); ``activation`` is ``"silu"``, ``"gelu"`` or
    ``"gelu_tanh"``. With ``inplace``, ``de`` and ``dg`` overwrite ``e`` and ``g``. ``dA`` is
    cuBLAS's ``dXA^T h`` over the ``h`` the kernel stores. The caller checks
    ``fusable_down_backward`` first; ``dXA`` is ``[M, r]`` in ``A``'s dtype."""
    de, dg, h = gated_grads(dY, W, dXA, A, e, g, activation, inplace)
    return de, dg, dXA.t() @ h


def gated_grads(
    dY: Tensor, W: Tensor, dXA: Tensor, A: Tensor, e: Tensor, g: Tensor, activation: str,
    inplace: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The kernel alone: ``(de, dg, h)``, as ``down_backward`` describes."""
    BM, BN, BK = _TILE
    (M, K), N, r = dY.shape, W.shape[1], A.shape[0]
    if W.shape[0] != K or dXA.shape != (M, r) or not _aligned(dXA):
        raise ValueError(
            f"lk_autograd down_backward: W {tuple(W.shape)} must be [{K}, {N}] and dXA "
            f"{tuple(dXA.shape)} a TMA-aligned [{M}, {r}]"
        )
    de, dg = (e, g) if inplace else (torch.empty_like(e), torch.empty_like(g))
    h = torch.empty_like(e)
    mk, kn = tile_layout(dY.dtype, BM, BK), tile_layout(dY.dtype, BK, BN)
    descs = [TensorDescriptor.from_tensor(t, [BM, BK], mk) for t in (dY, dXA)]
    descs += [TensorDescriptor.from_tensor(t, [BK, BN], kn) for t in (W, A)]
    tiles = triton.cdiv(M, BM) * (N // BN)
    args = [*descs, e, g, de, dg, h, M, N, K, r]
    options = {"ACTIVATION": _ACTIVATION[activation], "STAGES": _STAGES, "GROUP": _GROUP_M,
               "EPI_WARPS": _EPILOGUE_WARPS, "WORKER_REGS": _WORKER_REGS, "SM": _SUBTILE[0],
               "SN": _SUBTILE[1], "TAIL": M % BM != 0, "num_warps": _WARPGROUP}  # fmt: skip
    launch(_kernel, min(persistent_programs(dY), tiles), args, options, dY.device)
    return de, dg, h


if gluon is not None:

    @gluon.jit
    def _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP: gl.constexpr):
        """Grouped order: GROUP row blocks share each sweep over N (L2 reuse of ``W``)."""
        per_group = GROUP * num_pid_n
        first_m = (tile_id // per_group) * GROUP
        group_rows = min(num_pid_m - first_m, GROUP)
        return first_m + (tile_id % per_group) % group_rows, (tile_id % per_group) // group_rows

    @gluon.jit
    def _load_partition(
        dy_desc, dxa_desc, w_desc, a_desc, a_bufs, b_bufs, ready, empty, num_pid_m, num_pid_n,
        k_tiles, r_tiles, STAGES: gl.constexpr, GROUP: gl.constexpr,
    ):  # fmt: skip
        """Per tile: ``k_tiles`` steps of (``dY``, ``W``), then ``r_tiles`` of (``dXA``, ``A``)."""
        BM: gl.constexpr = dy_desc.block_type.shape[0]
        BK: gl.constexpr = dy_desc.block_type.shape[1]
        BN: gl.constexpr = w_desc.block_type.shape[1]
        nbytes: gl.constexpr = dy_desc.block_type.nbytes + w_desc.block_type.nbytes
        it = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pid_m, pid_n = _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            for kk in range(k_tiles + r_tiles):
                s = it % STAGES
                # The first pass over the ring waits on parity 1 of fresh barriers: at once.
                mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
                mbarrier.expect(ready.index(s), nbytes)  # zero-filled bytes count too
                if kk < k_tiles:
                    _tma_load(dy_desc, [pid_m * BM, kk * BK], ready.index(s), a_bufs.index(s))
                    _tma_load(w_desc, [kk * BK, pid_n * BN], ready.index(s), b_bufs.index(s))
                else:
                    kr = (kk - k_tiles) * BK
                    _tma_load(dxa_desc, [pid_m * BM, kr], ready.index(s), a_bufs.index(s))
                    _tma_load(a_desc, [kr, pid_n * BN], ready.index(s), b_bufs.index(s))
                it += 1

    @gluon.jit
    def _mma_half(
        a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, steps,
        STAGES: gl.constexpr, HALF: gl.constexpr, W_KN: gl.constexpr,
    ):  # fmt: skip
        """One warpgroup's ``m64`` wgmmas over rows ``[64 HALF, 64 HALF + 64)`` of each tile,
        ``steps`` per tile into registers, then its half of the tile into ``c_smem``. Both
        halves wait on the same ``ready`` stages and each arrives on ``empty`` and ``c_ready``
        itself, so neither waits for the other. The ``B`` tiles are ``[BK, BN]`` (``W_KN``) or
        K-major ``[BN, BK]``, read transposed."""
        HALF_ROWS: gl.constexpr = c_smem.shape[0] // 2
        BN: gl.constexpr = c_smem.shape[1]
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16]
        )
        out = c_smem.slice(HALF * HALF_ROWS, HALF_ROWS)
        it = 0
        t = 0
        for _tile in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            acc = gl.zeros((HALF_ROWS, BN), dtype=gl.float32, layout=acc_layout)
            for kk in range(steps):
                s = it % STAGES
                mbarrier.wait(ready.index(s), (it // STAGES) & 1)
                rows = a_bufs.index(s).slice(HALF * HALF_ROWS, HALF_ROWS)
                b = b_bufs.index(s) if W_KN else b_bufs.index(s).permute((1, 0))
                acc = warpgroup_mma(rows, b, acc, use_acc=kk > 0, is_async=True)
                # One wgmma in flight: the one before it (stage s - 1) is done reading.
                acc, _, _ = warpgroup_mma_wait(1, deps=(acc, rows, b))
                mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), count=1, pred=kk > 0)
                it += 1
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), count=1)
            mbarrier.wait(c_empty, (t & 1) ^ 1)  # the epilogue has read the previous tile
            out.store(acc.to(c_smem.dtype))
            _barrier()  # the warpgroup's writes before its single arrive
            fence_async_shared()
            mbarrier.arrive(c_ready, count=1)
            t += 1  # noqa: SIM113 (Gluon loops have no enumerate)

    @gluon.jit
    def _epilogue_partition(
        e_ptr, g_ptr, de_ptr, dg_ptr, h_ptr, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, M,
        N, ACTIVATION: gl.constexpr, SM: gl.constexpr, SN: gl.constexpr, GROUP: gl.constexpr,
        EPI_WARPS: gl.constexpr, TAIL: gl.constexpr,
    ):  # fmt: skip
        """``de``, ``dg`` and ``h`` from each ``dh`` tile, one ``[SM, SN]`` subtile (``subtiles``)
        per iteration of a runtime loop."""
        BM: gl.constexpr = c_smem.shape[0]
        BN: gl.constexpr = c_smem.shape[1]
        NR: gl.constexpr = BM // SM  # row subtiles per column block
        NSUB: gl.constexpr = NR * (BN // SN)
        # row_ids: masks, a subtile's rows below M (TMA zero-fills dh)
        subs, offs, row_ids = subtiles(c_smem, N, NSUB, SM, SN, EPI_WARPS)
        blk: gl.constexpr = offs.type.layout

        num_tiles = num_pid_m * num_pid_n
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        pid_m, pid_n = _tile_mn(pid, num_pid_m, num_pid_n, GROUP)
        first = pid_m * BM * N + pid_n * BN
        first_live = _rows_below(row_ids, M - pid_m * BM, TAIL)
        e_cur = gl.load(e_ptr + first + offs, mask=first_live, eviction_policy="evict_first")
        g_cur = gl.load(g_ptr + first + offs, mask=first_live, eviction_policy="evict_first")
        t = 0
        for tile_id in range(pid, num_tiles, nprog):
            pid_m, pid_n = _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            base = pid_m * BM * N + pid_n * BN
            # The next tile's first subtile is prefetched in the last iteration (after this
            # CTA's last tile, the grid's last tile: read, never used).
            nxt_m, nxt_n = _tile_mn(
                gl.minimum(tile_id + nprog, num_tiles - 1), num_pid_m, num_pid_n, GROUP
            )
            nxt_base = nxt_m * BM * N + nxt_n * BN
            mbarrier.wait(c_ready, t & 1)
            for j in range(NSUB):
                jn = (j + 1) % NSUB
                nb = gl.where(jn == 0, nxt_base, base)
                pn = nb + (jn % NR) * SM * N + (jn // NR) * SN
                rows_left = gl.where(jn == 0, M - nxt_m * BM, M - pid_m * BM) - (jn % NR) * SM
                # Each mask is made where it is used: one carried to the stores spills a
                # GELU-tanh epilogue's registers when M is not a multiple of 16.
                nxt_live = _rows_below(row_ids, rows_left, TAIL)
                e_nxt = gl.load(e_ptr + pn + offs, mask=nxt_live, eviction_policy="evict_first")
                g_nxt = gl.load(g_ptr + pn + offs, mask=nxt_live, eviction_policy="evict_first")
                dh = subs.index(j).load(blk).to(gl.float32)
                ef = e_cur.to(gl.float32)
                gf = g_cur.to(gl.float32)
                a, da = activation_and_derivative(ef, ACTIVATION)
                o = base + (j % NR) * SM * N + (j // NR) * SN + offs
                live = _rows_below(row_ids, M - pid_m * BM - (j % NR) * SM, TAIL)
                gl.store(de_ptr + o, (dh * gf * da).to(de_ptr.dtype.element_ty), mask=live)
                gl.store(dg_ptr + o, (dh * a).to(dg_ptr.dtype.element_ty), mask=live)
                gl.store(h_ptr + o, (a * gf).to(h_ptr.dtype.element_ty), mask=live)
                e_cur = e_nxt
                g_cur = g_nxt
            _barrier()  # both warps have read the whole tile
            mbarrier.arrive(c_empty, count=1)
            t += 1  # noqa: SIM113 (Gluon loops have no enumerate)

    @gluon.jit
    def subtiles(
        c_smem, N, NSUB: gl.constexpr, SM: gl.constexpr, SN: gl.constexpr,
        EPI_WARPS: gl.constexpr,
    ):  # fmt: skip
        """An epilogue's view of its 128-byte-swizzled ``[BM, BN]`` tile (``_ws_gated``'s
        too): ``(subs, offs, row_ids)``, the tile reinterpreted as ``NSUB`` ``[SM, SN]``
        subtiles (``BN / SN`` column blocks of ``[BM, SN]``, each row 128 bytes, column block
        major), a subtile's element offsets in a row-major ``[*, N]`` output and its row
        indices ``[SM, 1]``; ``offs.type.layout`` is the blocked layout to load subtiles in
        (8-element vectors across a row, ``EPI_WARPS`` warps down the rows)."""
        VEC: gl.constexpr = 8
        blk: gl.constexpr = gl.BlockedLayout(
            [1, VEC], [32 // (SN // VEC), SN // VEC], [EPI_WARPS, 1], [1, 0]
        )
        sub_layout: gl.constexpr = gl.NVMMASharedLayout(128, 16, rank=2)  # leading dim: batch
        if _PUBLIC_REINTERPRET:
            subs = c_smem.reinterpret(c_smem.dtype, [NSUB, SM, SN], sub_layout)
        else:
            subs = c_smem._reinterpret(c_smem.dtype, [NSUB, SM, SN], sub_layout)
        rows = gl.arange(0, SM, layout=gl.SliceLayout(1, blk))
        cols = gl.arange(0, SN, layout=gl.SliceLayout(0, blk))
        offs = gl.expand_dims(rows, 1) * N + gl.expand_dims(cols, 0)
        row_ids = gl.expand_dims(rows, 1)
        return subs, offs, row_ids

    @gluon.jit
    def _rows_below(row_ids, bound, TAIL: gl.constexpr):
        """``row_ids < bound`` where the last row block is partial (``TAIL``); else all true,
        which the compiler folds away: whole row blocks run no mask code."""
        all_rows = gl.full(row_ids.shape, 1, gl.int1, row_ids.type.layout)
        return row_ids < bound if TAIL else all_rows

    @gluon.jit
    def _shared_state(
        dy_desc, w_desc, BN: gl.constexpr, STAGES: gl.constexpr, MMA_GROUPS: gl.constexpr,
        W_TILES: gl.constexpr,
    ):  # fmt: skip
        """The kernel's shared memory: a ``STAGES``-deep ring of ``dY`` / ``W`` tiles (each
        descriptor's block; ``W_TILES`` of ``W``'s stacked on rows per slot) with its
        ``ready`` (TMA landed) and ``empty`` (read) barriers, and the one ``[BM, BN]`` ``dh``
        tile with ``c_ready`` (written) and ``c_empty`` (read). ``MMA_GROUPS`` partitions
        each release every stage and write part of the tile, each arriving once."""
        BM: gl.constexpr = dy_desc.block_type.shape[0]
        BK: gl.constexpr = dy_desc.block_type.shape[1]
        W0: gl.constexpr = w_desc.block_type.shape[0]
        W1: gl.constexpr = w_desc.block_type.shape[1]
        dtype: gl.constexpr = dy_desc.dtype
        a_bufs = gl.allocate_shared_memory(dtype, [STAGES, BM, BK], dy_desc.layout)
        b_bufs = gl.allocate_shared_memory(dtype, [STAGES, W0 * W_TILES, W1], w_desc.layout)
        c_smem = gl.allocate_shared_memory(dtype, [BM, BN], gl.NVMMASharedLayout(128, 16))
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        c_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        c_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=MMA_GROUPS)
        mbarrier.init(c_ready, count=MMA_GROUPS)
        mbarrier.init(c_empty, count=1)
        return a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty

    @gluon.jit
    def _invalidate(ready, empty, c_ready, c_empty, STAGES: gl.constexpr):
        """``_shared_state``'s barriers, once every partition is done."""
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
            mbarrier.invalidate(empty.index(i))
        mbarrier.invalidate(c_ready)
        mbarrier.invalidate(c_empty)

    @gluon.jit
    def _kernel(
        dy_desc, dxa_desc, w_desc, a_desc, e_ptr, g_ptr, de_ptr, dg_ptr, h_ptr, M, N, K, r,
        ACTIVATION: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr,
        EPI_WARPS: gl.constexpr, WORKER_REGS: gl.constexpr, SM: gl.constexpr, SN: gl.constexpr,
        TAIL: gl.constexpr,
    ):  # fmt: skip
        BM: gl.constexpr = dy_desc.block_type.shape[0]
        BK: gl.constexpr = dy_desc.block_type.shape[1]
        BN: gl.constexpr = w_desc.block_type.shape[1]
        a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty = _shared_state(
            dy_desc, w_desc, BN, STAGES, 2, 1
        )

        num_pid_m = gl.cdiv(M, BM)
        num_pid_n = gl.cdiv(N, BN)
        k_tiles = gl.cdiv(K, BK)
        r_tiles = gl.cdiv(r, BK)
        steps = k_tiles + r_tiles
        gl.warp_specialize(
            [
                (_mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m,
                             num_pid_n, steps, STAGES, 0, True)),
                (_mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m,
                             num_pid_n, steps, STAGES, 1, True)),
                (_load_partition, (dy_desc, dxa_desc, w_desc, a_desc, a_bufs, b_bufs, ready,
                                   empty, num_pid_m, num_pid_n, k_tiles, r_tiles, STAGES,
                                   GROUP)),
                (_epilogue_partition, (e_ptr, g_ptr, de_ptr, dg_ptr, h_ptr, c_smem, c_ready,
                                       c_empty, num_pid_m, num_pid_n, M, N, ACTIVATION, SM, SN,
                                       GROUP, EPI_WARPS, TAIL)),
            ],
            [4, 1, EPI_WARPS],  # the second MMA warpgroup, the loader, the epilogue
            [WORKER_REGS, WORKER_REGS, WORKER_REGS],
        )  # fmt: skip
        _invalidate(ready, empty, c_ready, c_empty, STAGES)
