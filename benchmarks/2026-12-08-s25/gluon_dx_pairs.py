"""Twenty-fifth session, for the next GPU call: ``gluon_dx.py``'s warp-specialized input
gradient with up to three base pairs, as ``_gemm.lora_matmul(..., w_kn=True, more=...)``
computes them: ``dX = dY_0 W_0 + dY_1 W_1 + dY_2 W_2 + dXA A`` in one accumulator and one
store. The blocks' shapes (Llama-3-8B, 8192 tokens, r = 16 per projection): q, k and v's
``dX`` (``K`` = 4096, 1024, 1024; ``dXA`` the three adapters' ``[M, 48]``) and gate and up's
(``K`` = 14336 twice; ``[M, 32]``).

The loader walks each tile's pairs one after another, then the rank pair, through the same
ring; the two MMA warpgroups (``_down_backward._mma_half``) only see ``steps``, the sum of the
pairs' K steps. *Prediction* (from ``gluon_dx.py``'s single pair, 9-34 us under ``_gemm``):
~1-2% under ``_gemm`` at both shapes, 15-25 us at q/k/v's, 30-60 at gate/up's.

Usage (sm_90 GPU, PYTHONPATH as tools/gpu_session.sh sets it): ``python3 gluon_dx_pairs.py``
checks each route against float64, prints whether Gluon and ``_gemm`` give the same bits, and
times cuBLAS's chain, Gluon and ``_gemm`` (5 alternated rounds of CUDA-graph replays). On the
CPU, ``python3 gluon_dx_pairs.py --compile`` builds the three-pair kernel for sm_90.
"""

import statistics
import sys
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from lk_autograd import _down_backward as db
from lk_autograd import _gemm
from lk_autograd._gemm import persistent_programs

sys.path.insert(0, str(Path(__file__).parents[1] / "2026-12-07-s24"))
from gluon_dx import _store_partition

MAX_PAIRS = 3


@gluon.jit
def _load_pair(x_desc, w_desc, tiles, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty,
               STAGES: gl.constexpr):  # fmt: skip
    """``tiles`` K steps of one pair into the ring from slot ``it``; returns the next slot."""
    BM: gl.constexpr = x_desc.block_type.shape[0]
    BK: gl.constexpr = x_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[1]
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    for kk in range(tiles):
        s = it % STAGES
        mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(s), nbytes)
        db._tma_load(x_desc, [pid_m * BM, kk * BK], ready.index(s), a_bufs.index(s))
        db._tma_load(w_desc, [kk * BK, pid_n * BN], ready.index(s), b_bufs.index(s))
        it += 1
    return it


@gluon.jit
def _load_pairs(
    x0, w0, k0, x1, w1, k1, x2, w2, k2, xa_desc, u_desc, r_tiles, a_bufs, b_bufs, ready, empty,
    num_pid_m, num_pid_n, STAGES: gl.constexpr, GROUP: gl.constexpr, PAIRS: gl.constexpr,
):  # fmt: skip
    """Per tile: each base pair's K steps in turn, then the rank pair's."""
    it = 0
    for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
        pid_m, pid_n = db._tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
        it = _load_pair(x0, w0, k0, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty, STAGES)
        if PAIRS > 1:
            it = _load_pair(x1, w1, k1, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty, STAGES)
        if PAIRS > 2:
            it = _load_pair(x2, w2, k2, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty, STAGES)
        it = _load_pair(xa_desc, u_desc, r_tiles, pid_m, pid_n, it, a_bufs, b_bufs, ready, empty,
                        STAGES)  # fmt: skip


@gluon.jit
def _kernel_pairs(
    x0, w0, k0, x1, w1, k1, x2, w2, k2, xa_desc, u_desc, y_desc, M, N, r,
    STAGES: gl.constexpr, GROUP: gl.constexpr, PAIRS: gl.constexpr,
):  # fmt: skip
    BM: gl.constexpr = x0.block_type.shape[0]
    BN: gl.constexpr = w0.block_type.shape[1]
    a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty = db._shared_state(x0, w0, STAGES, 2)
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    r_tiles = gl.cdiv(r, x0.block_type.shape[1])
    steps = k0 + k1 + k2 + r_tiles
    gl.warp_specialize(
        [
            (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m,
                            num_pid_n, steps, STAGES, 0)),
            (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m,
                            num_pid_n, steps, STAGES, 1)),
            (_load_pairs, (x0, w0, k0, x1, w1, k1, x2, w2, k2, xa_desc, u_desc, r_tiles, a_bufs,
                           b_bufs, ready, empty, num_pid_m, num_pid_n, STAGES, GROUP, PAIRS)),
            (_store_partition, (y_desc, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, GROUP)),
        ],
        [4, 1, 1],
        [db._WORKER_REGS, db._WORKER_REGS, db._WORKER_REGS],
    )  # fmt: skip
    db._invalidate(ready, empty, c_ready, c_empty, STAGES)


