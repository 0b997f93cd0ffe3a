"""Twenty-fourth session, for the next GPU call: an input-gradient GEMM ``dX = dY W + dXA A``
(``W`` ``[K, N]`` as ``nn.Linear`` stores it: ``K`` = out, ``N`` = in) through the shipped
warp-specialized Gluon mainloop of ``_down_backward`` (its loader and MMA partitions, unchanged)
with a one-warp TMA-store epilogue, against ``_gemm.lora_matmul(..., w_kn=True)`` (the Triton
kernel that ships for it) and cuBLAS's bare ``dY W``.

Why: ``_gemm``'s pipelined K loop runs four CTA-wide ``bar.sync`` per step (PTX, Triton 3.6) and
ran o's ``dX`` at 1.098x cuBLAS (8192 x 4096 x 4096, thirteenth session), the largest of its
GEMM-level taxes; the eighteenth session's warp-specialized Gluon GEMM ran level with cuBLAS.
*Prediction*: at o's shape the Gluon route runs within 2% of cuBLAS, ~30 us under ``_gemm``
per call (O's block floor is ~0.81 ms on an H100: ~0.04x of it).

Outcome (twenty-fifth session, H100, with the one 8-warp MMA partition of 5b65fd8): cuBLAS /
Gluon / ``_gemm`` 0.384 / 0.391 / 0.400 ms at o's ``8192 x 4096 x 4096``, 1.426 / 1.422 /
1.456 at ``N = 14336``, 1.386 / 1.408 / 1.418 at ``K = 14336``: ~9 us under ``_gemm`` at o's
shape, not 30. Since then it runs ``_down_backward``'s two one-warpgroup MMA partitions, and
its store partition ships in ``lk_autograd._ws_gemm`` (with up to three pairs, both layouts).

Usage (sm_90 GPU, PYTHONPATH as tools/gpu_session.sh sets it): ``python3 gluon_dx.py``; on the
CPU ``python3 gluon_dx.py --compile`` builds it for sm_90 and prints its spills and shared bytes.
"""

import statistics
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from lk_autograd import _down_backward as db
from lk_autograd import _gemm
from lk_autograd._gemm import persistent_programs
from lk_autograd._ws_gemm import _store_partition


@gluon.jit
def _kernel_dx(
    dy_desc, dxa_desc, w_desc, a_desc, y_desc, M, N, K, r, STAGES: gl.constexpr,
    GROUP: gl.constexpr,
):  # fmt: skip
    BM: gl.constexpr = dy_desc.block_type.shape[0]
    BK: gl.constexpr = dy_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[1]
    # c_smem's layout, NVMMASharedLayout(128, 16), is y_desc's
    a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty = db._shared_state(
        dy_desc, w_desc, BN, STAGES, 2, 1
    )
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    k_tiles = gl.cdiv(K, BK)
    r_tiles = gl.cdiv(r, BK)
    gl.warp_specialize(
        [
            (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m,
                            num_pid_n, k_tiles + r_tiles, STAGES, 0, True)),
            (db._mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m,
                            num_pid_n, k_tiles + r_tiles, STAGES, 1, True)),
            (db._load_partition, (dy_desc, dxa_desc, w_desc, a_desc, a_bufs, b_bufs, ready,
                                  empty, num_pid_m, num_pid_n, k_tiles, r_tiles, STAGES,
                                  GROUP)),
            (_store_partition, (y_desc, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, GROUP)),
        ],
        [4, 1, 1],
        [db._WORKER_REGS, db._WORKER_REGS, db._WORKER_REGS],
    )  # fmt: skip
    db._invalidate(ready, empty, c_ready, c_empty, STAGES)


def gluon_dx(dY, W, dXA, A, compile_only=False):
    """``dY W + dXA A`` (``dXA`` already scaled by ``s``, as the Functions pass it)."""
    BM, BN, BK = db._TILE
    (M, K), N, r = dY.shape, W.shape[1], A.shape[0]
    Y = torch.empty(M, N, dtype=dY.dtype, device=dY.device)
    dtype = gl.bfloat16 if dY.dtype == torch.bfloat16 else gl.float16
    mk = gl.NVMMASharedLayout.get_default_for([BM, BK], dtype)
    kn = gl.NVMMASharedLayout.get_default_for([BK, BN], dtype)
    descs = [TensorDescriptor.from_tensor(t, [BM, BK], mk) for t in (dY, dXA)]
    descs += [TensorDescriptor.from_tensor(t, [BK, BN], kn) for t in (W, A)]
    y_desc = TensorDescriptor.from_tensor(Y, [BM, BN], gl.NVMMASharedLayout(128, 16))
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    programs = tiles if compile_only else min(persistent_programs(dY), tiles)
    args = [*descs, y_desc, M, N, K, r]
    opts = {"STAGES": db._STAGES, "GROUP": db._GROUP_M, "num_warps": db._WARPGROUP}
    if compile_only:
        return _kernel_dx.warmup(*args, grid=(programs,), **opts)
    _kernel_dx[(programs,)](*args, **opts)
    return Y


def compile_report() -> None:
    sys.path.insert(0, "tools")
    from _sm90 import sm90_driver, spill_bytes

    dY, W, dXA, A = (
        torch.randn(*shape).to(torch.bfloat16)
        for shape in ((8192, 4096), (4096, 4096), (8192, 16), (16, 4096))
    )
    with sm90_driver():
        kernel = gluon_dx(dY, W, dXA, A, compile_only=True)
    print("spill bytes:", spill_bytes(kernel), "shared bytes:", kernel.metadata.shared)


def shape_row(M: int, K: int, N: int, r: int) -> str:
    from bench_lora_blocks import alternated_ms, capture_graph

    torch.manual_seed(M + N)
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    dY, dXA = torch.randn(M, K, **bf16), torch.randn(M, r, **bf16)
    W, A = torch.randn(K, N, **bf16) * 0.02, torch.randn(r, N, **bf16) * 0.02
    ref = dY.double() @ W.double() + dXA.double() @ A.double()
    steps = {
        "cuBLAS dY W": lambda: dY @ W,
        "Gluon": lambda: gluon_dx(dY, W, dXA, A),
        "_gemm": lambda: _gemm.lora_matmul(dY, W, dXA, A, 1.0, True),
    }
    gluon_out, gemm_out = steps["Gluon"](), steps["_gemm"]()
    errs = [((out.double() - ref).norm() / ref.norm()).item() for out in (gluon_out, gemm_out)]
    graphs = {k: capture_graph(f) for k, f in steps.items()}
    times = alternated_ms(graphs, 5)
    ms = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in times.items())
    return (f"M, K, N = {M}, {K}, {N}, r = {r}: rel err vs float64 Gluon {errs[0]:.2e}, _gemm "
            f"{errs[1]:.2e}, same bits {torch.equal(gluon_out, gemm_out)}; ms {ms}")  # fmt: skip


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for shape in ((8192, 4096, 4096, 16), (8192, 4096, 14336, 16), (8192, 14336, 4096, 16)):
        print(shape_row(*shape), flush=True)


if __name__ == "__main__":
    compile_report() if "--compile" in sys.argv else main()
