"""``LoRA_MLP``: gate, up and down LoRA projections around a gated activation, in one Function."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lk_triton  # registers the torch.ops.lk_triton custom ops

from . import _gated_lora
from . import _linear as L
from ._args import apply_args, autocast_dtype, no_autocast, read, run_function

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
        de = dh * g * act'(e)     dg = dh * act(e)  (lk_triton, which also recomputes h)
        dX = d gate / dX (de) + d up / dX (dg)      A, B, b, m grads per projection (_linear)

    Saved: ``X``, ``e``, ``g`` and the ``[N, r]`` LoRA intermediates (plus, only with DoRA,
    each DoRA projection's pre-scale output ``Z`` and, only with dropout, the masks). ``h`` is
    recomputed in backward, into ``dh``'s buffer; ``de`` and ``dg`` overwrite ``e`` and ``g``
    unless the graph is retained for another backward.
    """

    @staticmethod
    def forward(ctx: Any, X: Tensor, activation: str, layouts: tuple, *flat: Any) -> Tensor:
        gate, up, down = L.unpack(layouts, flat)
        (e, g), saved_gu = L.forward(X, [gate, up], layouts[:2])
        if torch.compiler.is_compiling():
            h = torch.ops.lk_triton.gated_activation(e, g, _KERNEL_ACTIVATION[activation])
        else:
            h = _EAGER_FORWARD[activation](e, g)
        (Y,), saved_down = L.forward(h, [down], layouts[2:])
        del h
        ctx.activation, ctx.layouts, ctx.n_gu = activation, layouts, len(saved_gu)
        ctx.save_for_backward(X, e, g, *flat, *L.pack_saved(saved_gu + saved_down))
        return Y

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
            dh, (g_down,), pending = L.backward_input(
                [down], layouts[2:], saved_down, [dY], [need_down], True, X.dtype
            )
            # dh is ours (not saved): h is written into its buffer, one [N, I] fewer alive.
            # When the graph dies with this backward, de and dg overwrite e and g too (two
            # fewer); a second backward (retain_graph) must still read them, so then not.
            h = dh.contiguous()
            del dh
            if _saved_dead_after_backward():
                _, de, dg = _INPLACE_BACKWARD[ctx.activation](h, e, g)
            else:
                de, dg = torch.ops.lk_triton.gated_recompute_backward_(
                    h, e, g, _KERNEL_ACTIVATION[ctx.activation]
                )
            (g_down,) = L.grad_A(h, [down], pending, [g_down])
            del h
            dX, grads, pending = L.backward_input(
                [gate, up], layouts[:2], saved_gu, [de, dg], [need_gate, need_up], need_X, X.dtype
            )
            del de, dg
            grads = L.grad_A(X, [gate, up], pending, grads)
        return (dX, None, None, *L.pack([*grads, g_down]))


