"""Base + LoRA matmuls for projections that read one input ``X`` (QKV, gate/up, O, down).

Per projection, with ``X`` ``[N, k]``, base ``W`` ``[o, k]`` and adapters ``a`` (``A_a`` ``[r, k]``,
``B_a`` ``[o, r]``, dropout mask ``M_a`` or none, ``X_a = X * M_a``)::

    Y = X W^T + bias + sum_a s_a (X_a A_a^T B_a^T + b_a)

accumulated in ``acc = promote(X.dtype, A.dtype)`` and rounded to ``X.dtype`` once, as PEFT
does (its adapters are often fp32 while ``X`` is bf16). With one adapter computed in ``X.dtype``
the LoRA term ``L = X_a A^T B^T`` comes first and the base GEMM accumulates onto it in place
(``L <- s L + X W^T``, cuBLAS's ``beta``): its epilogue reads ``L``, which saves a pass over the
output. ``dX`` is built the same way: the LoRA terms first, the base GEMMs onto them.

A DoRA adapter (the only adapter of its projection; ``m`` its magnitude,
``n = ||W + s B A||_row`` detached, ``c = m / n``) gives::

    Y = X W^T + bias + (c - 1) * (X_a W^T) + c * s * X_a A^T B^T     (c scales columns)

which is ``c * (X W^T + s X A^T B^T) + bias`` without dropout. With ``Z = X_a W^T + s X_a A^T B^T``
and ``dO = dY`` in ``acc``, the chain rule implemented below is::

    dB = s (c dO)^T (X_a A^T)          dXA = s (c dO) B        dA = dXA^T X_a
    db = s sum_N dO                    dm  = sum_N (dO * Z) / n  dbias = sum_N dY
    dX = dY W + M * ((c - 1) dO W + dXA A)     (plain LoRA: c = 1; no dropout: M = 1)

``X A^T`` of adapters without dropout is computed for all projections at once as
``X [A_1; A_2; ...]^T`` (one read of ``X``); their ``dX`` and ``dA`` terms are batched likewise.
An adapter's ``dB`` and ``dXA`` come from one pass over ``dO`` where ``_lora_grads`` applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._dora import magnitude_scale
from ._gemm import fusable, lora_matmul
from ._lora_grads import fusable_grads, lora_grads
from ._quant import dequantize
from ._ws_gemm import fusable_ws, ws_lora_matmul


class Adapter(NamedTuple):
    """One adapter's tensors inside a Function (or their gradients / needs-grad flags)."""

    A: Any
    B: Any
    b: Any
    m: Any
    M: Any


class Proj(NamedTuple):
    """One projection's tensors inside a Function (or their gradients / needs-grad flags)."""

    W: Any
    bias: Any
    adapters: tuple[Adapter, ...]


class Layout(NamedTuple):
    """The non-tensor part of a projection: the scalings and the bnb 4-bit quant state."""

    s: tuple[float, ...]
    quant_state: object | None


class Saved(NamedTuple):
    """Per adapter, kept for backward: ``X_a A^T`` and, for DoRA, ``Z``, ``c`` and ``n``."""

    XA: Tensor
    Z: Tensor | None
    c: Tensor | None
    n: Tensor | None


def pack(projs: Sequence[Proj]) -> list[Any]:
    """Flatten projections into ``apply``'s positional tensors (autograd sees only those)."""
    flat: list[Any] = []
    for p in projs:
        flat += [p.W, p.bias]
        for a in p.adapters:
            flat += list(a)
    return flat


def unpack(layouts: Sequence[Layout], flat: Sequence[Any]) -> list[Proj]:
    """Inverse of ``pack``; works on tensors, gradients or ``needs_input_grad`` flags alike."""
    projs, i = [], 0
    for layout in layouts:
        W, bias = flat[i], flat[i + 1]
        i += 2
        adapters = []
        for _ in layout.s:
            adapters.append(Adapter(*flat[i : i + 5]))
            i += 5
        projs.append(Proj(W, bias, tuple(adapters)))
    return projs


