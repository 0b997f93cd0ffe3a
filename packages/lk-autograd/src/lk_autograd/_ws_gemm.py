"""``_gemm.lora_matmul``'s sums as a warp-specialized Gluon GEMM (Hopper), over
``_down_backward``'s mainloop. Off by default (``set_ws_gemm``): not yet run on a GPU.

With ``X`` ``[M, K]``, a rank-``r`` pair ``XA`` ``[M, r]``, ``U`` and up to two more base pairs
``X_j W_j`` (each with its own ``K_j``)::

    Y = X W^T + s XA U^T (+ X_j W_j^T ...)   W [N, K], U = B [N, r]   (a projection's output)
    Y = X W   + s XA U   (+ X_j W_j ...)     W [K, N], U = A [r, N]   (an input gradient)

in one fp32 accumulator per tile and one store: o's and down's forwards, o's input gradient
(one pair), gate and up's (two), q, k and v's (three). ``_gemm`` computes the same sums in a
pipelined Triton kernel whose K loop runs four CTA-wide ``bar.sync`` per step (PTX, Triton
3.6). Here the partitions are ``_down_backward``'s: a one-warp TMA loader walks each tile's
pairs in turn and then ``ceil(r / 64)`` steps of ``(XA, U)`` through the same 3-stage ring,
two one-warpgroup ``m64`` wgmma consumers (``_mma_half``) take the tile's halves (a K-major
``W`` tile, ``[BN, BK]``, goes to the wgmma transposed), and a one-warp epilogue stores the
finished ``[128, 256]`` tile from shared memory by TMA (which clips the edges: any ``M``,
``N`` and ``K_j``; TMA zero-fills the loads past them). ``s`` is folded into ``XA`` first
(``XA s`` rounded to ``XA``'s dtype, as ``_gemm`` does in registers). A base bias is left to
``_gemm``. ``ws_lora_matmul_group`` runs q, k and v's forwards (``_gemm.lora_matmul_group``'s
sums) on the same partitions, with a loader and a store warp that pick each tile's projection.

Measured on an H100 (BENCHMARKS.md, twenty-fifth session, ``gluon_dx.py``: one input-gradient
pair, with one 8-warp consumer then): 0.391 ms at o's ``8192 x 4096 x 4096`` against 0.400
for ``_gemm`` and 0.384 for cuBLAS's bare ``dY W``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lk_triton._launch import launch

from . import _down_backward as db
from . import _gemm
from ._gemm import _DTYPES, _aligned, _output_aligned, persistent_programs

_MAX_PAIRS = 3  # q, k and v's input gradient
_enabled = False


def set_ws_gemm(enabled: bool) -> None:
    """Route the 16-bit sums ``_linear`` fuses (a projection's output without a base bias, an
    input gradient) through this kernel, q, k and v's forwards (``_plain``) through its group,
    and gate, up and the activation through ``_ws_gated``'s (``enabled``), or through
    ``_gemm``'s kernels (the default). Both compute the same sums; ``set_fused_gemm(False)``
    turns both off."""
    global _enabled
    _enabled = bool(enabled)


def fusable_ws(
    X: Tensor,
    W: Tensor,
    XA: Tensor,
    U: Tensor,
    w_kn: bool,
    more: Sequence[tuple[Tensor, Tensor]] = (),
    bias: Tensor | None = None,
) -> bool:
    """True when ``ws_lora_matmul`` can and should run: switched on (``set_ws_gemm``), no
    bias, Gluon's API, eager, enabled, an NVIDIA sm_90 GPU, at most two more pairs, one 16-bit
    dtype, every pair adding onto one ``[M, N]`` output of at least ``_gemm._MIN_OUTPUT``
    elements with 16-byte rows, TMA-aligned operands, a rank that is a multiple of 8."""
    if not _enabled or bias is not None or len(more) >= _MAX_PAIRS or not db.gluon_runs_here(X):
        return False
    (M, r), pairs = XA.shape, [(X, W), *more]
    N = U.shape[1] if w_kn else U.shape[0]
    tensors = [XA, U, *(t for pair in pairs for t in pair)]
    if X.dtype not in _DTYPES or any(t.dtype != X.dtype for t in tensors):
        return False
    if U.shape != ((r, N) if w_kn else (N, r)) or r % 8 or M * N < _gemm._MIN_OUTPUT:
        return False
    if not _output_aligned(N, X):
        return False
    shape = (lambda K: (K, N)) if w_kn else (lambda K: (N, K))
    fits = all(X_j.shape[0] == M and W_j.shape == shape(X_j.shape[1]) for X_j, W_j in pairs)
    return fits and all(_aligned(t) for t in tensors)


def ws_lora_matmul(
    X: Tensor,
    W: Tensor,
    XA: Tensor,
    U: Tensor,
    s: float,
    w_kn: bool,
    more: Sequence[tuple[Tensor, Tensor]] = (),
) -> Tensor:
    """``X W^T + s XA U^T`` (``w_kn=False``) or ``X W + s XA U`` (``w_kn=True``), plus each
    pair of ``more`` the same way: ``_gemm.lora_matmul``'s sum without a bias. The caller
    checks ``fusable_ws`` first."""
    BM, BN, BK = db._TILE
    M, N, r = X.shape[0], U.shape[1] if w_kn else U.shape[0], XA.shape[1]
    w_block = [BK, BN] if w_kn else [BN, BK]
    mk, w_layout = db.tile_layout(X.dtype, BM, BK), db.tile_layout(X.dtype, *w_block)

    def pair(X_j: Tensor, W_j: Tensor) -> tuple:
        return (TensorDescriptor.from_tensor(X_j, [BM, BK], mk),
                TensorDescriptor.from_tensor(W_j, w_block, w_layout), X_j.shape[1])  # fmt: skip

    pairs = [pair(X, W), *(pair(X_j, W_j) for X_j, W_j in more)]
    pairs += [(*pairs[0][:2], 0)] * (_MAX_PAIRS - len(pairs))  # absent pairs: K = 0
    Y = torch.empty(M, N, device=X.device, dtype=X.dtype)
    args = [
        *(t for p in pairs for t in p),
        *pair(XA if s == 1 else XA * s, U)[:2],
        TensorDescriptor.from_tensor(Y, [BM, BN], db.tile_buffer_layout()),
        M, N, r,
    ]  # fmt: skip
    options = {"STAGES": db._STAGES, "GROUP": db._GROUP_M, "W_KN": w_kn,
               "WORKER_REGS": db._WORKER_REGS, "num_warps": db._WARPGROUP}  # fmt: skip
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    launch(_kernel, min(persistent_programs(X), tiles), args, options, X.device)
    return Y


def fusable_ws_group(
    X: Tensor,
    Ws: Sequence[Tensor],
    XAs: Sequence[Tensor],
    Us: Sequence[Tensor],
    biases: Sequence[Tensor | None] | None = None,
) -> bool:
    """True when ``ws_lora_matmul_group`` can and should run: switched on, no bias, Gluon's
    API, eager, enabled, an NVIDIA sm_90 GPU, two or three projections of ``X`` (``[N_j, K]``
    weights, ``U_j = B_j`` ``[N_j, r_j]``), one 16-bit dtype, ranks that are multiples of 8,
    outputs of at least ``_gemm._MIN_OUTPUT`` elements together with 16-byte rows, TMA-aligned
    operands."""
    if not _enabled or any(b is not None for b in biases or ()) or not db.gluon_runs_here(X):
        return False
    if (
        not 1 < len(Ws) <= _MAX_PAIRS
        or X.shape[0] * sum(W.shape[0] for W in Ws) < _gemm._MIN_OUTPUT
    ):
        return False
    return projections_fit(X, Ws, XAs, Us)


def projections_fit(
    X: Tensor, Ws: Sequence[Tensor], XAs: Sequence[Tensor], Us: Sequence[Tensor]
) -> bool:
    """The operands of projections ``X W_j^T + s_j XA_j U_j^T`` of one input (the group's,
    ``_ws_gated``'s) that these kernels take: one 16-bit dtype, ``W_j`` ``[N_j, K]``, ``XA_j``
    ``[M, r_j]`` with ``r_j`` a multiple of 8, ``U_j`` ``[N_j, r_j]``, outputs with 16-byte
    rows, TMA-aligned operands."""
    (M, K), tensors = X.shape, [X, *Ws, *XAs, *Us]
    if X.dtype not in _DTYPES or any(t.dtype != X.dtype for t in tensors):
        return False
    for W, XA, U in zip(Ws, XAs, Us, strict=True):
        r = XA.shape[1]
        if W.shape[1] != K or XA.shape[0] != M or r % 8 or U.shape != (W.shape[0], r):
            return False
        if not _output_aligned(W.shape[0], X):
            return False
    return all(_aligned(t) for t in tensors)


def ws_lora_matmul_group(
    X: Tensor,
    Ws: Sequence[Tensor],
    XAs: Sequence[Tensor],
    Us: Sequence[Tensor],
    ss: Sequence[float],
) -> list[Tensor]:
    """``[X W_j^T + s_j XA_j U_j^T for each j]``, two or three projections of one ``X`` (q, k
    and v) in one launch: ``_gemm.lora_matmul_group``'s sums without a bias. The outputs'
    column tiles are numbered one after the other, as if ``[Y_0 | Y_1 | Y_2]`` were one
    output, and each tile's loads and store go to its projection's tensors. Every tile runs
    ``ceil(max_j r_j / 64)`` rank steps (TMA zero-fills each ``XA_j`` past ``r_j``), so the
    MMA partitions see one step count. The caller checks ``fusable_ws_group`` first."""
    BM, BN, BK = db._TILE
    M, K = X.shape
    mk, nk = db.tile_layout(X.dtype, BM, BK), db.tile_layout(X.dtype, BN, BK)
    y_layout = db.tile_buffer_layout()
    outs = [torch.empty(M, W.shape[0], device=X.device, dtype=X.dtype) for W in Ws]
    per_output = []
    for W, XA, U, Y, s in zip(Ws, XAs, Us, outs, ss, strict=True):
        per_output += (TensorDescriptor.from_tensor(W, [BN, BK], nk),
                       TensorDescriptor.from_tensor(XA if s == 1 else XA * s, [BM, BK], mk),
                       TensorDescriptor.from_tensor(U, [BN, BK], nk),
                       TensorDescriptor.from_tensor(Y, [BM, BN], y_layout))  # fmt: skip
    per_output += per_output[:4] * (_MAX_PAIRS - len(Ws))  # an absent third: no column tiles
    col_tiles = [triton.cdiv(W.shape[0], BN) for W in Ws] + [0] * (_MAX_PAIRS - len(Ws))
    rank = max(XA.shape[1] for XA in XAs)
    args = [TensorDescriptor.from_tensor(X, [BM, BK], mk), *per_output, K, rank, *col_tiles, M]
    options = {"STAGES": db._STAGES, "GROUP": db._GROUP_M, "WORKER_REGS": db._WORKER_REGS,
               "num_warps": db._WARPGROUP}  # fmt: skip
    tiles = triton.cdiv(M, BM) * sum(col_tiles)
    launch(_group_kernel, min(persistent_programs(X), tiles), args, options, X.device)
    return outs


if db.gluon is not None:
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # Renamed after Triton 3.6 (there: async_copy_shared_to_global).
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global

    @gluon.jit
    def _load_pair(
        x_desc, w_desc, K, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty,
        STAGES: gl.constexpr, W_KN: gl.constexpr,
    ):  # fmt: skip
        """One pair's ``ceil(K / BK)`` K steps into the ring from slot ``it``; the next slot.
        ``W``'s tile is ``[BK, BN]`` (``W_KN``) or K-major ``[BN, BK]``."""
        BM: gl.constexpr = x_desc.block_type.shape[0]
        BK: gl.constexpr = x_desc.block_type.shape[1]
        BN: gl.constexpr = w_desc.block_type.shape[1] if W_KN else w_desc.block_type.shape[0]
        nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
        for kk in range(gl.cdiv(K, BK)):
            s = it % STAGES
            # The first pass over the ring waits on parity 1 of fresh barriers: at once.
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), nbytes)  # zero-filled bytes count too
            db._tma_load(x_desc, [pid_m * BM, kk * BK], ready.index(s), a_bufs.index(s))
            if W_KN:
                db._tma_load(w_desc, [kk * BK, pid_n * BN], ready.index(s), b_bufs.index(s))
            else:
                db._tma_load(w_desc, [pid_n * BN, kk * BK], ready.index(s), b_bufs.index(s))
            it += 1
        return it

    @gluon.jit
    def _load_partition(
        x0, w0, K0, x1, w1, K1, x2, w2, K2, xa_desc, u_desc, r, a_bufs, b_bufs, ready, empty,
        num_pid_m, num_pid_n, STAGES: gl.constexpr, GROUP: gl.constexpr, W_KN: gl.constexpr,
    ):  # fmt: skip
        """Per tile: each base pair's K steps in turn (none for an absent pair, ``K = 0``),
        then the rank pair's."""
        it = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pm, pn = db._tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            it = _load_pair(x0, w0, K0, pm, pn, it, a_bufs, b_bufs, ready, empty, STAGES, W_KN)
            it = _load_pair(x1, w1, K1, pm, pn, it, a_bufs, b_bufs, ready, empty, STAGES, W_KN)
            it = _load_pair(x2, w2, K2, pm, pn, it, a_bufs, b_bufs, ready, empty, STAGES, W_KN)
            it = _load_pair(xa_desc, u_desc, r, pm, pn, it, a_bufs, b_bufs, ready, empty, STAGES,
                            W_KN)  # fmt: skip

    @gluon.jit
    def _store_partition(
        y_desc, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, GROUP: gl.constexpr
    ):
        """Each finished tile from shared memory to ``Y`` by TMA; the buffer is released once
        TMA has read it."""
        BM: gl.constexpr = c_smem.shape[0]
        BN: gl.constexpr = c_smem.shape[1]
        t = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pid_m, pid_n = db._tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            mbarrier.wait(c_ready, t & 1)
            _tma_store(y_desc, [pid_m * BM, pid_n * BN], c_smem)
            tma.store_wait(0)
            mbarrier.arrive(c_empty, count=1)
            t += 1  # noqa: SIM113 (Gluon loops have no enumerate)

    @gluon.jit
    def _kernel(
        x0, w0, K0, x1, w1, K1, x2, w2, K2, xa_desc, u_desc, y_desc, M, N, r,
        STAGES: gl.constexpr, GROUP: gl.constexpr, W_KN: gl.constexpr,
        WORKER_REGS: gl.constexpr,
    ):  # fmt: skip
        BM: gl.constexpr = y_desc.block_type.shape[0]
        BK: gl.constexpr = x0.block_type.shape[1]
        BN: gl.constexpr = y_desc.block_type.shape[1]
        # c_smem's layout is y_desc's (_down_backward.tile_buffer_layout)
        a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty = db._shared_state(
            x0, w0, BN, STAGES, 2, 1
        )
        num_pid_m = gl.cdiv(M, BM)
        num_pid_n = gl.cdiv(N, BN)
        steps = gl.cdiv(K0, BK) + gl.cdiv(K1, BK) + gl.cdiv(K2, BK) + gl.cdiv(r, BK)
        gl.warp_specialize(
            [
                (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                                num_pid_m, num_pid_n, steps, STAGES, 0, W_KN)),
                (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                                num_pid_m, num_pid_n, steps, STAGES, 1, W_KN)),
                (_load_partition, (x0, w0, K0, x1, w1, K1, x2, w2, K2, xa_desc, u_desc, r,
                                   a_bufs, b_bufs, ready, empty, num_pid_m, num_pid_n, STAGES,
                                   GROUP, W_KN)),
                (_store_partition, (y_desc, c_smem, c_ready, c_empty, num_pid_m, num_pid_n,
                                    GROUP)),
            ],
            [4, 1, 1],  # the second MMA warpgroup, the loader, the store
            [WORKER_REGS, WORKER_REGS, WORKER_REGS],
        )  # fmt: skip
        db._invalidate(ready, empty, c_ready, c_empty, STAGES)

    @gluon.jit
    def _group_load_partition(
        x_desc, K, w0, xa0, u0, w1, xa1, u1, w2, xa2, u2, R, n0, n1, a_bufs, b_bufs, ready,
        empty, num_pid_m, num_pid_n, STAGES: gl.constexpr, GROUP: gl.constexpr,
    ):  # fmt: skip
        """Per tile of ``[Y_0 | Y_1 | Y_2]`` (``n_j`` column tiles each): its projection's
        base K steps, then its rank pair's ``R`` (the largest rank)."""
        it = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pm, pn = db._tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            if pn < n0:
                it = _load_pair(x_desc, w0, K, pm, pn, it, a_bufs, b_bufs, ready, empty,
                                STAGES, False)  # fmt: skip
                it = _load_pair(xa0, u0, R, pm, pn, it, a_bufs, b_bufs, ready, empty, STAGES,
                                False)  # fmt: skip
            elif pn < n0 + n1:
                it = _load_pair(x_desc, w1, K, pm, pn - n0, it, a_bufs, b_bufs, ready, empty,
                                STAGES, False)  # fmt: skip
                it = _load_pair(xa1, u1, R, pm, pn - n0, it, a_bufs, b_bufs, ready, empty,
                                STAGES, False)  # fmt: skip
            else:
                pn2 = pn - n0 - n1
                it = _load_pair(x_desc, w2, K, pm, pn2, it, a_bufs, b_bufs, ready, empty,
                                STAGES, False)  # fmt: skip
                it = _load_pair(xa2, u2, R, pm, pn2, it, a_bufs, b_bufs, ready, empty, STAGES,
                                False)  # fmt: skip

    @gluon.jit
    def _group_store_partition(
        y0, y1, y2, n0, n1, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, GROUP: gl.constexpr
    ):
        """``_store_partition`` for the group: each tile into its projection's output."""
        BM: gl.constexpr = c_smem.shape[0]
        BN: gl.constexpr = c_smem.shape[1]
        t = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pm, pn = db._tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            mbarrier.wait(c_ready, t & 1)
            if pn < n0:
                _tma_store(y0, [pm * BM, pn * BN], c_smem)
            elif pn < n0 + n1:
                _tma_store(y1, [pm * BM, (pn - n0) * BN], c_smem)
            else:
                _tma_store(y2, [pm * BM, (pn - n0 - n1) * BN], c_smem)
            tma.store_wait(0)
            mbarrier.arrive(c_empty, count=1)
            t += 1  # noqa: SIM113 (Gluon loops have no enumerate)

    @gluon.jit
    def _group_kernel(
        x_desc, w0, xa0, u0, y0, w1, xa1, u1, y1, w2, xa2, u2, y2, K, R, n0, n1, n2, M,
        STAGES: gl.constexpr, GROUP: gl.constexpr, WORKER_REGS: gl.constexpr,
    ):  # fmt: skip
        BM: gl.constexpr = y0.block_type.shape[0]
        BK: gl.constexpr = x_desc.block_type.shape[1]
        BN: gl.constexpr = y0.block_type.shape[1]
        a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty = db._shared_state(
            x_desc, w0, BN, STAGES, 2, 1
        )
        num_pid_m = gl.cdiv(M, BM)
        num_pid_n = n0 + n1 + n2
        steps = gl.cdiv(K, BK) + gl.cdiv(R, BK)
        gl.warp_specialize(
            [
                (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                                num_pid_m, num_pid_n, steps, STAGES, 0, False)),
                (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                                num_pid_m, num_pid_n, steps, STAGES, 1, False)),
                (_group_load_partition, (x_desc, K, w0, xa0, u0, w1, xa1, u1, w2, xa2, u2, R,
                                         n0, n1, a_bufs, b_bufs, ready, empty, num_pid_m,
                                         num_pid_n, STAGES, GROUP)),
                (_group_store_partition, (y0, y1, y2, n0, n1, c_smem, c_ready, c_empty,
                                          num_pid_m, num_pid_n, GROUP)),
            ],
            [4, 1, 1],  # the second MMA warpgroup, the loader, the store
            [WORKER_REGS, WORKER_REGS, WORKER_REGS],
        )  # fmt: skip
        db._invalidate(ready, empty, c_ready, c_empty, STAGES)