def gluon_dx_pairs(pairs, dXA, A, compile_only=False):
    """``sum_j dY_j W_j + dXA A`` for the ``(dY_j, W_j)`` of ``pairs`` (one to three)."""
    BM, BN, BK = db._TILE
    M, N, r = pairs[0][0].shape[0], pairs[0][1].shape[1], A.shape[0]
    dtype = gl.bfloat16 if dXA.dtype == torch.bfloat16 else gl.float16
    mk = gl.NVMMASharedLayout.get_default_for([BM, BK], dtype)
    kn = gl.NVMMASharedLayout.get_default_for([BK, BN], dtype)
    descs = [(TensorDescriptor.from_tensor(dY, [BM, BK], mk),
              TensorDescriptor.from_tensor(W, [BK, BN], kn),
              triton.cdiv(dY.shape[1], BK)) for dY, W in pairs]  # fmt: skip
    descs += [(*descs[0][:2], 0)] * (MAX_PAIRS - len(pairs))  # absent: no K steps
    Y = torch.empty(M, N, dtype=dXA.dtype, device=dXA.device)
    args = [t for triple in descs for t in triple] + [
        TensorDescriptor.from_tensor(dXA, [BM, BK], mk),
        TensorDescriptor.from_tensor(A, [BK, BN], kn),
        TensorDescriptor.from_tensor(Y, [BM, BN], gl.NVMMASharedLayout(128, 16)),
        M, N, r,
    ]  # fmt: skip
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    opts = {"STAGES": db._STAGES, "GROUP": db._GROUP_M, "PAIRS": len(pairs),
            "num_warps": db._WARPGROUP}  # fmt: skip
    if compile_only:
        return _kernel_pairs.warmup(*args, grid=(tiles,), **opts)
    _kernel_pairs[(min(persistent_programs(dXA), tiles),)](*args, **opts)
    return Y


def compile_report() -> None:
    sys.path.insert(0, "tools")
    from _sm90 import sm90_driver, spill_bytes

    pairs, dXA, A = _operands("cpu", (4096, 1024, 1024), 48)
    with sm90_driver():
        kernel = gluon_dx_pairs(pairs, dXA, A, compile_only=True)
    print("spill bytes:", spill_bytes(kernel), "shared bytes:", kernel.metadata.shared)


def _operands(device, ks, r, M=8192, N=4096):
    bf16 = {"device": device, "dtype": torch.bfloat16}
    pairs = [(torch.randn(M, k, **bf16), torch.randn(k, N, **bf16) * 0.02) for k in ks]
    return pairs, torch.randn(M, r, **bf16), torch.randn(r, N, **bf16) * 0.02


def shape_row(name: str, ks: tuple[int, ...], r: int) -> str:
    from bench_lora_blocks import alternated_ms, capture_graph

    torch.manual_seed(sum(ks))
    pairs, dXA, A = _operands("cuda", ks, r)
    ref = dXA.double() @ A.double()
    for dY, W in pairs:
        ref += dY.double() @ W.double()

    def cublas():
        dX = dXA @ A
        for dY, W in pairs:
            dX.addmm_(dY, W)
        return dX

    (dY0, W0), *more = pairs
    steps = {
        "cuBLAS chain": cublas,
        "Gluon": lambda: gluon_dx_pairs(pairs, dXA, A),
        "_gemm": lambda: _gemm.lora_matmul(dY0, W0, dXA, A, 1.0, True, more=more),
    }
    outs = {k: f() for k, f in steps.items()}
    errs = ", ".join(
        f"{k} {((o.double() - ref).norm() / ref.norm()).item():.2e}" for k, o in outs.items()
    )
    times = alternated_ms({k: capture_graph(f) for k, f in steps.items()}, 5)
    ms = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in times.items())
    same = torch.equal(outs["Gluon"], outs["_gemm"])
    return f"{name} K = {ks}, r = {r}: rel err vs float64 {errs}; same bits {same}; ms {ms}"


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    print(shape_row("o", (4096,), 16), flush=True)
    print(shape_row("qkv", (4096, 1024, 1024), 48), flush=True)
    print(shape_row("gate/up", (14336, 14336), 32), flush=True)


if __name__ == "__main__":
    compile_report() if "--compile" in sys.argv else main()