def flat_size(layouts: Sequence[Layout]) -> int:
    return sum(2 + 5 * len(layout.s) for layout in layouts)


def to(t: Any, dtype: torch.dtype | None) -> Any:
    """``t.to(dtype)``, skipping the call (a dispatch) when ``t`` or ``dtype`` is None or the
    dtype already matches."""
    return t if t is None or dtype is None or t.dtype == dtype else t.to(dtype)


def base_weight(W: Tensor, quant_state: object | None, dtype: torch.dtype) -> Tensor:
    """``W`` itself, or a dequantized copy of a bnb 4-bit weight that the caller frees after use."""
    return W if quant_state is None else to(dequantize(W, quant_state), dtype)


def scaled_mm(a: Tensor, b: Tensor, s: float) -> Tensor:
    """``s * (a @ b)`` in one GEMM: cuBLAS's ``alpha``. With ``beta=0`` addmm ignores its input
    (NaN included), so a 0-d placeholder stands in; a separate ``mul_`` would cost a launch."""
    return a @ b if s == 1 else torch.addmm(a.new_empty(()), a, b, beta=0, alpha=s)


def _linear(X: Tensor, W: Tensor, bias: Tensor | None) -> Tensor:
    return X @ W.t() if bias is None else torch.addmm(bias, X, W.t())


