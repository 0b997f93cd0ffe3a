"""Twenty-fourth session, for the next GPU call: down_backward's kernel with its MMA partition
split in two one-warpgroup partitions, one per 64-row half of each 128 x 256 tile.

Why: under ncu the shipped kernel's eight MMA warps run two partition-wide ``bar.sync 0, 256``
per K step (before the ``ready`` wait and before the single-thread ``empty`` arrive: Triton's
membar pass orders the eight warps' wgmma completions before one thread publishes them), and
spend ~18% of their time there; halving the K step cost ~65 cycles per extra step. Here each
warpgroup waits for the same ``ready`` stages, runs its own ``m64n256`` wgmmas on its half of
``dY``'s tile, and arrives on ``empty`` itself (the barriers count two arrivals), so the two
never wait for each other; each writes its half of the ``dh`` tile and arrives on ``c_ready``
(two arrivals). The loader and the epilogue are the shipped ones, unchanged.

Usage (sm_90 GPU, PYTHONPATH as tools/gpu_session.sh sets it): ``python3 split_mma.py`` checks
de, dg and h against the shipped kernel's (8192 and 8191 tokens, SiLU, r = 16; 300 tokens at
r = 72 for the two-step rank and K tail), then times both kernels and cuBLAS dY W over 5
alternated rounds of CUDA-graph replays. On the CPU, ``python3 split_mma.py --compile`` builds
it for sm_90 (Triton 3.6) and prints its spills and the MMA loop's ``bar.sync``.
"""

import re
import statistics
import sys
from unittest import mock

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from lk_autograd import _down_backward as db

HALF_ROWS = gl.constexpr(64)  # one warpgroup's m64 rows of the 128-row tile


@gluon.jit
def _mma_half(
    a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, steps,
    STAGES: gl.constexpr, HALF: gl.constexpr,
):  # fmt: skip
    """The shipped ``_mma_partition`` on rows ``[64 HALF, 64 HALF + 64)`` of each tile, by
    one warpgroup."""
    BN: gl.constexpr = c_smem.shape[1]
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16]
    )
    it = 0
    t = 0
    for _tile in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
        acc = gl.zeros((HALF_ROWS, BN), dtype=gl.float32, layout=acc_layout)
        for kk in range(steps):
            s = it % STAGES
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            rows = a_bufs.index(s).slice(HALF * HALF_ROWS, HALF_ROWS)
            acc = warpgroup_mma(rows, b_bufs.index(s), acc, use_acc=kk > 0, is_async=True)
            acc, _, _ = warpgroup_mma_wait(1, deps=(acc, rows, b_bufs.index(s)))
            mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), count=1, pred=kk > 0)
            it += 1
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), count=1)
        mbarrier.wait(c_empty, (t & 1) ^ 1)
        c_smem.slice(HALF * HALF_ROWS, HALF_ROWS).store(acc.to(c_smem.dtype))
        db._barrier()  # the warpgroup's writes before its single arrive
        fence_async_shared()
        mbarrier.arrive(c_ready, count=1)
        t += 1  # noqa: SIM113


@gluon.jit
def _kernel_split(
    dy_desc, dxa_desc, w_desc, a_desc, e_ptr, g_ptr, de_ptr, dg_ptr, h_ptr, M, N, K, r,
    ACTIVATION: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr,
    EPI_WARPS: gl.constexpr, WORKER_REGS: gl.constexpr, SM: gl.constexpr, SN: gl.constexpr,
    TAIL: gl.constexpr,
):  # fmt: skip
    """The shipped ``_kernel`` with two MMA partitions (launched with ``num_warps=4``)."""
    BM: gl.constexpr = dy_desc.block_type.shape[0]
    BK: gl.constexpr = dy_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[1]
    # one arrive per warpgroup on empty and c_ready
    a_bufs, b_bufs, c_smem, ready, empty, c_ready, c_empty = db._shared_state(
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
                         num_pid_n, steps, STAGES, 0)),
            (_mma_half, (a_bufs, b_bufs, ready, empty, c_smem, c_ready, c_empty, num_pid_m,
                         num_pid_n, steps, STAGES, 1)),
            (db._load_partition, (dy_desc, dxa_desc, w_desc, a_desc, a_bufs, b_bufs, ready,
                                  empty, num_pid_m, num_pid_n, k_tiles, r_tiles, STAGES,
                                  GROUP)),
            (db._epilogue_partition, (e_ptr, g_ptr, de_ptr, dg_ptr, h_ptr, c_smem, c_ready,
                                      c_empty, num_pid_m, num_pid_n, M, N, ACTIVATION, SM, SN,
                                      GROUP, EPI_WARPS, TAIL)),
        ],
        [4, 1, EPI_WARPS],
        [WORKER_REGS, WORKER_REGS, WORKER_REGS],
    )  # fmt: skip
    db._invalidate(ready, empty, c_ready, c_empty, STAGES)