class FusedLoRA_MLP(torch.autograd.Function):
    """``LoRA_MLP``'s common case with the rank-r terms fused into the activation kernels.

    One plain adapter per projection (no dropout, DoRA or biases), equal ranks up to
    ``_gated_lora.MAX_RANK``, adapters in the activation dtype (fp16, bf16 or fp32), Triton
    tensors, outside torch.compile. Same math as ``LoRA_MLP`` (see ``_gated_lora``); saves
    ``X``, the base pre-activations ``e0 = X W_g^T``, ``g0 = X W_u^T`` and the ``[N, r]`` LoRA
    inputs. Backward, with ``P = X A^T``, ``dP_g = de B_g``, ``dP_u = dg B_u`` (kernel)::

        dB_d = s_d dY^T (h A_d^T)     dA_d = s_d (dY B_d)^T h
        dB_g = s_g de^T P_g           dA_g = s_g dP_g^T X        (up likewise)
        dX = s_g dP_g A_g + s_u dP_u A_u + de W_g + dg W_u
    """

    @staticmethod
    def forward(ctx: Any, X: Tensor, activation: str, layouts: tuple, *flat: Any) -> Tensor:
        gate, up, down = L.unpack(layouts, flat)
        (P_g,), (P_u,) = L.lora_inputs(X, [gate, up])
        e0 = X @ L.base_weight(gate.W, layouts[0].quant_state, X.dtype).t()
        g0 = X @ L.base_weight(up.W, layouts[1].quant_state, X.dtype).t()
        (a_g,), (a_u,), (a_d,) = gate.adapters, up.adapters, down.adapters
        h, hA = _gated_lora.fused_forward(
            e0,
            g0,
            P_g,
            P_u,
            a_g.B,
            a_u.B,
            a_d.A,
            layouts[0].s[0],
            layouts[1].s[0],
            _KERNEL_ACTIVATION[activation],
        )
        Y, _ = L.project(h, down, layouts[2], [hA])
        ctx.activation, ctx.layouts = activation, layouts
        ctx.save_for_backward(X, e0, g0, P_g, P_u, hA, *flat)
        return Y

    @staticmethod
    def backward(ctx: Any, dY: Tensor) -> tuple[Any, ...]:
        X, e0, g0, P_g, P_u, hA, *flat = ctx.saved_tensors
        layouts = ctx.layouts
        gate, up, down = L.unpack(layouts, flat)
        (s_g,), (s_u,), (s_d,) = (layout.s for layout in layouts)
        (a_g,), (a_u,), (a_d,) = gate.adapters, up.adapters, down.adapters
        need_gate, need_up, need_down = L.unpack(layouts, ctx.needs_input_grad[3:])
        with no_autocast(X.device.type):
            Q_d = (dY @ a_d.B).mul_(s_d)
            dB_d = (dY.t() @ hA).mul_(s_d) if need_down.adapters[0].B else None
            dh0 = dY @ L.base_weight(down.W, layouts[2].quant_state, X.dtype)
            h, de, dg, dP_g, dP_u = _gated_lora.fused_backward(
                dh0, e0, g0, P_g, P_u, a_g.B, a_u.B, Q_d, a_d.A, s_g, s_u,
                _KERNEL_ACTIVATION[ctx.activation],
                overwrite=_saved_dead_after_backward(),
            )  # fmt: skip
            dA_d = Q_d.t() @ h if need_down.adapters[0].A else None
            del h, dh0
            dB_g = (de.t() @ P_g).mul_(s_g) if need_gate.adapters[0].B else None
            dB_u = (dg.t() @ P_u).mul_(s_u) if need_up.adapters[0].B else None
            dP = torch.cat([dP_g.mul_(s_g), dP_u.mul_(s_u)], dim=1)
            dA_g = dA_u = None
            if need_gate.adapters[0].A or need_up.adapters[0].A:
                dA_g, dA_u = (dP.t() @ X).split([a_g.A.shape[0], a_u.A.shape[0]])
            dX = None
            if ctx.needs_input_grad[0]:
                dX = dP @ torch.cat([a_g.A, a_u.A])
                dX.addmm_(de, L.base_weight(gate.W, layouts[0].quant_state, X.dtype))
                dX.addmm_(dg, L.base_weight(up.W, layouts[1].quant_state, X.dtype))
        grads = [
            L.Proj(None, None, (L.Adapter(dA, dB, None, None, None),))
            for dA, dB in ((dA_g, dB_g), (dA_u, dB_u), (dA_d, dB_d))
        ]
        return (dX, None, None, *L.pack(grads))


def _fusable(X: Tensor, layouts: tuple, flat: list[Any]) -> bool:
    """Whether ``FusedLoRA_MLP`` computes this call (else ``LoRA_MLP``)."""
    if _gated_lora.triton is None or X.dtype not in _gated_lora.FUSED_DTYPES:
        return False
    if not lk_triton.uses_triton(X) or torch.compiler.is_compiling():
        return False
    if X.device.type == "cpu" and X.dtype == torch.bfloat16:
        return False  # Triton's interpreter (CPU) gets bf16 tl.dot wrong (fp16, fp32 right)
    ranks = set()
    for p in L.unpack(layouts, flat):
        if p.bias is not None or len(p.adapters) != 1:
            return False
        a = p.adapters[0]
        if a.M is not None or a.m is not None or a.b is not None or a.A.dtype != X.dtype:
            return False
        ranks.add(a.A.shape[0])
    return len(ranks) == 1 and ranks.pop() <= _gated_lora.MAX_RANK


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
    X2 = X.reshape(-1, X.shape[-1])
    with no_autocast(X.device.type):
        if _fusable(X2, layouts, flat):
            Y = FusedLoRA_MLP.apply(X2, activation, layouts, *flat)
        else:
            Y = run_function(LoRA_MLP, X2, activation, layouts, *flat)
    return Y.view(*X.shape[:-1], Y.shape[-1])