def _lora_dtypes(p: Proj, X: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(ldt, acc)``: the adapters' dtype, and the dtype PEFT sums base and LoRA outputs in."""
    ldt = p.adapters[0].A.dtype
    return ldt, torch.promote_types(X.dtype, ldt)


def _dropped(X: Tensor, a: Adapter) -> Tensor:
    """``X_a``: ``X`` cast to the adapter dtype (PEFT's ``_cast_input_dtype``) times the mask."""
    Xl = to(X, a.A.dtype)
    return Xl if a.M is None else Xl * a.M


def _shared_groups(projs: Sequence[Proj]) -> dict[torch.dtype, list[tuple[int, int]]]:
    """Adapters without dropout, by dtype: they read the same ``X`` and batch into one GEMM."""
    groups: dict[torch.dtype, list[tuple[int, int]]] = {}
    for i, p in enumerate(projs):
        for j, a in enumerate(p.adapters):
            if a.M is None:
                groups.setdefault(a.A.dtype, []).append((i, j))
    return groups


def lora_inputs(X: Tensor, projs: Sequence[Proj]) -> list[list[Tensor]]:
    """``X_a A_a^T`` ``[N, r]`` for every adapter of every projection."""
    XA: list[list[Any]] = [[None] * len(p.adapters) for p in projs]
    for i, p in enumerate(projs):
        for j, a in enumerate(p.adapters):
            if a.M is not None:
                XA[i][j] = _dropped(X, a) @ a.A.t()
    for dtype, idx in _shared_groups(projs).items():
        As = [projs[i].adapters[j].A for i, j in idx]
        if len(As) == 1:
            XAs = [to(X, dtype) @ As[0].t()]
        else:
            XAs = (to(X, dtype) @ torch.cat(As).t()).split([A.shape[0] for A in As], dim=1)
        for (i, j), XA_ij in zip(idx, XAs, strict=True):
            XA[i][j] = XA_ij
    return XA


def lora_first(
    X: Tensor, W: Tensor, bias: Tensor | None, XA: Tensor, B: Tensor, s: float
) -> Tensor:
    """``s XA B^T + X W^T + bias`` for one adapter in ``X``'s dtype. Where ``_gemm`` applies,
    one Triton GEMM adds the LoRA term (and the bias) in its epilogue. Otherwise the LoRA term
    comes first and the base GEMM accumulates onto it in place (its epilogue reads C), one pass
    fewer over the [N, o] output than adding the term afterwards. Where ``_ws_gemm`` is
    switched on and applies (no bias), its warp-specialized kernel runs instead of ``_gemm``'s."""
    if fusable_ws(X, W, XA, B, False, bias=bias):
        return ws_lora_matmul(X, W, XA, B, s, w_kn=False)
    if fusable(X, W, XA, B, bias=bias):
        return lora_matmul(X, W, XA, B, s, w_kn=False, bias=bias)
    if bias is None:
        out, beta = XA @ B.t(), s
    else:
        out, beta = torch.addmm(bias, XA, B.t(), alpha=s), 1
    return out.addmm_(X, W.t(), beta=beta)


def _add_lora(dX: Tensor | None, lora: tuple[Tensor, Tensor] | None) -> Tensor | None:
    """``dX + dXA A`` (in place when ``dX`` exists); ``dX`` itself when ``lora`` is None."""
    if lora is None:
        return dX
    return lora[0] @ lora[1] if dX is None else dX.addmm_(*lora)


def input_grad(
    dX: Tensor | None,
    lora: tuple[Tensor, Tensor] | None,
    base: Sequence[tuple[Tensor, Tensor, object | None]],
    dtype: torch.dtype,
) -> Tensor | None:
    """``dX + dXA A + sum_j dY_j W_j``, each GEMM accumulating onto ``dX`` in its epilogue.

    ``lora`` is ``(dXA, A)`` (scales already in ``dXA``) or None; ``base`` holds ``(dY_j, W_j,
    quant_state_j)``, and a 4-bit ``W_j`` is dequantized (to ``dtype``) as it is reached and
    freed after. When ``dX`` starts empty and ``_gemm`` applies, one kernel computes the whole
    sum over 16-bit weights (up to three base GEMMs, one store); over 4-bit weights the first
    base GEMM adds ``dXA A`` in its epilogue, so that only one dequantized weight is alive at a
    time. Otherwise ``dXA A`` comes first. Where ``_ws_gemm`` is switched on and applies, its
    warp-specialized kernel computes each fused sum instead of ``_gemm``'s."""
    if dX is None and lora is not None and base and all(q is None for _, _, q in base):
        fused = _fused_input_grad([(dY_j, W_j) for dY_j, W_j, _ in base], lora)
        if fused is not None:
            return fused
    for dY, W, quant_state in base:
        W = base_weight(W, quant_state, dtype)
        fused = _fused_input_grad([(dY, W)], lora) if dX is None and lora is not None else None
        if fused is not None:
            dX = fused
        else:
            dX = _add_lora(dX, lora)
            dX = dY @ W if dX is None else dX.addmm_(dY, W)
        lora = None
        del W
    return _add_lora(dX, lora)


def _fused_input_grad(
    pairs: list[tuple[Tensor, Tensor]], lora: tuple[Tensor, Tensor]
) -> Tensor | None:
    """``sum_j dY_j W_j + dXA A`` in one kernel (``_ws_gemm``'s, else ``_gemm``'s) where one
    applies; else None."""
    (dY, W), *more = pairs
    if fusable_ws(dY, W, *lora, True, more):
        return ws_lora_matmul(dY, W, *lora, 1.0, w_kn=True, more=more)
    if fusable(dY, W, *lora, more):
        return lora_matmul(dY, W, *lora, 1.0, w_kn=True, more=more)
    return None


def _project(
    X: Tensor, p: Proj, layout: Layout, XAs: Sequence[Tensor]
) -> tuple[Tensor, list[Saved]]:
    """One projection's output (in ``X.dtype``) and what its backward needs."""
    W = base_weight(p.W, layout.quant_state, X.dtype)
    if not p.adapters:
        return _linear(X, W, p.bias), []
    ldt, acc = _lora_dtypes(p, X)
    a, s = p.adapters[0], layout.s[0]
    if a.m is not None:  # DoRA: the only adapter of this projection
        c, n = magnitude_scale(W, a.A, a.B, a.m, s, ldt)
        if a.M is None:
            Z = to(X @ W.t(), acc).addmm_(to(XAs[0], acc), to(a.B.t(), acc), alpha=s)
            Y = Z * c if p.bias is None else torch.addcmul(to(p.bias, acc), Z, c)
        else:
            P = _dropped(X, a) @ to(W, ldt).t()
            Z = torch.addmm(to(P, acc), to(XAs[0], acc), to(a.B.t(), acc), alpha=s)
            Y = torch.addcmul(to(_linear(X, W, p.bias), acc) - P, Z, c)
        return to(Y, X.dtype), [Saved(XAs[0], Z, c, n)]
    if len(p.adapters) == 1 and ldt == X.dtype and a.b is None:
        return lora_first(X, W, p.bias, XAs[0], a.B, s), [Saved(XAs[0], None, None, None)]
    Y = _linear(X, W, p.bias)
    del W
    out = to(Y, acc)
    for a, s, XA in zip(p.adapters, layout.s, XAs, strict=True):
        out.addmm_(to(XA, acc), to(a.B.t(), acc), alpha=s)
        if a.b is not None:
            out.add_(to(a.b, acc), alpha=s)
    return to(out, X.dtype), [Saved(XA, None, None, None) for XA in XAs]


def forward(
    X: Tensor,
    projs: Sequence[Proj],
    layouts: Sequence[Layout],
    XA: list[list[Tensor]] | None = None,
) -> tuple[list[Tensor], list[Saved]]:
    """Outputs of projections reading ``X`` ``[N, k]``, and the per-adapter saved tensors.
    ``XA``: ``lora_inputs(X, projs)``, when the caller has it already."""
    XA = lora_inputs(X, projs) if XA is None else XA
    outs, saved = [], []
    for p, layout, XAs in zip(projs, layouts, XA, strict=True):
        Y, s = _project(X, p, layout, XAs)
        outs.append(Y)
        saved += s
    return outs, saved


def pack_saved(saved: Sequence[Saved]) -> list[Tensor | None]:
    return [t for s in saved for t in s]


def unpack_saved(flat: Sequence[Tensor | None]) -> list[Saved]:
    return [Saved(*flat[i : i + 4]) for i in range(0, len(flat), 4)]


def rank_r_grads(
    dL: Tensor,
    B: Tensor,
    XA: Tensor,
    s: float,
    need_B: bool,
    need_dXA: bool,
    acc: torch.dtype,
    ldt: torch.dtype,
) -> tuple[Tensor | None, Tensor | None]:
    """``(dB, dXA) = (s dL^T XA, s dL B)``, each only if needed: ``dB`` in ``B``'s dtype,
    ``dXA`` in ``ldt``, both computed in ``acc``. When both are needed and ``_lora_grads``
    applies, one kernel reads ``dL`` once for the two; otherwise two cuBLAS GEMMs."""
    if need_B and need_dXA and fusable_grads([dL], [B], [XA]):
        (dB,), dXA = lora_grads([dL], [B], [XA], [s])
        return dB, to(dXA, ldt)
    dB = to(scaled_mm(dL.t(), to(XA, acc), s), B.dtype) if need_B else None
    dXA = to(scaled_mm(dL, to(B, acc), s), ldt) if need_dXA else None
    return dB, dXA


class Pending(NamedTuple):
    """An adapter's ``dXA = d(X_a A^T)`` ``[N, r]``, waiting for ``X`` to give ``dA``."""

    proj: int
    adapter: int
    dXA: Tensor


def backward_input(
    projs: Sequence[Proj],
    layouts: Sequence[Layout],
    saved: Sequence[Saved],
    dYs: Sequence[Tensor],
    needs: Sequence[Proj],
    want_dX: bool,
    X_dtype: torch.dtype,
) -> tuple[Tensor | None, list[Proj], list[Pending]]:
    """``dX`` (if wanted), every gradient but ``dA``, and the ``dXA`` that ``dA`` needs."""
    dX: Tensor | None = None
    grads: list[Proj] = []
    pending: list[Pending] = []
    base_dYs: list[Tensor] = []
    lora_dX: dict[torch.dtype, list[tuple[Tensor, Tensor]]] = {}  # no-dropout (dXA, A) terms
    saved_it = iter(saved)
    for i, (p, layout, dY, need) in enumerate(zip(projs, layouts, dYs, needs, strict=True)):
        dbias = dY.sum(0) if need.bias else None
        base_dY = dY
        adapter_grads = []
        if p.adapters:
            ldt, acc = _lora_dtypes(p, dY)
            dO = to(dY, acc)
        for j, (a, s, need_a) in enumerate(zip(p.adapters, layout.s, need.adapters, strict=True)):
            XA, Z, c, n = next(saved_it)
            dm = None
            if a.m is not None:
                if need_a.m:
                    dm = to((dO * Z).sum(0) / n, a.m.dtype)
                dL = to(dO * c, acc)
                if a.M is None:
                    base_dY = to(dL, X_dtype)
                elif want_dX:  # the base term on the dropped input: M * ((c - 1) dO W)
                    W = base_weight(p.W, layout.quant_state, X_dtype)
                    extra = to(dO * (c - 1), ldt) @ to(W, ldt)
                    del W
            else:
                dL = dO
            want_dXA = need_a.A or want_dX
            dB, dXA = rank_r_grads(dL, a.B, XA, s, need_a.B, want_dXA, acc, ldt)
            db = to(dO.sum(0) * s, a.b.dtype) if need_a.b else None
            adapter_grads.append(Adapter(None, dB, db, dm, None))
            if not want_dXA:
                continue
            if need_a.A:
                pending.append(Pending(i, j, dXA))
            if want_dX and a.M is None:
                lora_dX.setdefault(ldt, []).append((dXA, a.A))
            elif want_dX:
                term = dXA @ a.A
                if a.m is not None:
                    term += extra
                term = to(term * a.M, X_dtype)
                dX = term if dX is None else dX.add_(term)
        base_dYs.append(base_dY)
        grads.append(Proj(None, dbias, tuple(adapter_grads)))
    lora = None  # the last (dXA, A) term, for input_grad to fuse into the first base GEMM
    for terms in lora_dX.values():
        dX = _add_lora(dX, lora)
        if len(terms) == 1:
            ((dXA, A),) = terms
        else:
            dXA = torch.cat([t for t, _ in terms], dim=1)
            A = torch.cat([A for _, A in terms])
        lora = (to(dXA, X_dtype), to(A, X_dtype))
    if want_dX:
        base = [(dY, p.W, layout.quant_state)
                for p, layout, dY in zip(projs, layouts, base_dYs, strict=True)]  # fmt: skip
        dX = input_grad(dX, lora, base, X_dtype)
    return dX, grads, pending


def grad_A(
    X: Tensor, projs: Sequence[Proj], pending: Sequence[Pending], grads: list[Proj]
) -> list[Proj]:
    """Fill in ``dA = dXA^T X_a`` for the pending adapters; one GEMM per no-dropout dtype group."""
    dA: dict[tuple[int, int], Tensor] = {}
    groups: dict[torch.dtype, list[Pending]] = {}
    for item in pending:
        a = projs[item.proj].adapters[item.adapter]
        if a.M is None:
            groups.setdefault(a.A.dtype, []).append(item)
        else:
            dA[item.proj, item.adapter] = item.dXA.t() @ _dropped(X, a)
    for dtype, items in groups.items():
        if len(items) == 1:
            rows = [items[0].dXA.t() @ to(X, dtype)]
        else:
            dXA = torch.cat([item.dXA for item in items], dim=1)
            rows = (dXA.t() @ to(X, dtype)).split([item.dXA.shape[1] for item in items])
        for item, dA_ij in zip(items, rows, strict=True):
            dA[item.proj, item.adapter] = dA_ij
    return with_dA(grads, dA)


def with_dA(grads: list[Proj], dA: dict[tuple[int, int], Tensor]) -> list[Proj]:
    """``grads`` with ``dA[i, j]`` as the ``A`` gradient of projection ``i``'s adapter ``j``
    (None where ``dA`` has none)."""
    out = []
    for i, g in enumerate(grads):
        adapters = tuple(a._replace(A=dA.get((i, j))) for j, a in enumerate(g.adapters))
        out.append(g._replace(adapters=adapters))
    return out
