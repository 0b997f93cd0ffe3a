"""The MLP's gated-activation backward with down's ``dA`` in the same pass (Hopper and later).

With ``dh`` ``[M, I]`` (the gradient at down's input), gate and up outputs ``e`` and ``g`` and
down's adapter gradient ``dXA = s dY B`` ``[M, r]`` (``_linear.backward_input``'s pending
item)::

    h  = act(e) g              (rounded to the activations' dtype, as the forward stored it)
    de = dh g act'(e)          dg = dh act(e)
    dA = dXA^T h               [r, I]   (a sum over M)

Separately, lk_triton's backward writes ``h`` (six ``[M, I]`` passes with ``dh``, ``e``, ``g``,
``de`` and ``dg``) only for cuBLAS to read it back for ``dA``: two of the eight passes. Here
``h`` stays in registers: each program loads ``[BM, BN]`` tiles of ``dh``, ``e`` and ``g``
down its row chunk, stores ``de`` and ``dg``, and adds ``dXA[rows]^T h`` to one ``[R, BN]``
float32 accumulator (``h`` as the second ``tl.dot`` operand, so it has one register layout).
Each (column block, row chunk) program stores its accumulator as a partial; a second kernel
sums the partials in a fixed order and rounds once to ``A``'s dtype, so ``dA`` is
deterministic, like cuBLAS's. The elementwise math is lk_triton's (``activation_and_derivative``,
float32, rounded once): ``de`` and ``dg`` are the same bits.

One ``[r, BN]`` accumulator is all this pass can carry: the fourteenth session's kernel that
also computed gate's and up's ``dB`` and ``dXA`` here spilled or lost its occupancy
(BENCHMARKS.md). Measured on an H100 at 8192 x 14336, r = 16 (BENCHMARKS.md, fifteenth
session): 444 us against the separate pair's 557. ``fusable_activation_dA`` says when it applies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lk_triton._launch import launch

from ._gemm import _DTYPES, _runs_here

try:
    import triton
    import triton.language as tl

    from ._gemm import _ACTIVATION
except ImportError:  # triton is a Linux-only dependency: lk_triton's kernel and cuBLAS run there
    triton = None

# BM x BN tiles, eight warps, pointer loads, one program per (column block, row chunk) of
# ``_ROWS`` rows: the fastest of the fifteenth session's sweep (TMA loads and persistent
# programs were no faster; 64 x 64 and 32 x 128 within 2%).
_TILE = (64, 128)
_NUM_WARPS = 8
_ROWS = 512  # a multiple of BM; 16 row chunks at 8192 tokens
_MAX_RANK = 64
_SUM_BLOCK = 1024


def fusable_activation_dA(dh: Tensor, e: Tensor, g: Tensor, dXA: Tensor, A: Tensor) -> bool:
    """True when ``activation_backward_with_dA`` can run: where ``_gemm``'s kernels run
    (enabled, eager, NVIDIA sm_90+), contiguous ``[M, I]`` tensors of one 16-bit dtype that
    ``dXA`` and ``A`` share, a rank up to ``_MAX_RANK``."""
    if not _runs_here(dh) or dh.dtype not in _DTYPES or not 0 < dXA.shape[1] <= _MAX_RANK:
        return False
    if any(t.dtype != dh.dtype for t in (e, g, dXA, A)) or dXA.stride(1) != 1:
        return False
    return dh.shape == e.shape == g.shape and all(t.is_contiguous() for t in (dh, e, g))


def activation_backward_with_dA(
    dh: Tensor, e: Tensor, g: Tensor, dXA: Tensor, activation: str, inplace: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(de, dg, dA)`` (see the module docstring); ``activation`` is ``"silu"``, ``"gelu"`` or
    ``"gelu_tanh"``. With ``inplace``, ``de`` and ``dg`` overwrite ``e`` and ``g``. ``dA`` is
    in ``dXA``'s dtype. The caller checks ``fusable_activation_dA`` first."""
    M, N = e.shape
    r = dXA.shape[1]
    BM, BN = _TILE
    blocks, chunks = triton.cdiv(N, BN), triton.cdiv(M, _ROWS)
    de, dg = (e, g) if inplace else (torch.empty_like(e), torch.empty_like(g))
    part = torch.empty(chunks, r, N, device=e.device, dtype=torch.float32)
    args = [dh, e, g, de, dg, dXA, dXA.stride(0), part, M, N, r, blocks]
    options = {"ROWS": _ROWS, "BM": BM, "BN": BN, "R": max(16, 1 << (r - 1).bit_length()),
               "ACTIVATION": _ACTIVATION[activation], "num_warps": _NUM_WARPS}  # fmt: skip
    launch(_partials_kernel, blocks * chunks, args, options, e.device)
    dA = torch.empty(r, N, device=e.device, dtype=dXA.dtype)
    args = [part, dA, r * N, chunks]
    launch(_sum_kernel, triton.cdiv(r * N, _SUM_BLOCK), args, {"BLOCK": _SUM_BLOCK}, e.device)
    return de, dg, dA


