"""Tiny PEFT models and the comparison helpers the lk-autograd tests share."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from lk_autograd import apply_lora_mlp, apply_lora_o, apply_lora_qkv

MLP = ("gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


class Block(nn.Module):
    """Holds an MLP's and an attention's projections (GQA: k/v narrower than q)."""

    def __init__(self, d: int = 16, inter: int = 24, heads: int = 4, kv: int = 2, hd: int = 4,
                 bias: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=bias)
        self.up_proj = nn.Linear(d, inter, bias=bias)
        self.down_proj = nn.Linear(inter, d, bias=bias)
        self.q_proj = nn.Linear(d, heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, kv * hd, bias=bias)
        self.v_proj = nn.Linear(d, kv * hd, bias=bias)
        self.o_proj = nn.Linear(heads * hd, d, bias=bias)


def make_model(
    dtype: torch.dtype = torch.float64,
    *,
    bias: bool = False,
    adapters: int = 1,
    autocast_adapter_dtype: bool = True,
    seed: int = 0,
    peft_model: bool = False,
    d: int = 16,
    inter: int = 24,
    **config,
) -> nn.Module:
    """A PEFT-wrapped ``Block`` (hidden size ``d``, MLP width ``inter``) with non-zero
    ``lora_B`` (and a perturbed DoRA magnitude); the ``PeftModel`` itself with
    ``peft_model=True``."""
    torch.manual_seed(seed)
    block = Block(d, inter, bias=bias).to(dtype)
    kw = {"r": 4, "lora_alpha": 7, "target_modules": list(MLP + ATTN), "init_lora_weights": False}
    kw.update(config)
    model = get_peft_model(block, LoraConfig(**kw), autocast_adapter_dtype=autocast_adapter_dtype)
    names = ["default"]
    for i in range(1, adapters):
        names.append(f"extra{i}")
        cfg = LoraConfig(**{**kw, "r": 2 + i, "lora_alpha": 3 + i})
        model.add_adapter(names[-1], cfg, autocast_adapter_dtype=autocast_adapter_dtype)
    if adapters > 1:
        model.base_model.set_adapter(names)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.rand_like(p))
            if "lora_B" in name and "bias" in name:
                p.normal_()
    return model if peft_model else model.base_model.model


def rel(a: Tensor | None, b: Tensor | None) -> float:
    """``||a - b|| / ||b||`` in float64."""
    assert a is not None and b is not None, (a is None, b is None)
    assert a.shape == b.shape, (a.shape, b.shape)
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def peft_mlp(m: nn.Module, X: Tensor, activation: str = "swiglu") -> Tensor:
    e = m.gate_proj(X)
    if activation == "swiglu":
        a = F.silu(e)
    else:
        a = F.gelu(e, approximate="tanh" if activation == "geglu_tanh" else "none")
    return m.down_proj(a * m.up_proj(X))


def peft_qkv(m: nn.Module, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return m.q_proj(X), m.k_proj(X), m.v_proj(X)


def peft_o(m: nn.Module, X: Tensor) -> Tensor:
    return m.o_proj(X)


def ours_mlp(m: nn.Module, X: Tensor, activation: str = "swiglu") -> Tensor:
    return apply_lora_mlp(m, X, activation)


def ours_o(m: nn.Module, X: Tensor) -> Tensor:
    return apply_lora_o(m, X)


BLOCKS: dict[str, tuple[Callable, Callable, int]] = {
    "mlp": (ours_mlp, peft_mlp, 16),
    "qkv": (apply_lora_qkv, peft_qkv, 16),
    "o": (ours_o, peft_o, 16),
}


def run(fn: Callable, model: nn.Module, X: Tensor, grads: list[Tensor] | None, seed: int = 1,
        retain: bool = False) -> tuple[list[Tensor], Tensor | None, dict[str, Tensor]]:  # fmt: skip
    """Forward (RNG seeded first, so dropout draws agree), backward with ``grads``; outputs,
    ``dX`` and every parameter gradient by name."""
    X = X.detach().clone().requires_grad_(X.requires_grad)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    outs = fn(model, X)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    if grads is not None:
        loss = sum(
            (o.float() * g.to(o.device).float()).sum() for o, g in zip(outs, grads, strict=True)
        )
        loss.backward(retain_graph=retain)
    pgrads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return outs, X.grad, pgrads


def compare(block: str, model: nn.Module, X: Tensor, *, ref_model: nn.Module | None = None,
            ref_X: Tensor | None = None, ours_fn: Callable | None = None,
            peft_fn: Callable | None = None) -> dict[str, float]:  # fmt: skip
    """Relative errors of our outputs and gradients against PEFT's on a deep copy (or
    ``ref_model``/``ref_X``, e.g. in float64). Asserts the same parameters got gradients."""
    ours, ref, _ = BLOCKS[block]
    ours, ref = ours_fn or ours, peft_fn or ref
    ref_model = copy.deepcopy(model) if ref_model is None else ref_model
    ref_X = X if ref_X is None else ref_X
    with torch.no_grad():
        shapes = [o.shape for o in run(ref, ref_model, ref_X, None)[0]]
    torch.manual_seed(123)
    grads = [torch.randn(s, dtype=torch.float64) for s in shapes]
    o1, dx1, g1 = run(ours, model, X, grads)
    o2, dx2, g2 = run(ref, ref_model, ref_X, grads)
    assert set(g1) == set(g2), set(g1) ^ set(g2)
    errs = {f"out{i}": rel(a, b) for i, (a, b) in enumerate(zip(o1, o2, strict=True))}
    for a, b in zip(o1, o2, strict=True):
        assert a.dtype == b.dtype or ref_model is not None
    if X.requires_grad:
        errs["dX"] = rel(dx1, dx2)
    errs.update({n: rel(g1[n], g2[n]) for n in g2})
    return errs


def make_4bit_model(
    quant_type: str = "nf4", double_quant: bool = False, dtype: torch.dtype = torch.float32, **kw
) -> nn.Module:
    """Like ``make_model`` (``d`` and ``inter`` too) but every base layer is a bitsandbytes
    ``Linear4bit`` (on the CPU), wrapped by PEFT's ``lora.bnb.Linear4bit``."""
    import bitsandbytes as bnb

    torch.manual_seed(kw.pop("seed", 0))
    block = Block(kw.pop("d", 16), kw.pop("inter", 24), bias=kw.pop("bias", False))
    for name in MLP + ATTN:
        lin = getattr(block, name)
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=dtype, quant_type=quant_type,
                              compress_statistics=double_quant)  # fmt: skip
        q.weight = bnb.nn.Params4bit(lin.weight.data.to(dtype), requires_grad=False,
                                     quant_type=quant_type,
                                     compress_statistics=double_quant)._quantize("cpu")  # fmt: skip
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.to(dtype), requires_grad=False)
        setattr(block, name, q)
    block.is_loaded_in_4bit = True
    cfg = {"r": 4, "lora_alpha": 7, "target_modules": list(MLP + ATTN), "init_lora_weights": False}
    cfg.update(kw)
    model = get_peft_model(block, LoraConfig(**cfg)).base_model.model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.rand_like(p))
    return model


