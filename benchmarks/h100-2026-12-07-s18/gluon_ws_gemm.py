"""Feasibility probe: a warp-specialized, persistent Hopper (sm_90a) GEMM in Triton's Gluon dialect.

C[M, N] = A[M, K] @ B[N, K]^T, bf16 in and out, fp32 accumulation. Written against the Gluon API of
Triton 3.6.0 (``gl.warp_specialize(functions_and_args, worker_num_warps, worker_num_regs)``).

Structure (one CTA per SM, grid = min(#SMs, #tiles); every partition walks the same tile sequence
``tile = pid, pid + nprog, ...`` in grouped (GROUP_M) order):

- default partition, ``num_warps`` = 8 (two consumer warpgroups, 64 rows of the 128-row tile each):
  the MMA consumer. Per K step it waits ``ready[s]``, issues an async ``warpgroup_mma`` on the
  stage (B is [BLOCK_N, BLOCK_K] K-major in shared memory, fed as a permuted [K, N] view), keeps
  one wgmma in flight (``warpgroup_mma_wait(1)``) and releases the *previous* stage on
  ``empty[s-1]``. After the tile it drains the wgmma, waits until the epilogue has finished
  reading the C staging buffer (``c_empty``), writes the bf16 tile into it, fences and signals
  ``c_ready``; then it goes straight on to the next tile's mainloop.
- worker 0, 1 warp: the TMA producer, ``STAGES``-deep ring of A/B tiles guarded by ``ready`` /
  ``empty`` mbarriers; it runs ahead across tile boundaries.
- worker 1, 1 warp: the epilogue: waits ``c_ready``, issues the TMA store of the staged tile,
  waits for TMA to finish reading shared memory (``store_wait(0)``), and signals ``c_empty``.

So the TMA store of tile i (and the loads of tile i+1) overlap the mainloop of tile i+1. What does
*not* overlap is the register -> shared-memory write of the accumulator: on Hopper the wgmma
accumulator lives in the consumer's registers (no tensor memory), so the hand-off to another
partition has to go through shared memory, and the consumer itself must do that copy. The staging
buffer is single (128x256 bf16 = 64 KB): with 3 stages x 48 KB for A/B that is 208 KB of the 227 KB
limit, so a second C buffer (another 64 KB) would cost a pipeline stage. (A ping-pong design with
two consumer warpgroups on alternate tiles, CUTLASS style, would also hide the epilogue math; not
attempted here.)

Usage::

    python gluon_ws_gemm.py --compile   # CPU only: compile to an sm_90a cubin, print regs/smem
    python gluon_ws_gemm.py --bench     # on an H100/H200: check vs torch.matmul, time vs cuBLAS
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
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

BLOCK_M, BLOCK_N, BLOCK_K = 128, 256, 64
STAGES = 3
GROUP_M = 8
NUM_WARPS = 8  # default (MMA) partition: 2 warpgroups, accumulator 128 fp32 regs/thread
LOAD_REGS, EPI_REGS = 40, 40  # setmaxnreg for the 1-warp workers (multiples of 8, >= 24)


# ----------------------------------------------------------------------------------------------
# kernel
# ----------------------------------------------------------------------------------------------


@gluon.jit
def _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP: gl.constexpr):
    """Grouped ("super-row") ordering: GROUP row-blocks share each sweep over N for L2 reuse."""
    per_group = GROUP * num_pid_n
    group_id = tile_id // per_group
    first_m = group_id * GROUP
    group_rows = min(num_pid_m - first_m, GROUP)
    pid_m = first_m + (tile_id % per_group) % group_rows
    pid_n = (tile_id % per_group) // group_rows
    return pid_m, pid_n


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
            # The first pass over the ring waits on parity 1 of fresh barriers: returns at once.
            mbarrier.wait(empty.index(s), ((it // NSTAGE) & 1) ^ 1)
            mbarrier.expect(ready.index(s), nbytes)
            tma.async_copy_global_to_shared(
                a_desc, [off_m, kk * BK], ready.index(s), a_bufs.index(s)
            )
            tma.async_copy_global_to_shared(
                b_desc, [off_n, kk * BK], ready.index(s), b_bufs.index(s)
            )
            it += 1


@gluon.jit
def _epilogue_partition(
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
    num_tiles = num_pid_m * num_pid_n
    t = 0
    for tile_id in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m, pid_n = _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP)
        mbarrier.wait(c_ready, t & 1)
        tma.async_copy_shared_to_global(c_desc, [pid_m * BM, pid_n * BN], c_smem)
        tma.store_wait(0)  # TMA has finished reading c_smem
        mbarrier.arrive(c_empty, count=1)
        t += 1  # noqa: SIM113 (Gluon loops have no enumerate)


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
    GROUP: gl.constexpr,
    WARPS: gl.constexpr,
):
    # wgmma accumulator layout: m64nNk16 instructions, warpgroups stacked along M.
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
                a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, use_acc=kk > 0, is_async=True
            )
            # Keep one wgmma in flight; the one before it (stage s-1) is now done reading.
            acc, _, _ = warpgroup_mma_wait(1, deps=(acc, a_bufs.index(s), b_bufs.index(s)))
            mbarrier.arrive(empty.index((it + NSTAGE - 1) % NSTAGE), count=1, pred=kk > 0)
            it += 1
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((it + NSTAGE - 1) % NSTAGE), count=1)

        # Hand the tile to the epilogue partition through shared memory.
        mbarrier.wait(c_empty, (t & 1) ^ 1)
        c_smem.store(acc.to(c_smem.dtype))
        fence_async_shared()
        mbarrier.arrive(c_ready, count=1)
        t += 1  # noqa: SIM113 (Gluon loops have no enumerate)


@gluon.jit
def ws_matmul_kernel(
    a_desc,
    b_desc,
    c_desc,
    M,
    N,
    K,
    NSTAGE: gl.constexpr,
    GROUP: gl.constexpr,
    LOAD_NREG: gl.constexpr,
    EPI_NREG: gl.constexpr,
):
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    dtype: gl.constexpr = a_desc.dtype
    WARPS: gl.constexpr = gl.num_warps()

    a_bufs = gl.allocate_shared_memory(dtype, [NSTAGE, BM, BK], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [NSTAGE, BN, BK], b_desc.layout)
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

    gl.warp_specialize(
        [
            (
                _mma_partition,
                (
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
                    BM,
                    BN,
                    NSTAGE,
                    GROUP,
                    WARPS,
                ),
            ),
            (
                _load_partition,
                (
                    a_desc,
                    b_desc,
                    a_bufs,
                    b_bufs,
                    ready,
                    empty,
                    num_pid_m,
                    num_pid_n,
                    k_tiles,
                    BM,
                    BN,
                    BK,
                    NSTAGE,
                    GROUP,
                ),
            ),
            (
                _epilogue_partition,
                (c_desc, c_smem, c_ready, c_empty, num_pid_m, num_pid_n, BM, BN, GROUP),
            ),
        ],
        [1, 1],
        [LOAD_NREG, EPI_NREG],
    )

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
    b_l = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.bfloat16)
    c_l = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N], gl.bfloat16)
    return (
        TensorDescriptor.from_tensor(a, [BLOCK_M, BLOCK_K], a_l),
        TensorDescriptor.from_tensor(b, [BLOCK_N, BLOCK_K], b_l),
        TensorDescriptor.from_tensor(c, [BLOCK_M, BLOCK_N], c_l),
    )


def _args(a, b, c):
    M, K = a.shape
    N = b.shape[0]
    return (*_descs(a, b, c), M, N, K, STAGES, GROUP_M, LOAD_REGS, EPI_REGS)


def _grid(M: int, N: int, num_sms: int) -> tuple[int]:
    return (min(num_sms, triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N)),)


_NUM_SMS: int | None = None


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b[N, K]^T, both bf16 row-major."""
    global _NUM_SMS
    assert a.dtype == b.dtype == torch.bfloat16 and a.shape[1] == b.shape[1]
    assert a.is_contiguous() and b.is_contiguous()
    if _NUM_SMS is None:
        _NUM_SMS = torch.cuda.get_device_properties(a.device).multi_processor_count
    M, N = a.shape[0], b.shape[0]
    c = torch.empty(M, N, device=a.device, dtype=a.dtype)
    ws_matmul_kernel[_grid(M, N, _NUM_SMS)](*_args(a, b, c), num_warps=NUM_WARPS)
    return c


