"""Twenty-sixth session, on the CPU: does Triton's own warp specialization (``tl.range(...,
warp_specialize=True)``) apply on sm_90? If it did, ``_gemm``'s Triton kernels could drop the
CTA-wide ``bar.sync`` of their pipelined K loops without the Gluon kernels of ``_ws_gemm``.

A minimal TMA matmul (``[128, 64]`` / ``[128, 64]`` descriptor loads, a ``[128, 128]`` store)
compiled for sm_90 with and without the flag, at 4 and 8 warps. Outcome under Triton 3.6, 3.8
and 3.9 (``outcome.txt``): at 4 warps the flagged kernel fails in the compiler's
``NVGPUWarpSpecialization`` pass (3.6: "tensor descriptor block and tensor types must match";
3.8 and 3.9: "descriptor block with 8192 elements tensor with 4096 elements"); at 8 warps it
compiles without any ``ttg.warp_specialize`` region and with the same ``bar.sync`` count as
without the flag. ``warp_specialize=True`` on ``_gemm``'s own loops (the persistent tile loop,
or the K loop) changed nothing either. So the Gluon route stays; re-run this on a new Triton.

Usage: ``uv run --with triton==3.6.0 python benchmarks/2026-12-08-s26/auto_ws.py`` (from the
repository root, for ``tools/_sm90.py``).
"""

import re
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from _sm90 import sm90_driver


@triton.jit
def _matmul(a_desc, b_desc, c_desc, K, BK: tl.constexpr, WS: tl.constexpr):
    BM: tl.constexpr = c_desc.block_type.shape[0]
    BN: tl.constexpr = c_desc.block_type.shape[1]
    om, on = tl.program_id(0) * BM, tl.program_id(1) * BN
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, tl.cdiv(K, BK), warp_specialize=WS, num_stages=3):
        acc = tl.dot(a_desc.load([om, k * BK]), b_desc.load([on, k * BK]).T, acc)
    c_desc.store([om, on], acc.to(tl.bfloat16))


def main() -> None:
    A, B, C = (torch.randn(512, 512).to(torch.bfloat16) for _ in range(3))
    descs = [TensorDescriptor.from_tensor(A, [128, 64]), TensorDescriptor.from_tensor(B, [128, 64]),
             TensorDescriptor.from_tensor(C, [128, 128])]  # fmt: skip
    print("triton", triton.__version__)
    for warps in (4, 8):
        for ws in (False, True):
            try:
                with sm90_driver():
                    k = _matmul.warmup(*descs, 512, 64, ws, grid=(4, 4), num_warps=warps)
            except Exception as e:  # the compiler's failure is the outcome
                print(f"{warps} warps, warp_specialize={ws}: fails ({type(e).__name__})")
                continue
            regions = "ttg.warp_specialize" in k.asm["ttgir"]
            bars = len(re.findall(r"bar\.sync", k.asm["ptx"]))
            print(f"{warps} warps, warp_specialize={ws}: partitions {regions}, bar.sync {bars}")


if __name__ == "__main__":
    main()
