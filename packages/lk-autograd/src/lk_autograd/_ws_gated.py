"""``_gemm.gated_lora_matmul`` (gate, up and the gated activation in one kernel) as a
warp-specialized Gluon GEMM (Hopper), over ``_down_backward``'s mainloop. Off by default with
the rest of ``_ws_gemm`` (``set_ws_gemm``): not yet run on a GPU.

With ``X`` ``[M, K]``, gate's and up's weights ``W_g``, ``W_u`` ``[N, K]`` and adapters
``XA_g B_g^T``, ``XA_u B_u^T``::

    e = X W_g^T + s_g XA_g B_g^T    g = X W_u^T + s_u XA_u B_u^T    h = act(e) g

``e`` and ``g`` rounded to ``X``'s dtype before ``h`` is computed from them. Each output tile
is ``[128, 128]`` of ``e`` and of ``g`` side by side: every ring slot holds the ``X`` tile and
the K-major ``W_g`` and ``W_u`` tiles stacked into one ``[256, 64]`` operand, so the MMA
partitions (``_down_backward._mma_half``) accumulate ``[e | g]`` as one ``128 x 256`` tile,
unchanged. The two adapters are one rank pair: ``[XA_g s_g | XA_u s_u]`` ``[M, r_g + r_u]``
against ``[B_g, 0]`` and ``[0, B_u]`` (built on the host, ``[N, r_g + r_u]`` each), so the
rank steps add ``s_g XA_g B_g^T`` to ``e``'s columns and ``s_u XA_u B_u^T`` to ``g``'s. The
epilogue (2 warps) walks the ``[e | g]`` tile in ``[32, 64]`` subtiles as
``_down_backward``'s does and stores ``e``, ``g`` and ``h``; only a partial last row block
(``TAIL``) is masked, so ``N`` must be a multiple of 128.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lk_triton._launch import launch

from . import _down_backward as db
from . import _gemm, _ws_gemm
from ._gemm import persistent_programs

_HALF_TILE = 128  # columns of e (and of g) per tile


def fusable_ws_gated(
    X: Tensor, Ws: Sequence[Tensor], XAs: Sequence[Tensor], Us: Sequence[Tensor]
) -> bool:
    """True when ``ws_gated_lora_matmul`` can and should run: ``_ws_gemm`` switched on, Gluon's
    API, eager, enabled, an NVIDIA sm_90 GPU, gate and up weights of one ``[N, K]`` with ``N``
    a multiple of 128, one 16-bit dtype, ranks that are multiples of 8, outputs of at least
    ``_gemm._MIN_OUTPUT`` elements together and under ``2^31`` each (int32 offsets),
    TMA-aligned operands, at least 128 tokens."""
    if not _ws_gemm._enabled or len(Ws) != 2 or not db.gluon_runs_here(X):
        return False
    (M, N), BM = (X.shape[0], Ws[0].shape[0]), db._TILE[0]
    if Ws[1].shape[0] != N or N % _HALF_TILE or M < BM:
        return False
    if 2 * M * N < _gemm._MIN_OUTPUT or M * N >= db._INT32_LIMIT:
        return False
    return _ws_gemm.projections_fit(X, Ws, XAs, Us)


def ws_gated_lora_matmul(
    X: Tensor,
    Ws: Sequence[Tensor],
    XAs: Sequence[Tensor],
    Us: Sequence[Tensor],
    ss: Sequence[float],
    activation: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(e, g, h)`` as the module docstring says; ``activation`` is ``"silu"``, ``"gelu"``
    or ``"gelu_tanh"``. The caller checks ``fusable_ws_gated`` first."""
    BM, _, BK = db._TILE
    (M, K), N = X.shape, Ws[0].shape[0]
    (XA_g, XA_u), (B_g, B_u), (s_g, s_u) = XAs, Us, ss
    XA = torch.cat([XA_g if s_g == 1 else XA_g * s_g, XA_u if s_u == 1 else XA_u * s_u], 1)
    U_g = torch.cat([B_g, B_g.new_zeros(N, XA_u.shape[1])], 1)
    U_u = torch.cat([B_u.new_zeros(N, XA_g.shape[1]), B_u], 1)
    mk, nk = db.tile_layout(X.dtype, BM, BK), db.tile_layout(X.dtype, _HALF_TILE, BK)
    e, g, h = (torch.empty(M, N, device=X.device, dtype=X.dtype) for _ in range(3))
    args = [
        TensorDescriptor.from_tensor(X, [BM, BK], mk),
        *(TensorDescriptor.from_tensor(W, [_HALF_TILE, BK], nk) for W in Ws), K,
        TensorDescriptor.from_tensor(XA, [BM, BK], mk),
        *(TensorDescriptor.from_tensor(U, [_HALF_TILE, BK], nk) for U in (U_g, U_u)),
        XA.shape[1], e, g, h, M, N,
    ]  # fmt: skip
    options = {"ACTIVATION": _gemm._ACTIVATION[activation], "STAGES": db._STAGES,
               "GROUP": db._GROUP_M, "EPI_WARPS": db._EPILOGUE_WARPS,
               "WORKER_REGS": db._WORKER_REGS, "SM": db._SUBTILE[0], "SN": db._SUBTILE[1],
               "TAIL": M % BM != 0, "num_warps": db._WARPGROUP}  # fmt: skip
    tiles = triton.cdiv(M, BM) * (N // _HALF_TILE)
    launch(_kernel, min(persistent_programs(X), tiles), args, options, X.device)
    return e, g, h


if db.gluon is not None:
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from lk_triton._kernels import activation_and_derivative

    @gluon.jit
    def _load_gated_pair(
        x_desc, wg_desc, wu_desc, K, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty,
        STAGES: gl.constexpr,
    ):  # fmt: skip
        """``ceil(K / BK)`` K steps from slot ``it``: the ``X`` tile, and the ``W_g`` and
        ``W_u`` tiles into the top and bottom rows of one ``B`` slot; the next slot."""
        BM: gl.constexpr = x_desc.block_type.shape[0]
        BK: gl.constexpr = x_desc.block_type.shape[1]
        BH: gl.constexpr = wg_desc.block_type.shape[0]
        nbytes: gl.constexpr = x_desc.block_type.nbytes + 2 * wg_desc.block_type.nbytes
        for kk in range(gl.cdiv(K, BK)):
            s = it % STAGES
            # The first pass over the ring waits on parity 1 of fresh barriers: at once.
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), nbytes)  # zero-filled bytes count too
            b = b_bufs.index(s)
            db._tma_load(x_desc, [pid_m * BM, kk * BK], ready.index(s), a_bufs.index(s))
            db._tma_load(wg_desc, [pid_n * BH, kk * BK], ready.index(s), b.slice(0, BH))
            db._tma_load(wu_desc, [pid_n * BH, kk * BK], ready.index(s), b.slice(BH, BH))
            it += 1
        return it

    @gluon.jit
    def _load_partition(
        x_desc, wg_desc, wu_desc, K, xa_desc, ug_desc, uu_desc, R, a_bufs, b_bufs, ready,
        empty, num_pid_m, num_pid_n, STAGES: gl.constexpr, GROUP: gl.constexpr,
    ):  # fmt: skip
        """Per tile: the base K steps, then the rank pair's."""
        it = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pm, pn = db._tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            it = _load_gated_pair(x_desc, wg_desc, wu_desc, K, pm, pn, it, a_bufs, b_bufs,
                                  ready, empty, STAGES)  # fmt: skip
            it = _load_gated_pair(xa_desc, ug_desc, uu_desc, R, pm, pn, it, a_bufs, b_bufs,
                                  ready, empty, STAGES)  # fmt: skip

    @gluon.jit
    def _epilogue_partition(
        e_ptr, g_ptr, h_ptr, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, M, N,
        ACTIVATION: gl.constexpr, SM: gl.constexpr, SN: gl.constexpr, GROUP: gl.constexpr,
        EPI_WARPS: gl.constexpr, TAIL: gl.constexpr,
    ):  # fmt: skip
        """``e``, ``g`` and ``h`` from each ``[e | g]`` tile, one ``[SM, SN]`` subtile of
        ``e`` and its subtile of ``g`` per iteration (``_down_backward.subtiles``: ``e``'s
        subtiles first, then ``g``'s)."""
        BM: gl.constexpr = c_smem.shape[0]
        BH: gl.constexpr = c_smem.shape[1] // 2
        NR: gl.constexpr = BM // SM  # row subtiles per column block
        NE: gl.constexpr = NR * (BH // SN)  # e's subtiles
        subs, offs, row_ids = db.subtiles(c_smem, N, 2 * NE, SM, SN, EPI_WARPS)
        blk: gl.constexpr = offs.type.layout
        t = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pid_m, pid_n = db._tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            base = pid_m * BM * N + pid_n * BH
            mbarrier.wait(c_ready, t & 1)
            for j in range(NE):
                e = subs.index(j).load(blk)
                g = subs.index(j + NE).load(blk)
                a, _ = activation_and_derivative(e.to(gl.float32), ACTIVATION)
                o = base + (j % NR) * SM * N + (j // NR) * SN + offs
                live = db._rows_below(row_ids, M - pid_m * BM - (j % NR) * SM, TAIL)
                gl.store(e_ptr + o, e, mask=live)
                gl.store(g_ptr + o, g, mask=live)
                gl.store(h_ptr + o, (a * g.to(gl.float32)).to(h_ptr.dtype.element_ty), mask=live)
            db._barrier()  # both warps have read the whole tile
            mbarrier.arrive(c_empty, count=1)
            t += 1  # noqa: SIM113 (Gluon loops have no enumerate)

    @gluon.jit
    def _kernel(
        x_desc, wg_desc, wu_desc, K, xa_desc, ug_desc, uu_desc, R, e_ptr, g_ptr, h_ptr, M, N,
        ACTIVATION: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr,
        EPI_WARPS: gl.constexpr, WORKER_REGS: gl.constexpr, SM: gl.constexpr, SN: gl.constexpr,
        TAIL: gl.constexpr,
    ):  # fmt: skip
        BM: gl.constexpr = x_desc.block_type.shape[0]
        BK: gl.constexpr = x_desc.block_type.shape[1]
        BH: gl.constexpr = wg_desc.block_type.shape[0]
        a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty = db._shared_state(
            x_desc, wg_desc, 2 * BH, STAGES, 2, 2
        )
        num_pid_m = gl.cdiv(M, BM)
        num_pid_n = gl.cdiv(N, BH)
        steps = gl.cdiv(K, BK) + gl.cdiv(R, BK)
        gl.warp_specialize(
            [
                (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                                num_pid_m, num_pid_n, steps, STAGES, 0, False)),
                (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                                num_pid_m, num_pid_n, steps, STAGES, 1, False)),
                (_load_partition, (x_desc, wg_desc, wu_desc, K, xa_desc, ug_desc, uu_desc, R,
                                   a_bufs, b_bufs, ready, empty, num_pid_m, num_pid_n, STAGES,
                                   GROUP)),
                (_epilogue_partition, (e_ptr, g_ptr, h_ptr, c_smem, c_ready, c_empty,
                                       num_pid_m, num_pid_n, M, N, ACTIVATION, SM, SN, GROUP,
                                       EPI_WARPS, TAIL)),
            ],
            [4, 1, EPI_WARPS],  # the second MMA warpgroup, the loader, the epilogue
            [WORKER_REGS, WORKER_REGS, WORKER_REGS],
        )  # fmt: skip
        db._invalidate(ready, empty, c_ready, c_empty, STAGES)