# --- --compile: CPU-only compile to an sm_90a cubin ---------------------------------------------


def _sm90_driver() -> Any:
    """The repo's stand-in driver (tests/test_hopper_compile.py) if importable, else a copy."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    import glob

    srcs = glob.glob(os.path.join(root, "packages", "*", "src"))
    srcs += glob.glob(os.path.join(root, "integrations", "*", "src"))
    for p in [root, os.path.join(root, "tools"), *srcs]:
        if p not in sys.path:
            sys.path.append(p)
    try:
        from tests.test_hopper_compile import _Sm90Driver  # needs pytest and the repo's packages

        print("[compile] stand-in driver: tests/test_hopper_compile.py::_Sm90Driver")
        return _Sm90Driver()
    except Exception as e:
        print(f"[compile] repo driver not importable ({type(e).__name__}: {e}); using local copy")

    class _Driver:
        def get_current_device(self):
            return "sm_90 compile check"

        def get_current_stream(self, device):
            return 0

        def get_current_target(self):
            from triton.backends.compiler import GPUTarget

            return GPUTarget("cuda", 90, 32)

    return _Driver()


def compile_only(M: int = 8192, N: int = 14336, K: int = 4096) -> Any:
    from triton.runtime import driver

    previous = driver._active
    driver.set_active(_sm90_driver())
    try:
        # Small CPU tensors: only dtype/alignment reach the compiler (M, N, K are runtime ints).
        a = torch.empty(256, 128, dtype=torch.bfloat16)
        b = torch.empty(512, 128, dtype=torch.bfloat16)
        c = torch.empty(256, 512, dtype=torch.bfloat16)
        args = list(_args(a, b, c))
        args[3:6] = [M, N, K]
        k = ws_matmul_kernel.warmup(*args, grid=_grid(M, N, 132), num_warps=NUM_WARPS)
    finally:
        driver.set_active(previous)
    md = k.metadata
    print(
        f"[compile] name={k.name} target={md.target} num_warps={md.num_warps} "
        f"shared={md.shared} B ({md.shared / 1024:.1f} KB; limit 227 KB)"
    )
    print(f"[compile] cubin bytes={len(k.asm['cubin'])}")
    n_regs = getattr(k, "n_regs", None)
    if n_regs is not None:
        print(f"[compile] n_regs (from driver load)={n_regs}")
    ptx = k.asm.get("ptx", "")
    maxnreg = re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx)
    print(f"[compile] setmaxnreg in PTX: {maxnreg}")
    print(
        f"[compile] PTX: wgmma.mma_async={ptx.count('wgmma.mma_async')} "
        f"cp.async.bulk.tensor={ptx.count('cp.async.bulk.tensor')} "
        f"mbarrier.arrive={len(re.findall(r'mbarrier.arrive', ptx))} "
        f"bar.sync={ptx.count('bar.sync')} bar.arrive={ptx.count('bar.arrive')}"
    )
    _ptxas_info(ptx, md)
    return k


def _ptxas_info(ptx: str, md: Any) -> None:
    """Registers per thread from the bundled ptxas (-v), as the repo's ptxas probe does."""
    import subprocess
    import tempfile

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(90).path
    except Exception as e:
        print(f"[ptxas] not found ({e})")
        return
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run(
            [ptxas, "-v", "--gpu-name=sm_90a", src, "-o", os.path.join(d, "k.cubin")],
            capture_output=True,
            text=True,
        )
    for line in (r.stdout + r.stderr).splitlines():
        if "registers" in line or "smem" in line or "error" in line.lower() or "spill" in line:
            print(f"[ptxas] {line.strip()}")


