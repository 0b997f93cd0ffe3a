"""``LoRA_MLP``: gate, up and down LoRA projections around a gated activation, in one Function."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lk_triton  # registers the torch.ops.lk_triton custom ops

from . import _linear as L
from ._activation_backward import activation_backward_with_dA, fusable_activation_dA
from ._args import apply_args, autocast_dtype, no_autocast, output, read
from ._down_backward import down_backward, fusable_down_backward
from ._gemm import fusable_gated, gated_lora_matmul
from ._ws_gated import fusable_ws_gated, ws_gated_lora_matmul

# LoRA_MLP's activation names -> lk_triton's. Under torch.compile the kernels run behind
# lk_triton's custom ops, which keep fullgraph=True tracing on every path (CUDA, CPU, interpreter).
_KERNEL_ACTIVATION = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}
# Outside torch.compile the raw kernels run: a custom op's dispatch costs tens of microseconds
# of Python per call. The forwards ``(gate, up) -> h``; the in-place backwards
# ``(dh, gate, up) -> (h, dgate, dup)``, written over the inputs.
_EAGER_FORWARD = {
    "swiglu": lk_triton.swiglu_forward,
    "geglu": lambda e, g: lk_triton.geglu_forward(e, g, "none"),
    "geglu_tanh": lambda e, g: lk_triton.geglu_forward(e, g, "tanh"),
}
_INPLACE_BACKWARD = {
    "swiglu": lk_triton.swiglu_backward,
    "geglu": lambda dh, e, g: lk_triton.geglu_backward(dh, e, g, "none"),
    "geglu_tanh": lambda dh, e, g: lk_triton.geglu_backward(dh, e, g, "tanh"),
}


def _saved_dead_after_backward() -> bool:
    """True when no later backward can read this node's saved tensors: an eager backward
    without ``retain_graph`` / ``create_graph`` (never while torch.compile traces one)."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep_graph is not None and not torch.compiler.is_compiling() and not keep_graph()


class LoRA_MLP(torch.autograd.Function):
    """``Y = down(act(gate(X)) * up(X))`` with LoRA (or DoRA) adapters on all three projections.

    Shapes: ``X`` ``[N, d]``; gate and up ``[I, d]``; down ``[d, I]``. Each projection ``P`` is
    ``P(X) = X W^T + bias + sum_a s_a (X_a A_a^T B_a^T + b_a)`` (see ``_linear`` for DoRA)::

        e = gate(X)  [N, I]      g = up(X)  [N, I]      h = act(e) * g      Y = down(h)  [N, d]

    ``act`` is SiLU (``swiglu``) or GELU, exact or tanh (``geglu``, ``geglu_tanh``). Backward::

        dh = d down / dh (dY)                       (dY W_down + LoRA terms, _linear)
        de = dh * g * act'(e)     dg = dh * act(e)  (recomputing h: _gated_backward)
        dX = d gate / dX (de) + d up / dX (dg)      A, B, b, m grads per projection (_linear)

    Saved: ``X``, ``e``, ``g`` and the ``[N, r]`` LoRA intermediates (plus, only with DoRA,
    each DoRA projection's pre-scale output ``Z`` and, only with dropout, the masks). ``h`` is
    recomputed in backward (in registers, into ``dh``'s buffer, or, where ``dh`` is never
    stored, ``_down_backward``, into a buffer of its own); ``de`` and ``dg`` overwrite ``e``
    and ``g`` unless the graph is retained for another backward.
    """

    @staticmethod
    def forward(ctx: Any, X: Tensor, activation: str, layouts: tuple, *flat: Any) -> Tensor:
        gate, up, down = L.unpack(layouts, flat)
        e, g, h, saved_gu = _gate_up(X, gate, up, layouts[:2], activation)
        (Y,), saved_down = L.forward(h, [down], layouts[2:])
        del h
        ctx.activation, ctx.layouts, ctx.n_gu = activation, layouts, len(saved_gu)
        ctx.save_for_backward(X, e, g, *flat, *L.pack_saved(saved_gu + saved_down))
        return output(Y)

    @staticmethod
    def backward(ctx: Any, dY: Tensor) -> tuple[Any, ...]:
        X, e, g, *rest = ctx.saved_tensors
        layouts = ctx.layouts
        n = L.flat_size(layouts)
        gate, up, down = L.unpack(layouts, rest[:n])
        saved = L.unpack_saved(rest[n:])
        saved_gu, saved_down = saved[: ctx.n_gu], saved[ctx.n_gu :]
        need_X = ctx.needs_input_grad[0]
        need_gate, need_up, need_down = L.unpack(layouts, ctx.needs_input_grad[3:])
        with no_autocast(X.device.type):
            de, dg, g_down = _down_and_activation_backward(
                dY, e, g, down, layouts[2], saved_down, need_down, ctx.activation, X.dtype
            )
            dX, grads, pending = L.backward_input(
                [gate, up], layouts[:2], saved_gu, [de, dg], [need_gate, need_up], need_X, X.dtype
            )
            del de, dg
            grads = L.grad_A(X, [gate, up], pending, grads)
        return (dX, None, None, *L.pack([*grads, g_down]))