def _options(options: dict) -> dict:
    return {**options, "num_warps": 4}


def split_gated_grads(*args):
    """``db.gated_grads`` (same host code, operands and outputs) through ``_kernel_split``."""

    def launch(programs, kernel_args, options):
        _kernel_split[(programs,)](*kernel_args, **_options(options))

    with mock.patch.object(db, "_launch", launch):
        return db.gated_grads(*args)


def compile_report() -> None:
    """sm_90 compile on the CPU (tools/_sm90.py): spills, and the MMA loops' barriers."""
    sys.path.insert(0, "tools")
    from _sm90 import sm90_driver, spill_bytes

    kernels = []

    def compile_only(programs, kernel_args, options):
        kernels.append(_kernel_split.warmup(*kernel_args, grid=(programs,), **_options(options)))

    dY, W, dXA, A, e, g = (
        torch.randn(*shape).to(torch.bfloat16)
        for shape in ((8192, 192), (192, 512), (8192, 16), (16, 512), (8192, 512), (8192, 512))
    )
    with sm90_driver(), mock.patch.object(db, "_launch", compile_only):
        db.gated_grads(dY, W, dXA, A, e, g, "silu", True)
    ptx = kernels[0].asm["ptx"]
    print("spill bytes:", spill_bytes(kernels[0]))
    print("shared bytes:", kernels[0].metadata.shared)
    print("bar.sync kinds:", sorted(set(re.findall(r"bar(?:rier)?\.sync\s+[^;]*;", ptx))))
    for loop in re.findall(
        r"\$L__BB\d+_\d+:[^$]*?wgmma\.mma_async[^$]*?bra\s+\$L__BB\d+_\d+;", ptx
    ):
        barriers = re.findall(r"bar\.sync\s+[^;]*;", loop)
        print("a K-step loop (wgmma):", len(barriers), "bar.sync per step:", barriers)


def main() -> None:
    from bench_lora_blocks import alternated_ms, capture_graph
    from epilogue_variants import data

    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for tokens, r, K in ((8192, 16, 4096), (8191, 16, 4096), (300, 72, 200)):
        torch.manual_seed(tokens)
        if tokens >= 8191:
            dY, W, dXA, A, e, g = data(tokens)
        else:
            bf16 = {"device": "cuda", "dtype": torch.bfloat16}
            dY, dXA = torch.randn(tokens, K, **bf16), torch.randn(tokens, r, **bf16)
            W, A = torch.randn(K, 512, **bf16) * 0.02, torch.randn(r, 512, **bf16) * 0.02
            e, g = torch.randn(tokens, 512, **bf16), torch.randn(tokens, 512, **bf16)
        ref = db.gated_grads(dY, W, dXA, A, e, g, "silu", False)
        out = split_gated_grads(dY, W, dXA, A, e, g, "silu", False)
        same = [torch.equal(a, b) for a, b in zip(out, ref, strict=True)]
        print(f"{tokens} tokens, r = {r}: de, dg, h the shipped kernel's bits: {same}")
    dY, W, dXA, A, e, g = data(8192)
    graphs = {
        "cuBLAS dY W": capture_graph(lambda: dY @ W),
        "shipped gated_grads": capture_graph(
            lambda: db.gated_grads(dY, W, dXA, A, e, g, "silu", False)
        ),
        "split MMA partitions": capture_graph(
            lambda: split_gated_grads(dY, W, dXA, A, e, g, "silu", False)
        ),
    }
    times = alternated_ms(graphs, 5)
    for k, ts in times.items():
        print(f"{k:<22} {statistics.median(ts):.3f} ms  " + " ".join(f"{t:.3f}" for t in ts))


if __name__ == "__main__":
    compile_report() if "--compile" in sys.argv else main()
