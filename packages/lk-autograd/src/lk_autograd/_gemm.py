"""A base GEMM with the LoRA term added in its epilogue, in one Triton kernel (Hopper and later).

With ``X`` ``[M, K]`` and a rank-``r`` pair ``XA`` ``[M, r]``, ``U``::

    Y = X W^T + s XA U^T      W [N, K], U = B [N, r]   (a projection's output)
    Y = X W   + s XA U        W [K, N], U = A [r, N]   (its input gradient: dX = dY W + dXA A)

cuBLAS has no epilogue for a rank-r product, so ``_linear.lora_first`` writes ``s XA U^T`` first
and the base GEMM reads it back as C: an extra write and read of the ``[M, N]`` output, about
15% of the GEMM at Llama-3-8B's MLP shapes. Here each output tile runs the base GEMM's K loop
into an fp32 accumulator and then one more ``tl.dot`` with ``K = r`` onto the same accumulator
(``s`` folded into the ``[BM, r]`` tile of ``XA``), before the tile's only store. The kernel is
persistent (one program per SM, tiles grouped along M for L2 reuse) and loads through TMA
descriptors, which zero-fill past the edges: any M, N and K, and a rank below the tile's
16-column minimum reads as zero-padded.

``fusable`` says when it applies; callers use the cuBLAS path otherwise, which computes the
same sum (up to rounding: here the LoRA term is never rounded to the output dtype on its own).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton is a Linux-only dependency: cuBLAS runs everything there
    triton = None

_DTYPES = (torch.bfloat16, torch.float16)
# Measured on an H200 at 8192x14336x4096: ranks 8-64 run at 0.99-1.04x the bare cuBLAS GEMM
# (the cuBLAS LoRA-first pair: 1.10-1.27x); rank 128 needs two pipeline stages and runs at
# 1.36-1.44x, slower than the pair, so it stays on cuBLAS.
_MAX_RANK = 64
# A launch with five TMA descriptors costs ~45 us more host time than cuBLAS's pair (H200
# host, 88 vs 37 us per call), and the pass it saves is worth 7-15 us of GPU on an 8192x1024
# output (k/v) but ~60 us on 8192x4096 (q, o) and ~150-300 us on 8192x14336 (the MLP).
# Smaller outputs stay on cuBLAS.
_MIN_OUTPUT = 1 << 25
_enabled = True  # set_fused_gemm


def set_fused_gemm(enabled: bool) -> None:
    """Turn the fused LoRA GEMM on (the default) or off for the whole process; off, every
    projection takes cuBLAS's pair (``_linear.lora_first``): a control for benchmarks and an
    escape hatch. Both compute the same sum; they differ in rounding only."""
    global _enabled
    _enabled = bool(enabled)


@functools.cache
def _has_tma(device_index: int) -> bool:
    """NVIDIA sm_90+ (Hopper, Blackwell): TMA descriptors; ROCm builds report HIP as cuda."""
    return torch.version.hip is None and torch.cuda.get_device_capability(device_index)[0] >= 9


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _aligned(t: Tensor) -> bool:
    """TMA's rules: a unit inner stride, and a 16-byte aligned base and row stride."""
    size = t.element_size()
    return t.stride(1) == 1 and (t.stride(0) * size) % 16 == 0 and t.data_ptr() % 16 == 0