def count_calls(monkeypatch, module: object, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call's last argument (the
    ``inplace`` flag of the MLP's backward routes) and calls through."""
    calls: list = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: calls.append(a[-1]) or real(*a))
    return calls


def check_mlp_route(calls: list, activation: str, fp32_adapters: bool, shape: tuple[int, ...],
                    **dims) -> None:  # fmt: skip
    """A bf16 ``LoRA_MLP`` (``make_model(r=..., d=..., inter=...)``, input ``shape``) matches
    PEFT in float64 and takes the counted route once per backward, in place (the graph dies
    with it); with dropout on down it does not take it."""
    model = make_model(torch.bfloat16, autocast_adapter_dtype=fp32_adapters, **dims).cuda()
    ref = copy.deepcopy(model).double()
    X = torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def ours(m: nn.Module, X: Tensor) -> Tensor:
        return apply_lora_mlp(m, X, activation)

    def peft(m: nn.Module, X: Tensor) -> Tensor:
        return peft_mlp(m, X, activation)

    ref_X = X.detach().double().requires_grad_()
    errs = compare("mlp", model, X, ref_model=ref, ref_X=ref_X, ours_fn=ours, peft_fn=peft)
    assert max(errs.values()) < 2e-2, errs
    assert calls == [True], calls
    dropout = make_model(torch.bfloat16, lora_dropout=0.1, **dims).cuda()
    calls.clear()
    run(ours, dropout, X, [torch.randn(shape)])
    assert calls == [], calls


def check_backward_twice(model: nn.Module, shape: tuple[int, ...]) -> dict[str, Tensor]:
    """Two backwards over one retained graph of the bf16 SwiGLU MLP (input ``shape``) double
    every gradient: the second reads intact saved tensors. Returns the first one's gradients."""
    X = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    dY = torch.randn(*shape, device="cuda")
    loss = (apply_lora_mlp(model, X, "swiglu").float() * dY).sum()
    loss.backward(retain_graph=True)
    once = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    loss.backward()
    for n, p in model.named_parameters():
        if n in once:
            torch.testing.assert_close(p.grad, 2 * once[n], rtol=1e-2, atol=1e-3)
    return once