def _down_and_activation_backward(
    dY: Tensor, e: Tensor, g: Tensor, down: L.Proj, layout: L.Layout, saved: list[L.Saved],
    need: L.Proj, activation: str, dtype: torch.dtype,
) -> tuple[Tensor, Tensor, L.Proj]:  # fmt: skip
    """``(de, dg, g_down)`` from the MLP's output gradient ``dY``: down's gradients and the
    activation's input gradients.

    A single dropout-free, non-DoRA adapter on down whose ``A`` is trained, on shapes and an
    activation ``fusable_down_backward`` takes, goes through ``_down_backward``: one kernel computes
    ``dh = dY W + dXA A`` tile by tile and ``de``, ``dg`` and ``h`` from each tile (cuBLAS then
    gives ``dA = dXA^T h``), so ``dh`` is never stored. Otherwise
    ``dh`` first (``_linear.backward_input``), then ``_gated_backward``."""
    a = down.adapters[0] if len(down.adapters) == 1 else None
    if a is not None and a.m is None and a.M is None and need.adapters[0].A:
        W = down.W if layout.quant_state is None else None  # None: dequantized below
        kind = _KERNEL_ACTIVATION[activation]
        if fusable_down_backward(dY, W, e, g, a.A, kind):
            _, (g_down,), pending = L.backward_input([down], [layout], saved, [dY], [need],
                                                     False, dtype)  # fmt: skip
            W = L.base_weight(down.W, layout.quant_state, dtype)
            inplace = _saved_dead_after_backward()
            de, dg, dA = down_backward(dY, W, pending[0].dXA, a.A, e, g, kind, inplace)
            return de, dg, L.with_dA([g_down], {(0, 0): dA})[0]
    dh, (g_down,), pending = L.backward_input([down], [layout], saved, [dY], [need], True, dtype)
    return _gated_backward(dh.contiguous(), e, g, down, pending, g_down, activation)


def _gated_backward(
    dh: Tensor, e: Tensor, g: Tensor, down: L.Proj, pending: list[L.Pending],
    g_down: L.Proj, activation: str,
) -> tuple[Tensor, Tensor, L.Proj]:  # fmt: skip
    """``(de, dg, g_down)``: the activation's input gradients and down's gradients with ``dA``
    filled in (``dA = dXA^T h``, ``h`` recomputed from ``e`` and ``g``).

    ``dh`` is ours (not saved). When the graph dies with this backward, ``de`` and ``dg``
    overwrite ``e`` and ``g`` (two ``[N, I]`` fewer alive); a second backward (retain_graph)
    must still read them, so then not. A single dropout-free adapter on down of the
    activations' dtype takes ``activation_backward_with_dA``, which never stores ``h``;
    otherwise lk_triton's backward writes ``h`` into ``dh``'s buffer for ``grad_A`` to read.
    """
    inplace = _saved_dead_after_backward()
    if len(pending) == 1 and len(down.adapters) == 1 and down.adapters[0].M is None:
        dXA, A = pending[0].dXA, down.adapters[0].A
        if fusable_activation_dA(dh, e, g, dXA, A):
            kind = _KERNEL_ACTIVATION[activation]
            de, dg, dA = activation_backward_with_dA(dh, e, g, dXA, kind, inplace)
            return de, dg, L.with_dA([g_down], {(0, 0): dA})[0]
    if inplace:
        _, de, dg = _INPLACE_BACKWARD[activation](dh, e, g)
    else:
        de, dg = torch.ops.lk_triton.gated_recompute_backward_(
            dh, e, g, _KERNEL_ACTIVATION[activation]
        )
    (g_down,) = L.grad_A(dh, [down], pending, [g_down])  # dh's buffer holds h now
    return de, dg, g_down