def fusable(X: Tensor, W: Tensor, XA: Tensor, U: Tensor) -> bool:
    """True when ``lora_matmul`` can and should run on these tensors: enabled
    (``set_fused_gemm``), NVIDIA sm_90+, eager (torch.compile keeps cuBLAS), one 16-bit dtype,
    a rank that is a multiple of 8 up to ``_MAX_RANK``, TMA-aligned 2-D layouts, an output of
    at least ``_MIN_OUTPUT`` elements. (Not under ``TRITON_INTERPRET=1``: Triton 3.9's
    interpreter loads bf16 through TMA descriptors wrongly, 3.6's cannot run the persistent
    loop.)"""
    if not _enabled or triton is None or not X.is_cuda or torch.compiler.is_compiling():
        return False
    if X.dtype not in _DTYPES or not X.dtype == W.dtype == XA.dtype == U.dtype:
        return False
    r = XA.shape[1]
    if r % 8 or r > _MAX_RANK or X.shape[0] * (U.numel() // r) < _MIN_OUTPUT:  # M x N
        return False
    if not all(_aligned(t) for t in (X, W, XA, U)):
        return False
    return _has_tma(X.device.index or 0)


def lora_matmul(X: Tensor, W: Tensor, XA: Tensor, U: Tensor, s: float, w_kn: bool) -> Tensor:
    """``X W^T + s XA U^T`` (``w_kn=False``) or ``X W + s XA U`` (``w_kn=True``); see the module
    docstring. The caller checks ``fusable`` first."""
    M, K = X.shape
    N = W.shape[1] if w_kn else W.shape[0]
    r = XA.shape[1]
    R = max(16, triton.next_power_of_2(r))
    # 128x256 tiles, three stages: 1.02x cuBLAS on the bare 8192x14336x4096 GEMM on an H200.
    BM, BN, BK = 128, 256, 64
    Y = torch.empty(M, N, device=X.device, dtype=X.dtype)
    n_sm = _sm_count(X.device.index or 0)
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    _kernel[(min(n_sm, tiles),)](
        TensorDescriptor.from_tensor(X, [BM, BK]),
        TensorDescriptor.from_tensor(W, [BK, BN] if w_kn else [BN, BK]),
        TensorDescriptor.from_tensor(XA, [BM, R]),
        TensorDescriptor.from_tensor(U, [R, BN] if w_kn else [BN, R]),
        TensorDescriptor.from_tensor(Y, [BM, BN // 2]),
        M,
        N,
        K,
        s,
        BM=BM,
        BN=BN,
        BK=BK,
        GROUP_M=8,
        N_SM=n_sm,
        W_KN=w_kn,
        SCALE=s != 1,
        num_stages=3,
        num_warps=8,
    )
    return Y


if triton is not None:

    @triton.jit
    def _tile(tile, n_in_group, n_m, GROUP_M: tl.constexpr):
        """Tile ``tile``'s (row, column) block, GROUP_M row blocks at a time (L2 reuse of W)."""
        first_m = (tile // n_in_group) * GROUP_M
        size_m = min(n_m - first_m, GROUP_M)
        return first_m + (tile % size_m), (tile % n_in_group) // size_m

    @triton.jit
    def _kernel(
        x_desc,
        w_desc,
        xa_desc,
        u_desc,
        y_desc,
        M,
        N,
        K,
        s,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
        GROUP_M: tl.constexpr,
        N_SM: tl.constexpr,
        W_KN: tl.constexpr,
        SCALE: tl.constexpr,
    ):
        n_m = tl.cdiv(M, BM)
        n_in_group = GROUP_M * tl.cdiv(N, BN)
        for tile in tl.range(tl.program_id(0), n_m * tl.cdiv(N, BN), N_SM, flatten=True):
            pm, pn = _tile(tile, n_in_group, n_m, GROUP_M)
            om, on = pm * BM, pn * BN
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k in range(tl.cdiv(K, BK)):
                x = x_desc.load([om, k * BK])
                if W_KN:
                    acc = tl.dot(x, w_desc.load([k * BK, on]), acc)
                else:
                    acc = tl.dot(x, w_desc.load([on, k * BK]).T, acc)
            xa = xa_desc.load([om, 0])
            if SCALE:
                xa = (xa.to(tl.float32) * s).to(xa.dtype)
            if W_KN:
                acc = tl.dot(xa, u_desc.load([0, on]), acc)
            else:
                acc = tl.dot(xa, u_desc.load([on, 0]).T, acc)
            # Two half-width stores: half the shared-memory staging of one full-tile store.
            left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
            y_desc.store([om, on], left.to(y_desc.dtype))
            y_desc.store([om, on + BN // 2], right.to(y_desc.dtype))
