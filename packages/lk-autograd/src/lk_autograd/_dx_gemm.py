"""An input gradient as a warp-specialized Gluon GEMM (Hopper): ``_gemm``'s ``w_kn=True`` sum
over ``_down_backward``'s mainloop.

With one to three base pairs ``dY_j`` ``[M, K_j]``, ``W_j`` ``[K_j, N]`` (as ``nn.Linear``
stores them) and the adapters' ``dXA`` ``[M, r]`` (scales already in it) and ``A`` ``[r, N]``::

    dX = dY_0 W_0 + dY_1 W_1 + dY_2 W_2 + dXA A

in one fp32 accumulator per tile and one store: o's input gradient (one pair), gate and up's
(two), q, k and v's (three). ``_gemm.lora_matmul`` computes the same sum in a pipelined Triton
kernel whose K loop runs four CTA-wide ``bar.sync`` per step (PTX, Triton 3.6). Here the
partitions are ``_down_backward``'s: a one-warp TMA loader walks each tile's pairs in turn and
then ``ceil(r / 64)`` steps of ``(dXA, A)`` through the same 3-stage ring, two one-warpgroup
``m64`` wgmma consumers (``_mma_half``) take the tile's halves, and a one-warp epilogue stores
the finished ``[128, 256]`` tile from shared memory by TMA (which clips the edges: any ``M``,
``N`` and ``K_j``; TMA zero-fills the loads past them).

Measured on an H100 (BENCHMARKS.md, twenty-fifth session, ``gluon_dx.py``, one pair, then with
one 8-warp consumer): 0.391 ms at o's ``8192 x 4096 x 4096`` against 0.400 for ``_gemm`` and
0.384 for cuBLAS's bare ``dY W``. Off by default (``set_ws_input_grad``) until the GPU tests
and ``benchmarks/2026-12-08-s25/gluon_dx_pairs.py`` have run on this code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _down_backward as db
from . import _gemm
from ._gemm import _DTYPES, _aligned, _runs_here, persistent_programs

_MAX_PAIRS = 3  # q, k and v
_enabled = False


def set_ws_input_grad(enabled: bool) -> None:
    """Route the 16-bit input gradients ``_linear.input_grad`` fuses through this kernel
    (``enabled``) or through ``_gemm.lora_matmul`` (the default). Both compute the same sum;
    ``set_fused_gemm(False)`` turns both off."""
    global _enabled
    _enabled = bool(enabled)


def fusable_input_grad(pairs: Sequence[tuple[Tensor, Tensor]], dXA: Tensor, A: Tensor) -> bool:
    """True when ``input_grad_matmul`` can and should run: switched on (``set_ws_input_grad``),
    Gluon's API, eager, enabled, an NVIDIA sm_90 GPU, one to three pairs of one 16-bit dtype
    adding onto one ``[M, N]`` output of at least ``_gemm._MIN_OUTPUT`` elements, TMA-aligned
    operands, a rank that is a multiple of 8."""
    if not _enabled or db.gluon is None or not 0 < len(pairs) <= _MAX_PAIRS:
        return False
    dY = pairs[0][0]
    if not _runs_here(dY) or torch.cuda.get_device_capability(dY.device)[0] != 9:
        return False
    (M, r), N = dXA.shape, A.shape[1]
    tensors = [dXA, A, *(t for pair in pairs for t in pair)]
    if dY.dtype not in _DTYPES or any(t.dtype != dY.dtype for t in tensors):
        return False
    if A.shape[0] != r or r % 8 or M * N < _gemm._MIN_OUTPUT:
        return False
    fits = all(X.shape[0] == M and W.shape == (X.shape[1], N) for X, W in pairs)
    return fits and all(_aligned(t) for t in tensors)


def input_grad_matmul(pairs: Sequence[tuple[Tensor, Tensor]], dXA: Tensor, A: Tensor) -> Tensor:
    """``sum_j dY_j W_j + dXA A`` over the ``(dY_j, W_j)`` of ``pairs``; the caller checks
    ``fusable_input_grad`` first."""
    BM, BN, BK = db._TILE
    M, N = dXA.shape[0], A.shape[1]
    dtype = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dXA.dtype]
    mk = gl.NVMMASharedLayout.get_default_for([BM, BK], dtype)
    kn = gl.NVMMASharedLayout.get_default_for([BK, BN], dtype)
    steps = [(TensorDescriptor.from_tensor(X, [BM, BK], mk),
              TensorDescriptor.from_tensor(W, [BK, BN], kn),
              triton.cdiv(X.shape[1], BK)) for X, W in pairs]  # fmt: skip
    steps += [(*steps[0][:2], 0)] * (_MAX_PAIRS - len(pairs))  # absent pairs: no K steps
    dX = torch.empty(M, N, device=dXA.device, dtype=dXA.dtype)
    args = [
        *(t for pair in steps for t in pair),
        TensorDescriptor.from_tensor(dXA, [BM, BK], mk),
        TensorDescriptor.from_tensor(A, [BK, BN], kn),
        TensorDescriptor.from_tensor(dX, [BM, BN], gl.NVMMASharedLayout(128, 16)),
        M, N, dXA.shape[1],
    ]  # fmt: skip
    options = {"STAGES": db._STAGES, "GROUP": db._GROUP_M, "WORKER_REGS": db._WORKER_REGS,
               "num_warps": db._WARPGROUP}  # fmt: skip
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    _launch(min(persistent_programs(dXA), tiles), args, options)
    return dX


def _launch(programs: int, args: list, options: dict) -> None:
    """Through the JIT, as ``_down_backward._launch``."""
    _kernel[(programs,)](*args, **options)


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
        x_desc, w_desc, k_steps, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty,
        STAGES: gl.constexpr,
    ):  # fmt: skip
        """``k_steps`` K steps of one pair into the ring from slot ``it``; the next slot."""
        BM: gl.constexpr = x_desc.block_type.shape[0]
        BK: gl.constexpr = x_desc.block_type.shape[1]
        BN: gl.constexpr = w_desc.block_type.shape[1]
        nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
        for kk in range(k_steps):
            s = it % STAGES
            # The first pass over the ring waits on parity 1 of fresh barriers: at once.
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), nbytes)  # zero-filled bytes count too
            db._tma_load(x_desc, [pid_m * BM, kk * BK], ready.index(s), a_bufs.index(s))
            db._tma_load(w_desc, [kk * BK, pid_n * BN], ready.index(s), b_bufs.index(s))
            it += 1
        return it

    @gluon.jit
    def _load_partition(
        x0, w0, k0, x1, w1, k1, x2, w2, k2, xa_desc, a_desc, r_steps, a_bufs, b_bufs, ready,
        empty, num_pid_m, num_pid_n, STAGES: gl.constexpr, GROUP: gl.constexpr,
    ):  # fmt: skip
        """Per tile: each base pair's K steps in turn (none for an absent pair), then the
        rank pair's."""
        it = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pid_m, pid_n = db._tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
            it = _load_pair(x0, w0, k0, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty, STAGES)
            it = _load_pair(x1, w1, k1, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty, STAGES)
            it = _load_pair(x2, w2, k2, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty, STAGES)
            it = _load_pair(xa_desc, a_desc, r_steps, pid_m, pid_n, it, a_bufs, b_bufs, ready,
                            empty, STAGES)  # fmt: skip

    @gluon.jit
    def _store_partition(
        y_desc, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, GROUP: gl.constexpr
    ):
        """Each finished tile from shared memory to ``dX`` by TMA; the buffer is released
        once TMA has read it."""
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
        x0, w0, k0, x1, w1, k1, x2, w2, k2, xa_desc, a_desc, y_desc, M, N, r,
        STAGES: gl.constexpr, GROUP: gl.constexpr, WORKER_REGS: gl.constexpr,
    ):  # fmt: skip
        BM: gl.constexpr = x0.block_type.shape[0]
        BK: gl.constexpr = x0.block_type.shape[1]
        BN: gl.constexpr = w0.block_type.shape[1]
        # c_smem's layout, NVMMASharedLayout(128, 16), is y_desc's
        a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty = db._shared_state(x0, w0, STAGES, 2)
        num_pid_m = gl.cdiv(M, BM)
        num_pid_n = gl.cdiv(N, BN)
        r_steps = gl.cdiv(r, BK)
        steps = k0 + k1 + k2 + r_steps
        gl.warp_specialize(
            [
                (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                                num_pid_m, num_pid_n, steps, STAGES, 0)),
                (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty,
                                num_pid_m, num_pid_n, steps, STAGES, 1)),
                (_load_partition, (x0, w0, k0, x1, w1, k1, x2, w2, k2, xa_desc, a_desc, r_steps,
                                   a_bufs, b_bufs, ready, empty, num_pid_m, num_pid_n, STAGES,
                                   GROUP)),
                (_store_partition, (y_desc, c_smem, c_ready, c_empty, num_pid_m, num_pid_n,
                                    GROUP)),
            ],
            [4, 1, 1],  # the second MMA warpgroup, the loader, the store
            [WORKER_REGS, WORKER_REGS, WORKER_REGS],
        )  # fmt: skip
        db._invalidate(ready, empty, c_ready, c_empty, STAGES)
