"""A base GEMM with the LoRA term added in its epilogue, in one Triton kernel (Hopper and later).

With ``X`` ``[M, K]`` and a rank-``r`` pair ``XA`` ``[M, r]``, ``U``::

    Y = X W^T + s XA U^T (+ bias)   W [N, K], U = B [N, r]   (a projection's output)
    Y = X W   + s XA U              W [K, N], U = A [r, N]   (its input gradient: dY W + dXA A)

Up to two more base pairs ``X_j W_j`` (each with its own ``K_j``) run into the same accumulator
one after the other: the input gradient of projections that share an input, ``dX = dY_q W_q +
dY_k W_k + dY_v W_v + dXA A`` (or gate and up), in one kernel and one store, where cuBLAS
reads and rewrites ``dX`` once per extra projection. ``lora_matmul_group`` computes two or
three projections of one input (q, k and v) in one launch, and ``gated_lora_matmul`` gate and
up with the gated activation in the epilogue (``e``, ``g`` and ``h = act(e) g`` each stored
once). A base bias (Qwen2's q/k/v) is added to the fp32 accumulator in the epilogue too, as
cuBLAS's bias epilogue does.

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
Building the TMA descriptors needs a current CUDA context on the calling thread: a thread that
has run no CUDA op yet has none ("invalid device context"). The Functions always run a cuBLAS
GEMM on the thread first, which makes the device's primary context current.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lk_triton._launch import launch

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    from lk_triton._kernels import GELU_ERF, GELU_TANH, SILU, activation_and_derivative

    _ACTIVATION = {"silu": SILU, "gelu": GELU_ERF, "gelu_tanh": GELU_TANH}
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
# Smaller outputs stay on cuBLAS; a group (q, k and v in one launch) counts its outputs together.
_MIN_OUTPUT = 1 << 25
_MAX_MORE = 2  # extra base pairs: q/k/v's input gradient has three
# BM x BN x BK, with three stages and eight warps: 1.02x cuBLAS on the bare 8192x14336x4096
# GEMM on an H200, and faster than 256x128, 128x128 (4 or 5 stages, 4 or 8 warps) on o dX, q
# forward and gate dX; four stages or BK = 128 do not fit in shared memory.
_TILE = (128, 256, 64)
_MAX_GROUP = 3  # outputs of one launch: q, k and v
_enabled = True  # set_fused_gemm


def set_fused_gemm(enabled: bool) -> None:
    """Turn the fused LoRA GEMM on (the default) or off for the whole process; off, every
    projection takes cuBLAS's pair (``_linear.lora_first``), ``dB`` and ``dXA`` cuBLAS's two
    GEMMs (not ``_lora_grads``), and the MLP's ``dh`` cuBLAS and lk_triton's activation backward
    (not ``_down_backward``): a control for benchmarks and an escape hatch. Both compute the
    same sums; they differ in rounding only."""
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


def _output_aligned(N: int, X: Tensor) -> bool:
    """Whether a new ``[M, N]`` output in ``X``'s dtype takes TMA stores: 16-byte rows (no
    operand of ``X W^T`` has ``N`` as its row length)."""
    return N * X.element_size() % 16 == 0


def fusable(
    X: Tensor,
    W: Tensor,
    XA: Tensor,
    U: Tensor,
    more: Sequence[tuple[Tensor, Tensor]] = (),
    bias: Tensor | None = None,
) -> bool:
    """True when ``lora_matmul`` can and should run on these tensors (and the extra base pairs
    ``more``, or the bias): enabled (``set_fused_gemm``), NVIDIA sm_90+, eager (torch.compile
    keeps cuBLAS), one 16-bit dtype, a rank that is a multiple of 8 up to ``_MAX_RANK``, at
    most ``_MAX_MORE`` extra pairs, TMA-aligned 2-D layouts, a contiguous bias, an output of at
    least ``_MIN_OUTPUT`` elements with 16-byte rows. (Not under ``TRITON_INTERPRET=1``:
    Triton 3.9's interpreter loads bf16 through TMA descriptors wrongly, 3.6's cannot run the
    persistent loop; the kernels run there on float32 CPU tensors, for the tests.)"""
    r = XA.shape[1]
    N = U.numel() // r if r else 0
    if r == 0 or X.shape[0] * N < _MIN_OUTPUT or not _output_aligned(N, X):
        return False
    return _runs_here(X) and _operands_fit(X, W, XA, U, more, bias)


def fusable_gated(
    X: Tensor, Ws: Sequence[Tensor], XAs: Sequence[Tensor], Us: Sequence[Tensor]
) -> bool:
    """True when ``gated_lora_matmul`` can and should run: gate and up weights of one shape on
    which ``lora_matmul_group`` could run (the same operands, outputs and size)."""
    return len(Ws) == 2 and Ws[0].shape == Ws[1].shape and fusable_group(X, Ws, XAs, Us)


def fusable_group(
    X: Tensor,
    Ws: Sequence[Tensor],
    XAs: Sequence[Tensor],
    Us: Sequence[Tensor],
    biases: Sequence[Tensor | None] | None = None,
) -> bool:
    """True when ``lora_matmul_group`` can and should run: two or three outputs, each on which
    ``lora_matmul`` could run, of at least ``_MIN_OUTPUT`` elements together."""
    if not 1 < len(Ws) <= _MAX_GROUP or X.shape[0] * sum(W.shape[0] for W in Ws) < _MIN_OUTPUT:
        return False
    if not all(_output_aligned(W.shape[0], X) for W in Ws) or not _runs_here(X):
        return False
    parts = zip(Ws, XAs, Us, biases or [None] * len(Ws), strict=True)
    return all(_operands_fit(X, W, XA, U, (), bias) for W, XA, U, bias in parts)


def _runs_here(X: Tensor) -> bool:
    """The process and device ``fusable`` asks for: enabled, Triton, eager, NVIDIA sm_90+."""
    if not _enabled or triton is None or not X.is_cuda or torch.compiler.is_compiling():
        return False
    return _has_tma(X.device.index or 0)


def _operands_fit(
    X: Tensor,
    W: Tensor,
    XA: Tensor,
    U: Tensor,
    more: Sequence[tuple[Tensor, Tensor]],
    bias: Tensor | None,
) -> bool:
    """The operands ``fusable`` asks for: rank, dtypes, bias layout, TMA alignment."""
    r = XA.shape[1]
    if r % 8 or r > _MAX_RANK or len(more) > _MAX_MORE:
        return False
    tensors = (X, W, XA, U, *(t for pair in more for t in pair))
    if X.dtype not in _DTYPES or any(t.dtype != X.dtype for t in tensors):
        return False
    if bias is not None and (bias.dtype != X.dtype or bias.dim() != 1 or bias.stride(0) != 1):
        return False
    return all(_aligned(t) for t in tensors)


def persistent_programs(X: Tensor) -> int:
    """How many programs a persistent kernel on ``X``'s device runs: one per SM; three under
    the interpreter (CPU tensors, tests)."""
    return _sm_count(X.device.index or 0) if X.is_cuda else 3


def _launch_options(X: Tensor) -> dict[str, Any]:
    """Both launchers' tile, grouping, pipeline and persistence options (``_TILE``): one
    persistent program per SM (``persistent_programs``)."""
    BM, BN, BK = _TILE
    n_sm = persistent_programs(X)
    return {"BM": BM, "BN": BN, "BK": BK, "GROUP_M": 8, "N_SM": n_sm,
            "num_stages": 3, "num_warps": 8}  # fmt: skip


def _rank_block(XAs: Sequence[Tensor]) -> int:
    """The LoRA product's K tile: the largest rank, a power of two, at least 16 (``tl.dot``).
    (``1 << (r - 1).bit_length()`` rather than ``triton.next_power_of_2``: ~5 us less host.)"""
    return max(16, 1 << (max(XA.shape[1] for XA in XAs) - 1).bit_length())


def lora_matmul(
    X: Tensor,
    W: Tensor,
    XA: Tensor,
    U: Tensor,
    s: float,
    w_kn: bool,
    more: Sequence[tuple[Tensor, Tensor]] = (),
    bias: Tensor | None = None,
) -> Tensor:
    """``X W^T + s XA U^T (+ bias)`` (``w_kn=False``) or ``X W + s XA U`` (``w_kn=True``), plus
    ``X_j W_j^T`` (or ``X_j W_j``) for each pair of ``more``; see the module docstring. The
    caller checks ``fusable`` first."""
    M = X.shape[0]
    N = W.shape[1] if w_kn else W.shape[0]
    if bias is not None and w_kn:
        raise ValueError("lora_matmul: a bias belongs to a projection's output (w_kn=False)")
    for X_j, W_j in more:
        if X_j.shape[0] != M or (W_j.shape[1] if w_kn else W_j.shape[0]) != N:
            raise ValueError(f"lora_matmul: extra pair {tuple(X_j.shape)} x {tuple(W_j.shape)} "
                             f"does not add onto the [{M}, {N}] output")  # fmt: skip
    R = _rank_block([XA])
    BM, BN, BK = _TILE
    Y = torch.empty(M, N, device=X.device, dtype=X.dtype)
    options = _launch_options(X)
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    pairs: list[Any] = []  # X_j, W_j descriptors and K_j of the three pairs; None when absent
    for X_j, W_j in ((X, W), *more):
        pairs += (TensorDescriptor.from_tensor(X_j, [BM, BK]),
                  TensorDescriptor.from_tensor(W_j, [BK, BN] if w_kn else [BN, BK]),
                  X_j.shape[1])  # fmt: skip
    pairs += (None, None, 0) * (_MAX_MORE - len(more))
    args = [*pairs,
            TensorDescriptor.from_tensor(XA, [BM, R]),
            TensorDescriptor.from_tensor(U, [R, BN] if w_kn else [BN, R]),
            TensorDescriptor.from_tensor(Y, [BM, BN // 2]),
            bias, M, N, s]  # fmt: skip
    constexprs = {"PAIRS": 1 + len(more), "HAS_BIAS": bias is not None, "W_KN": w_kn,
                  "SCALE": s != 1, **options}  # fmt: skip
    launch(_kernel, min(options["N_SM"], tiles), args, constexprs, X.device)
    return Y


def gated_lora_matmul(
    X: Tensor,
    Ws: Sequence[Tensor],
    XAs: Sequence[Tensor],
    Us: Sequence[Tensor],
    ss: Sequence[float],
    activation: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gate, up and the gated activation in one kernel: ``(e, g, h)`` with::

        e = X W_g^T + s_g XA_g B_g^T    g = X W_u^T + s_u XA_u B_u^T    h = act(e) g

    ``e`` and ``g`` rounded to ``X``'s dtype before ``h`` is computed from them, as separate
    kernels would. Each output tile of ``e`` and its tile of ``g`` share one program and one
    load of ``X`` per K step; ``e``, ``g`` and ``h`` are each stored once, where the separate
    activation kernel reads ``e`` and ``g`` back. The caller checks ``fusable_gated`` first."""
    (Wg, Wu), (XA_g, XA_u), (Bg, Bu), (sg, su) = Ws, XAs, Us, ss
    M, K = X.shape
    N = Wg.shape[0]
    R = _rank_block(XAs)
    BM, BN, BK = _TILE
    BN //= 2  # a [BM, BN] tile of e and one of g: the register budget of one [BM, 2 BN] tile
    options = {**_launch_options(X), "BN": BN}
    e, g, h = (torch.empty(M, N, device=X.device, dtype=X.dtype) for _ in range(3))
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    args = [TensorDescriptor.from_tensor(X, [BM, BK]),
            TensorDescriptor.from_tensor(Wg, [BN, BK]),
            TensorDescriptor.from_tensor(Wu, [BN, BK]),
            K,
            TensorDescriptor.from_tensor(XA_g, [BM, R]),
            TensorDescriptor.from_tensor(Bg, [BN, R]),
            sg,
            TensorDescriptor.from_tensor(XA_u, [BM, R]),
            TensorDescriptor.from_tensor(Bu, [BN, R]),
            su,
            TensorDescriptor.from_tensor(e, [BM, BN]),
            TensorDescriptor.from_tensor(g, [BM, BN]),
            TensorDescriptor.from_tensor(h, [BM, BN // 2]),
            M, N]  # fmt: skip
    constexprs = {"SCALE": sg != 1 or su != 1, "ACTIVATION": _ACTIVATION[activation], **options}
    launch(_gated_kernel, min(options["N_SM"], tiles), args, constexprs, X.device)
    return e, g, h


def lora_matmul_group(
    X: Tensor,
    Ws: Sequence[Tensor],
    XAs: Sequence[Tensor],
    Us: Sequence[Tensor],
    ss: Sequence[float],
    biases: Sequence[Tensor | None] | None = None,
) -> list[Tensor]:
    """``[X W_j^T + s_j XA_j U_j^T (+ bias_j) for each j]``, two or three projections of one
    ``X`` (q, k and v) in one launch: their tiles are dealt to the same persistent programs in
    turn. The caller checks ``fusable_group`` first."""
    M, K = X.shape
    R = _rank_block(XAs)
    BM, BN, BK = _TILE
    options = _launch_options(X)
    outs = [torch.empty(M, W.shape[0], device=X.device, dtype=X.dtype) for W in Ws]
    biases = biases or [None] * len(Ws)
    args: list[Any] = []
    for W, XA, U, Y, s, bias in zip(Ws, XAs, Us, outs, ss, biases, strict=True):
        args += (TensorDescriptor.from_tensor(W, [BN, BK]),
                 TensorDescriptor.from_tensor(XA, [BM, R]),
                 TensorDescriptor.from_tensor(U, [BN, R]),
                 TensorDescriptor.from_tensor(Y, [BM, BN // 2]), bias, W.shape[0], s)  # fmt: skip
    args += (None, None, None, None, None, 0, 1.0) * (_MAX_GROUP - len(Ws))
    has_bias = [b is not None for b in biases] + [False] * (_MAX_GROUP - len(Ws))
    tiles = triton.cdiv(M, BM) * sum(triton.cdiv(W.shape[0], BN) for W in Ws)
    constexprs = {"OUTPUTS": len(Ws), "SCALE": any(s != 1 for s in ss), "HAS_BIAS0": has_bias[0],
                  "HAS_BIAS1": has_bias[1], "HAS_BIAS2": has_bias[2], **options}  # fmt: skip
    args = [TensorDescriptor.from_tensor(X, [BM, BK]), K, M, *args]
    launch(_grouped_kernel, min(options["N_SM"], tiles), args, constexprs, X.device)
    return outs


if triton is not None:

    @triton.jit
    def _tile(tile, n_in_group, n_m, GROUP_M: tl.constexpr):
        """Tile ``tile``'s (row, column) block, GROUP_M row blocks at a time (L2 reuse of W)."""
        first_m = (tile // n_in_group) * GROUP_M
        size_m = min(n_m - first_m, GROUP_M)
        return first_m + (tile % size_m), (tile % n_in_group) // size_m

    @triton.jit
    def _k_loop(acc, x_desc, w_desc, K, om, on, BK: tl.constexpr, W_KN: tl.constexpr):
        """``acc += X[om:, :K] W`` over one pair's K, a ``BK`` slice at a time."""
        for k in range(tl.cdiv(K, BK)):
            x = x_desc.load([om, k * BK])
            if W_KN:
                acc = tl.dot(x, w_desc.load([k * BK, on]), acc)
            else:
                acc = tl.dot(x, w_desc.load([on, k * BK]).T, acc)
        return acc

    @triton.jit
    def _halves(t, BM: tl.constexpr, BN: tl.constexpr):
        """The left and right ``[BM, BN // 2]`` halves of a ``[BM, BN]`` tile."""
        return tl.split(tl.permute(tl.reshape(t, (BM, 2, BN // 2)), (0, 2, 1)))

    @triton.jit
    def _add_lora(acc, xa_desc, u_desc, s, om, on, W_KN: tl.constexpr, SCALE: tl.constexpr):
        """``acc + s XA U`` (``U^T`` unless ``W_KN``) on the tile at ``(om, on)``: one more
        ``tl.dot``, K = the rank, ``s`` folded into the ``[BM, r]`` tile of ``XA``."""
        xa = xa_desc.load([om, 0])
        if SCALE:
            xa = (xa.to(tl.float32) * s).to(xa.dtype)
        if W_KN:
            acc = tl.dot(xa, u_desc.load([0, on]), acc)
        else:
            acc = tl.dot(xa, u_desc.load([on, 0]).T, acc)
        return acc

    @triton.jit
    def _tiles(
        first, x_desc, w_desc, K, x1_desc, w1_desc, K1, x2_desc, w2_desc, K2,
        xa_desc, u_desc, y_desc, bias_ptr, M, N, s,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
        N_SM: tl.constexpr, PAIRS: tl.constexpr, W_KN: tl.constexpr, SCALE: tl.constexpr,
        HAS_BIAS: tl.constexpr,
    ):  # fmt: skip
        """One output's tiles ``first``, ``first + N_SM``, ...: the persistent loop."""
        n_m = tl.cdiv(M, BM)
        n_in_group = GROUP_M * tl.cdiv(N, BN)
        for tile in tl.range(first, n_m * tl.cdiv(N, BN), N_SM, flatten=True):
            pm, pn = _tile(tile, n_in_group, n_m, GROUP_M)
            om, on = pm * BM, pn * BN
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            acc = _k_loop(acc, x_desc, w_desc, K, om, on, BK, W_KN)
            if PAIRS > 1:
                acc = _k_loop(acc, x1_desc, w1_desc, K1, om, on, BK, W_KN)
            if PAIRS > 2:
                acc = _k_loop(acc, x2_desc, w2_desc, K2, om, on, BK, W_KN)
            acc = _add_lora(acc, xa_desc, u_desc, s, om, on, W_KN, SCALE)
            if HAS_BIAS:
                cols = on + tl.arange(0, BN)
                bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0)
                acc += bias.to(tl.float32)[None, :]
            # Two half-width stores: half the shared-memory staging of one full-tile store.
            left, right = _halves(acc, BM, BN)
            y_desc.store([om, on], left.to(y_desc.dtype))
            y_desc.store([om, on + BN // 2], right.to(y_desc.dtype))

    @triton.jit
    def _kernel(
        x_desc, w_desc, K, x1_desc, w1_desc, K1, x2_desc, w2_desc, K2,
        xa_desc, u_desc, y_desc, bias_ptr, M, N, s,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
        N_SM: tl.constexpr, PAIRS: tl.constexpr, W_KN: tl.constexpr, SCALE: tl.constexpr,
        HAS_BIAS: tl.constexpr,
    ):  # fmt: skip
        _tiles(
            tl.program_id(0), x_desc, w_desc, K, x1_desc, w1_desc, K1, x2_desc, w2_desc, K2,
            xa_desc, u_desc, y_desc, bias_ptr, M, N, s, BM, BN, BK, GROUP_M, N_SM, PAIRS, W_KN,
            SCALE, HAS_BIAS,
        )  # fmt: skip

    @triton.jit
    def _gated_forward_store(e, g, om, on, h_desc, ACTIVATION: tl.constexpr):
        """``h = act(e) g`` on a sub-tile of the rounded ``e`` and ``g``."""
        a, _ = activation_and_derivative(e.to(tl.float32), ACTIVATION)
        h_desc.store([om, on], (a * g.to(tl.float32)).to(h_desc.dtype))

    @triton.jit
    def _gated_kernel(
        x_desc, wg_desc, wu_desc, K, xag_desc, bg_desc, sg, xau_desc, bu_desc, su,
        e_desc, g_desc, h_desc, M, N,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
        N_SM: tl.constexpr, SCALE: tl.constexpr, ACTIVATION: tl.constexpr,
    ):  # fmt: skip
        """``e``, ``g`` and ``h = act(e) g`` (``gated_lora_matmul``), persistent over tiles."""
        n_m = tl.cdiv(M, BM)
        n_in_group = GROUP_M * tl.cdiv(N, BN)
        for tile in tl.range(tl.program_id(0), n_m * tl.cdiv(N, BN), N_SM, flatten=True):
            pm, pn = _tile(tile, n_in_group, n_m, GROUP_M)
            om, on = pm * BM, pn * BN
            acc_e = tl.zeros((BM, BN), dtype=tl.float32)
            acc_g = tl.zeros((BM, BN), dtype=tl.float32)
            for k in range(tl.cdiv(K, BK)):
                x = x_desc.load([om, k * BK])
                acc_e = tl.dot(x, wg_desc.load([on, k * BK]).T, acc_e)
                acc_g = tl.dot(x, wu_desc.load([on, k * BK]).T, acc_g)
            e = _add_lora(acc_e, xag_desc, bg_desc, sg, om, on, False, SCALE).to(e_desc.dtype)
            e_desc.store([om, on], e)
            g = _add_lora(acc_g, xau_desc, bu_desc, su, om, on, False, SCALE).to(g_desc.dtype)
            g_desc.store([om, on], g)
            e0, e1 = _halves(e, BM, BN)
            g0, g1 = _halves(g, BM, BN)
            _gated_forward_store(e0, g0, om, on, h_desc, ACTIVATION)
            _gated_forward_store(e1, g1, om, on + BN // 2, h_desc, ACTIVATION)

    @triton.jit
    def _first(done, N_SM: tl.constexpr):
        """This program's first tile of an output that starts after ``done`` tiles of the
        outputs before it: tiles are dealt round-robin over the programs across outputs."""
        return (tl.program_id(0) - done % N_SM + N_SM) % N_SM

    @triton.jit
    def _grouped_kernel(
        x_desc, K, M,
        w0_desc, xa0_desc, u0_desc, y0_desc, b0_ptr, N0, s0,
        w1_desc, xa1_desc, u1_desc, y1_desc, b1_ptr, N1, s1,
        w2_desc, xa2_desc, u2_desc, y2_desc, b2_ptr, N2, s2,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
        N_SM: tl.constexpr, OUTPUTS: tl.constexpr, SCALE: tl.constexpr,
        HAS_BIAS0: tl.constexpr, HAS_BIAS1: tl.constexpr, HAS_BIAS2: tl.constexpr,
    ):  # fmt: skip
        """``Y_j = X W_j^T + s_j XA_j U_j^T (+ b_j)`` for up to three outputs of one ``X``."""
        _tiles(
            tl.program_id(0), x_desc, w0_desc, K, None, None, 0, None, None, 0,
            xa0_desc, u0_desc, y0_desc, b0_ptr, M, N0, s0, BM, BN, BK, GROUP_M, N_SM, 1, False,
            SCALE, HAS_BIAS0,
        )  # fmt: skip
        done = tl.cdiv(M, BM) * tl.cdiv(N0, BN)
        if OUTPUTS > 1:
            _tiles(
                _first(done, N_SM), x_desc, w1_desc, K, None, None, 0, None, None, 0,
                xa1_desc, u1_desc, y1_desc, b1_ptr, M, N1, s1, BM, BN, BK, GROUP_M, N_SM, 1,
                False, SCALE, HAS_BIAS1,
            )  # fmt: skip
            done += tl.cdiv(M, BM) * tl.cdiv(N1, BN)
        if OUTPUTS > 2:
            _tiles(
                _first(done, N_SM), x_desc, w2_desc, K, None, None, 0, None, None, 0,
                xa2_desc, u2_desc, y2_desc, b2_ptr, M, N2, s2, BM, BN, BK, GROUP_M, N_SM, 1,
                False, SCALE, HAS_BIAS2,
            )  # fmt: skip
