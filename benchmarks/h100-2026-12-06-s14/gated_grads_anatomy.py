"""Scratch (fourteenth session): where the one-pass activation backward + rank-r gradients
(``lk_autograd._gated_grads`` in 7fe8a4e..ab3382e, reverted) loses its time. The same tiled,
persistent kernel with its pieces added one at a time (``PARTS``), at several tiles, warps,
stages and programs per SM (``CONFIGS``):

0. the activation backward alone: ``dh``, ``e``, ``g`` loaded through TMA in ``[BM, BN]``
   tiles, ``de`` and ``dg`` stored (five passes);
1. + ``dXA`` of gate and up (two products per tile, float32 partials stored);
2. + ``dB`` of gate and up (two more, carried across the chunk);
3. + down's ``dA`` from ``h`` (the reverted kernel).

Against a device copy and lk_triton's flat backward (six passes, ``h`` too), at 8192 x 14336,
rank 16, SiLU, bf16, eight row chunks; CUDA-graph replay. The first run
(``gated_grads_anatomy.txt``) timed all four parts at the first configuration; this version
times parts 0 and 0..3 at each (``gated_grads_anatomy_2.txt``). Run from the repository root
with the packages' src folders and tools/ on PYTHONPATH, on the GPU machine.
"""

import torch
import triton
import triton.language as tl
from bench_lora_blocks import graph_ms
from triton.tools.tensor_descriptor import TensorDescriptor

from lk_triton import _gated
from lk_triton._kernels import SILU, activation_and_derivative

M, N, R = 8192, 14336, 16
# (BM, BN, warps, stages, programs per SM); the first is the reverted kernel's best.
CONFIGS = [(64, 128, 8, 3, 1), (64, 128, 4, 2, 2), (32, 128, 4, 3, 2), (32, 128, 4, 2, 2),
           (64, 64, 4, 3, 2), (128, 128, 8, 2, 1), (64, 256, 8, 2, 1)]  # fmt: skip


@triton.jit
def _rank_block(ptr, i, R: tl.constexpr):
    rank = tl.arange(0, R)
    return tl.load(ptr + i.to(tl.int64)[:, None] * R + rank[None, :])


@triton.jit
def _kernel(
    dh_desc, e_desc, g_desc, de_desc, dg_desc, N, bg_ptr, bu_ptr, xag_ptr, xau_ptr, dxad_ptr,
    part_dxa_ptr, part_db_ptr, M, ROWS, BLOCKS, UNITS, PROGRAMS,
    PARTS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
):  # fmt: skip
    rank = tl.arange(0, R)
    for unit in tl.range(tl.program_id(0), UNITS, PROGRAMS):
        c, k = unit % BLOCKS, unit // BLOCKS
        cols = c * BN + tl.arange(0, BN)
        b_g = tl.trans(_rank_block(bg_ptr, cols, R))
        b_u = tl.trans(_rank_block(bu_ptr, cols, R))
        db_g = tl.zeros((R, BN), dtype=tl.float32)
        db_u = tl.zeros((R, BN), dtype=tl.float32)
        da_d = tl.zeros((R, BN), dtype=tl.float32)
        for i in tl.range(0, ROWS // BM):
            om = k * ROWS + i * BM
            rows = om + tl.arange(0, BM)
            dh = dh_desc.load([om, c * BN]).to(tl.float32)
            ev = e_desc.load([om, c * BN]).to(tl.float32)
            gv = g_desc.load([om, c * BN]).to(tl.float32)
            a, da = activation_and_derivative(ev, SILU)
            de = (dh * gv * da).to(de_desc.dtype)
            dg = (dh * a).to(dg_desc.dtype)
            de_desc.store([om, c * BN], de)
            dg_desc.store([om, c * BN], dg)
            if PARTS >= 1:
                out = ((c * M + rows).to(tl.int64) * R)[None, :] + rank[:, None]
                tl.store(part_dxa_ptr + out, tl.dot(b_g, tl.trans(de)))
                tl.store(part_dxa_ptr + out + BLOCKS * M * R, tl.dot(b_u, tl.trans(dg)))
            if PARTS >= 2:
                db_g = tl.dot(tl.trans(_rank_block(xag_ptr, rows, R)), de, db_g)
                db_u = tl.dot(tl.trans(_rank_block(xau_ptr, rows, R)), dg, db_u)
            if PARTS >= 3:
                h = (a * gv).to(dg_desc.dtype)
                da_d = tl.dot(tl.trans(_rank_block(dxad_ptr, rows, R)), h, da_d)
        if PARTS >= 2:
            out = ((k * 3 * N + cols).to(tl.int64) * R)[None, :] + rank[:, None]
            tl.store(part_db_ptr + out, db_g)
            tl.store(part_db_ptr + out + N * R, db_u)
            tl.store(part_db_ptr + out + 2 * N * R, da_d)


def main() -> None:
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    dh, e, g = (torch.randn(M, N, **bf) for _ in range(3))
    de, dg = torch.empty_like(e), torch.empty_like(g)
    Bs = [torch.randn(N, R, **bf) for _ in range(2)]
    XAs = [torch.randn(M, R, **bf) for _ in range(3)]
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    results = {}
    copy_src, copy_dst = torch.randn(5 * M * N // 2, **bf), torch.empty(5 * M * N // 2, **bf)
    results["device copy, 5 passes"] = graph_ms(lambda: copy_dst.copy_(copy_src))
    results["lk_triton backward, 6 passes"] = graph_ms(
        lambda: _gated.gated_backward(dh, e, g, "silu", inplace=False)
    )
    for BM, BN, warps, stages, per_sm in CONFIGS:
        blocks, chunks = triton.cdiv(N, BN), 8
        part_dxa = torch.empty(2 * blocks, M, R, device="cuda", dtype=torch.float32)
        part_db = torch.empty(chunks, 3 * N, R, device="cuda", dtype=torch.float32)
        descs = [TensorDescriptor.from_tensor(t, [BM, BN]) for t in (dh, e, g, de, dg)]
        programs = per_sm * n_sm
        args = [*descs, N, *Bs, *XAs, part_dxa, part_db, M, M // chunks, blocks,
                blocks * chunks, programs]  # fmt: skip
        for parts in (0, 3):

            def run(parts=parts, args=args, programs=programs, c=(BM, BN, warps, stages)):
                _kernel[(programs,)](*args, PARTS=parts, BM=c[0], BN=c[1], R=R,
                                     num_warps=c[2], num_stages=c[3])  # fmt: skip

            name = f"{BM}x{BN} w{warps} s{stages} {per_sm}/SM, parts 0..{parts}"
            results[name] = graph_ms(run)
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}, {M} x {N}, r = {R}")
    passes = 5 * M * N * 2
    for name, ms in results.items():
        print(f"{name:36s} {ms * 1e3:8.1f} us  ({passes / ms / 1e9:6.2f} TB/s for 5 passes)")


if __name__ == "__main__":
    main()