if triton is not None:
    from lk_triton._kernels import activation_and_derivative

    @triton.jit
    def _partials_kernel(
        dh_ptr, e_ptr, g_ptr, de_ptr, dg_ptr, dxa_ptr, dxa_stride, part_ptr, M, N, r, BLOCKS,
        ROWS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
        ACTIVATION: tl.constexpr,
    ):  # fmt: skip
        """Program ``c + k BLOCKS``: column block ``c``'s ``de`` and ``dg`` over row chunk
        ``k``, and ``part[k, :, cols] = dXA[rows]^T h[rows, cols]``. Each element is read
        before this program writes it, so ``de`` and ``dg`` may alias ``e`` and ``g``."""
        c, k = tl.program_id(0) % BLOCKS, tl.program_id(0) // BLOCKS
        cols = c * BN + tl.arange(0, BN)
        rank = tl.arange(0, R)
        acc = tl.zeros((R, BN), dtype=tl.float32)
        for i in tl.range(0, ROWS // BM):
            rows = k * ROWS + i * BM + tl.arange(0, BM)
            mask = (rows < M)[:, None] & (cols < N)[None, :]
            offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
            dh = tl.load(dh_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            ev = tl.load(e_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            gv = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            a, da = activation_and_derivative(ev, ACTIVATION)
            tl.store(de_ptr + offsets, (dh * gv * da).to(de_ptr.dtype.element_ty), mask=mask)
            tl.store(dg_ptr + offsets, (dh * a).to(dg_ptr.dtype.element_ty), mask=mask)
            h = (a * gv).to(dh_ptr.dtype.element_ty)  # zero past the edges: act(0) 0
            dxa_mask = (rank < r)[:, None] & (rows < M)[None, :]
            dxa_t = tl.load(dxa_ptr + rows.to(tl.int64)[None, :] * dxa_stride + rank[:, None],
                            mask=dxa_mask, other=0.0)  # fmt: skip
            acc = tl.dot(dxa_t, h, acc)
        out = (k * r + rank).to(tl.int64)[:, None] * N + cols[None, :]
        tl.store(part_ptr + out, acc, mask=(rank < r)[:, None] & (cols < N)[None, :])

    @triton.jit
    def _sum_kernel(part_ptr, out_ptr, n, CHUNKS, BLOCK: tl.constexpr):
        """``out = sum_k part[k]`` over the ``n`` elements of each chunk, in chunk order,
        rounded once to ``out``'s dtype."""
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < n
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for k in range(CHUNKS):
            acc += tl.load(part_ptr + k * n + idx, mask=mask, other=0.0)
        tl.store(out_ptr + idx, acc.to(out_ptr.dtype.element_ty), mask=mask)
