"""The gated activation's backward and the gate, up and down adapters' rank-r gradients in one
pass over ``[M, I]`` (Hopper and later).

With ``dh`` ``[M, I]`` (the down projection's input gradient), the saved gate and up outputs
``e`` and ``g``, gate's and up's ``B_j`` ``[I, r]``, ``XA_j = X A_j^T`` ``[M, r]`` and scales
``s_j``, and down's ``dXA_d = s_d dY B_d`` ``[M, r]``::

    h   = act(e) g          de = dh g act'(e)          dg = dh act(e)    (rounded, as lk_triton)
    dXA = [s_g de B_g, s_u dg B_u]   [M, 2r]   (sums over I)
    dB_g = s_g de^T XA_g   dB_u = s_u dg^T XA_u   dA_d = dXA_d^T h   [I, r], [r, I] (sums over M)

Apart, the activation backward reads ``dh``, ``e`` and ``g`` and writes ``h``, ``de`` and ``dg``;
the down adapter's ``dA`` reads ``h`` back and ``_lora_grads`` reads ``de`` and ``dg`` again:
nine ``[M, I]`` passes (235 MB each at 8192 x 14336 in bf16). Here each ``[BM, BN]`` tile of
``dh``, ``e`` and ``g`` is loaded once, ``de`` and ``dg`` are stored once, and the tile feeds
the five rank-r products: five passes, and ``h`` never reaches memory.

The sums split as in ``_lora_grads``: one (column block, row chunk) unit per program at a time,
float32 partials of ``dXA`` per column block and of the ``[I, r]`` sums per row chunk, then
``_lora_grads.sums`` adds them in a fixed order, scales and rounds once (deterministic).
``de`` and ``dg`` may overwrite ``e`` and ``g`` (each element is read before the program that
reads it writes it). ``fusable_gated_grads`` says when it applies; ``_mlp`` runs the separate
kernels otherwise, which compute the same values up to the order of the sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lk_triton._launch import launch

from . import _lora_grads
from ._gemm import _DTYPES, _aligned, _runs_here, persistent_programs

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    from lk_triton._kernels import activation_and_derivative

    from ._gemm import _ACTIVATION
except ImportError:  # triton is a Linux-only dependency: the separate path runs everything there
    triton = None

_MAX_RANK = 16  # the three [r, BN] float32 accumulators share the registers with the tiles
_MIN_GRADIENT = 1 << 25  # M x I, as _lora_grads' bound: at 8192 tokens every MLP from I = 4096
_MAX_CHUNKS = 8  # row chunks: each adds a [3 I, R] float32 partial
# Tile, warps and pipeline stages of the partials kernel (a benchmark may sweep them).
_CONFIG = {"BM": 64, "BN": 128, "num_warps": 8, "num_stages": 1}


def fusable_gated_grads(
    dh: Tensor, e: Tensor, g: Tensor, Bs: Sequence[Tensor], XAs: Sequence[Tensor],
    dXA_down: Tensor | None,
) -> bool:  # fmt: skip
    """True when ``gated_lora_grads`` can and should run: where ``_gemm`` runs (enabled, eager,
    NVIDIA sm_90+), one 16-bit dtype, contiguous and TMA-aligned ``[M, I]`` tensors of one
    shape and at least ``_MIN_GRADIENT`` elements, one rank (down's too) that is a multiple of
    8 up to ``_MAX_RANK``, rank-r operands with unit inner strides."""
    r = XAs[0].shape[1]
    rank_r = (*Bs, *XAs, *([] if dXA_down is None else [dXA_down]))
    if r % 8 or not 0 < r <= _MAX_RANK or any(t.shape[1] != r for t in rank_r):
        return False
    if not (dh.shape == e.shape == g.shape and e.dim() == 2 and e.numel() >= _MIN_GRADIENT):
        return False
    if any(B.shape[0] != e.shape[1] for B in Bs) or any(t.shape[0] != e.shape[0] for t in XAs):
        return False
    if dXA_down is not None and dXA_down.shape[0] != e.shape[0]:
        return False
    if not _runs_here(e) or e.dtype not in _DTYPES:
        return False
    full = (dh, e, g)
    if not all(t.dtype == e.dtype for t in (*full, *rank_r)):
        return False
    tiles_fit = all(t.is_contiguous() and _aligned(t) for t in full)
    return tiles_fit and all(t.stride(1) == 1 for t in rank_r)


def gated_lora_grads(
    dh: Tensor,
    e: Tensor,
    g: Tensor,
    Bs: Sequence[Tensor],
    XAs: Sequence[Tensor],
    ss: Sequence[float],
    dXA_down: Tensor | None,
    activation: str,
    inplace: bool,
) -> tuple[Tensor, Tensor, list[Tensor], Tensor, Tensor | None]:
    """``(de, dg, [dB_g, dB_u], dXA, dA_d)`` (see the module docstring) for ``activation``
    ``"silu"``, ``"gelu"`` or ``"gelu_tanh"``; ``dA_d`` is None without ``dXA_down``. With
    ``inplace``, ``de`` and ``dg`` are written over ``e`` and ``g``. The caller checks
    ``fusable_gated_grads`` first."""
    M, N = e.shape
    r = XAs[0].shape[1]
    R = max(16, r)  # tl.dot's minimum; masked loads zero the columns past r
    BM, BN = _CONFIG["BM"], _CONFIG["BN"]
    n_sm = persistent_programs(e)
    blocks = triton.cdiv(N, BN)
    chunks, rows = _row_chunks(M, BM, blocks, n_sm)
    sums = 2 if dXA_down is None else 3
    de, dg = (e, g) if inplace else (torch.empty_like(e), torch.empty_like(g))
    part_dXA = torch.empty(2 * blocks, M, R, device=e.device, dtype=torch.float32)
    part_dB = torch.empty(chunks, sums * N, R, device=e.device, dtype=torch.float32)
    units = blocks * chunks
    programs = min(units, n_sm)
    (B_g, B_u), (XA_g, XA_u) = Bs, XAs
    dXA_d = XA_g if dXA_down is None else dXA_down  # read only with HAS_DA
    tiles = [TensorDescriptor.from_tensor(t, [BM, BN]) for t in (dh, e, g, de, dg)]
    args = [*tiles, N, B_g, B_g.stride(0), B_u, B_u.stride(0),
            XA_g, XA_g.stride(0), XA_u, XA_u.stride(0), dXA_d, dXA_d.stride(0),
            part_dXA, part_dB, M, r, rows, blocks, units, programs]  # fmt: skip
    options = {"ACTIVATION": _ACTIVATION[activation], "HAS_DA": dXA_down is not None,
               "R": R, **_CONFIG}  # fmt: skip
    launch(_partials_kernel, programs, args, options, e.device)
    dXA, dB = _lora_grads.sums(part_dXA, part_dB, r, [blocks, blocks], [N] * sums,
                               [*ss, 1.0], e.dtype)  # fmt: skip
    dB_g, dB_u, *dA_t = dB.split(N)
    return de, dg, [dB_g, dB_u], dXA, (dA_t[0].t() if dA_t else None)


def _row_chunks(M: int, BM: int, blocks: int, programs: int) -> tuple[int, int]:
    """``(chunks, rows)``: how many row chunks of ``rows`` rows (a multiple of ``BM``) to cut
    ``M`` into, so that the busiest of ``programs`` persistent programs, dealt ``blocks x
    chunks`` units in turn, has the fewest rows to walk; at most ``_MAX_CHUNKS``, and the
    fewest chunks among equals (each adds a partial of the ``[I, r]`` sums)."""
    tiles = triton.cdiv(M, BM)
    best = None
    for wanted in range(1, min(_MAX_CHUNKS, tiles) + 1):
        rows = triton.cdiv(tiles, wanted) * BM
        chunks = triton.cdiv(M, rows)
        busiest = triton.cdiv(blocks * chunks, programs) * rows
        if best is None or busiest < best[0]:
            best = (busiest, chunks, rows)
    return best[1], best[2]


if triton is not None:

    @triton.jit
    def _rank_block(ptr, stride, i, n_i, r, R: tl.constexpr):
        """Rows ``i`` (zero past ``n_i``) of a ``[n, r]`` operand, zero-padded to ``R`` columns."""
        rank = tl.arange(0, R)
        mask = (i < n_i)[:, None] & (rank < r)[None, :]
        return tl.load(ptr + i.to(tl.int64)[:, None] * stride + rank[None, :], mask=mask, other=0.0)

    @triton.jit
    def _partials_kernel(
        dh_desc, e_desc, g_desc, de_desc, dg_desc, N,
        bg_ptr, bg_stride, bu_ptr, bu_stride, xag_ptr, xag_stride, xau_ptr, xau_stride,
        dxad_ptr, dxad_stride, part_dxa_ptr, part_db_ptr, M, r, ROWS, BLOCKS, UNITS, PROGRAMS,
        ACTIVATION: tl.constexpr, HAS_DA: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
        R: tl.constexpr,
    ):  # fmt: skip
        """Units (column block ``c``, row chunk ``k``) dealt to the programs in turn. A unit
        walks its chunk a ``[BM, BN]`` tile at a time: ``de`` and ``dg`` stored, ``part_dXA[c]``
        (gate) and ``part_dXA[BLOCKS + c]`` (up) for the tile's rows, and its columns' sums
        carried to ``part_dB[k]``: ``dB_g``, ``dB_u`` and ``dA_d^T`` one ``N`` rows after the
        other. Every product takes the computed tile as its second operand, transposed or not
        (``dXA^T = B^T de^T``, ``dB^T = XA^T de``), the rank-r one first: so each computed tile
        reaches the dots in one layout. With the tile first in some (``de B``, ``de^T XA``),
        the compiler recomputed the activation in each layout, which spilled (255 registers
        and 0.4-10 KB of spills per thread, against none at 64 x 128 with eight warps)."""
        rank = tl.arange(0, R)
        n_sums = 3 if HAS_DA else 2
        for unit in tl.range(tl.program_id(0), UNITS, PROGRAMS):
            c, k = unit % BLOCKS, unit // BLOCKS
            cols = c * BN + tl.arange(0, BN)
            b_g = tl.trans(_rank_block(bg_ptr, bg_stride, cols, N, r, R))  # [R, BN]
            b_u = tl.trans(_rank_block(bu_ptr, bu_stride, cols, N, r, R))
            db_g = tl.zeros((R, BN), dtype=tl.float32)
            db_u = tl.zeros((R, BN), dtype=tl.float32)
            da_d = tl.zeros((R, BN), dtype=tl.float32)
            for i in tl.range(0, ROWS // BM):
                om = k * ROWS + i * BM
                rows = om + tl.arange(0, BM)
                dh = dh_desc.load([om, c * BN]).to(tl.float32)
                ev = e_desc.load([om, c * BN]).to(tl.float32)
                gv = g_desc.load([om, c * BN]).to(tl.float32)
                a, da = activation_and_derivative(ev, ACTIVATION)
                de = (dh * gv * da).to(de_desc.dtype)
                dg = (dh * a).to(dg_desc.dtype)
                de_desc.store([om, c * BN], de)
                dg_desc.store([om, c * BN], dg)
                out = ((c * M + rows).to(tl.int64) * R)[None, :] + rank[:, None]
                row_in = (rows < M)[None, :]
                tl.store(part_dxa_ptr + out, tl.dot(b_g, tl.trans(de)), mask=row_in)
                up = part_dxa_ptr + out + BLOCKS * M * R
                tl.store(up, tl.dot(b_u, tl.trans(dg)), mask=row_in)
                xag = tl.trans(_rank_block(xag_ptr, xag_stride, rows, M, r, R))
                db_g = tl.dot(xag, de, db_g)
                xau = tl.trans(_rank_block(xau_ptr, xau_stride, rows, M, r, R))
                db_u = tl.dot(xau, dg, db_u)
                if HAS_DA:
                    h = (a * gv).to(dg_desc.dtype)
                    dxa_d = tl.trans(_rank_block(dxad_ptr, dxad_stride, rows, M, r, R))
                    da_d = tl.dot(dxa_d, h, da_d)
            out = ((k * n_sums * N + cols).to(tl.int64) * R)[None, :] + rank[:, None]
            col_in = (cols < N)[None, :]
            tl.store(part_db_ptr + out, db_g, mask=col_in)
            tl.store(part_db_ptr + out + N * R, db_u, mask=col_in)
            if HAS_DA:
                tl.store(part_db_ptr + out + 2 * N * R, da_d, mask=col_in)