def _plain(p: L.Proj, dtype: torch.dtype) -> bool:
    """One adapter, without DoRA, dropout or a LoRA bias, computed in ``dtype``."""
    if len(p.adapters) != 1:
        return False
    a = p.adapters[0]
    return a.m is None and a.M is None and a.b is None and a.A.dtype == dtype


def _gate_up(
    X: Tensor, gate: L.Proj, up: L.Proj, layouts: tuple, activation: str
) -> tuple[Tensor, Tensor, Tensor, list[L.Saved]]:
    """``(e, g, h, saved)``. Plain gate and up projections over 16-bit weights without a bias
    run in one kernel with the activation in its epilogue (``_ws_gated``'s where switched on
    and it applies, else ``_gemm.gated_lora_matmul``'s); otherwise ``_linear.forward`` and then
    ``lk_triton``'s activation kernel."""
    XA = L.lora_inputs(X, [gate, up])
    projs = (gate, up)
    if all(_plain(p, X.dtype) and p.bias is None and lo.quant_state is None
           for p, lo in zip(projs, layouts, strict=True)):  # fmt: skip
        Ws, XAs = [p.W for p in projs], [XA_p[0] for XA_p in XA]
        Bs = [p.adapters[0].B for p in projs]
        ss, kind = [lo.s[0] for lo in layouts], _KERNEL_ACTIVATION[activation]
        if fusable_ws_gated(X, Ws, XAs, Bs):
            e, g, h = ws_gated_lora_matmul(X, Ws, XAs, Bs, ss, kind)
            return e, g, h, [L.Saved(XA_p, None, None, None) for XA_p in XAs]
        if fusable_gated(X, Ws, XAs, Bs):
            e, g, h = gated_lora_matmul(X, Ws, XAs, Bs, ss, kind)
            return e, g, h, [L.Saved(XA_p, None, None, None) for XA_p in XAs]
    (e, g), saved = L.forward(X, [gate, up], layouts, XA)
    if torch.compiler.is_compiling():
        h = torch.ops.lk_triton.gated_activation(e, g, _KERNEL_ACTIVATION[activation])
    else:
        h = _EAGER_FORWARD[activation](e, g)
    return e, g, h, saved


def _fallback(mlp: nn.Module, X: Tensor, activation: str, gate: str, up: str, down: str) -> Tensor:
    e = getattr(mlp, gate)(X)
    if activation == "swiglu":
        a = F.silu(e)
    else:
        a = F.gelu(e, approximate="tanh" if activation == "geglu_tanh" else "none")
    return getattr(mlp, down)(a * getattr(mlp, up)(X))


def apply_lora_mlp(
    mlp: nn.Module,
    X: Tensor,
    activation: str,
    *,
    gate: str = "gate_proj",
    up: str = "up_proj",
    down: str = "down_proj",
) -> Tensor:
    """``mlp.down(act(mlp.gate(X)) * mlp.up(X))`` through ``LoRA_MLP``; any leading shape.

    Computes what the modules' own (PEFT) forwards compute, and runs exactly those forwards
    when a projection is in a state ``can_fuse`` rejects.
    """
    if activation not in _KERNEL_ACTIVATION:
        raise ValueError(
            f"activation must be one of {tuple(_KERNEL_ACTIVATION)}, got {activation!r}"
        )
    modules = [getattr(mlp, gate), getattr(mlp, up), getattr(mlp, down)]
    cast = autocast_dtype(X)
    params = read(modules, X, cast)
    if params is None:
        return _fallback(mlp, X, activation, gate, up, down)
    X = L.to(X, cast)
    h_shape = (*X.shape[:-1], params[2].in_features)
    layouts, flat = apply_args(params, X, [X.shape, X.shape, h_shape], cast)
    with no_autocast(X.device.type):
        Y = LoRA_MLP.apply(X.reshape(-1, X.shape[-1]), activation, layouts, *flat)
    return Y.view(*X.shape[:-1], Y.shape[-1])