# --- --bench: GPU --------------------------------------------------------------------------------


def bench() -> None:
    from triton.testing import do_bench

    torch.manual_seed(0)
    M = 8192
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}, torch {torch.__version__}, triton {triton.__version__}")
    print(
        f"tile {BLOCK_M}x{BLOCK_N}x{BLOCK_K}, {STAGES} stages, GROUP_M={GROUP_M}, "
        f"{NUM_WARPS}+1+1 warps"
    )
    rows = []
    for N, K in [(14336, 4096), (4096, 14336), (28672, 4096)]:
        a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        ref = torch.matmul(a.float(), b.float().t())
        out = matmul(a, b)
        torch.cuda.synchronize()
        rel = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        cub = torch.matmul(a, b.t())
        rel_cub = ((cub.float() - ref).abs().max() / ref.abs().max()).item()
        del ref
        ours_ms, cub_ms = [], []
        for _ in range(3):
            ours_ms.append(do_bench(lambda a=a, b=b: matmul(a, b), return_mode="median"))
            cub_ms.append(do_bench(lambda a=a, b=b: torch.matmul(a, b.t()), return_mode="median"))
        o, c = sorted(ours_ms)[1], sorted(cub_ms)[1]
        tflops = 2 * M * N * K / (o * 1e-3) / 1e12
        rows.append((N, K, rel, rel_cub, o, c, tflops, ours_ms, cub_ms))
    print(
        f"{'M':>5} {'N':>6} {'K':>6} {'relerr':>9} {'cub_rel':>9} {'ours ms':>8} {'cuBLAS ms':>9} "
        f"{'ours/cuB':>8} {'TFLOP/s':>8}"
    )
    for N, K, rel, rel_cub, o, c, tf, om, cm in rows:
        print(
            f"{M:>5} {N:>6} {K:>6} {rel:9.2e} {rel_cub:9.2e} {o:8.3f} {c:9.3f} "
            f"{o / c:8.3f} {tf:8.1f}"
            f"   rounds ours={[round(x, 3) for x in om]} cub={[round(x, 3) for x in cm]}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--compile", action="store_true", help="CPU-only compile for sm_90a")
    g.add_argument("--bench", action="store_true", help="check + time on an sm_90 GPU")
    args = p.parse_args()
    if args.compile:
        compile_only()
    else:
        bench()


if __name__ == "__main__":
    main()
