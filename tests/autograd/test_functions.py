"""The Functions under retain_graph, gradient checkpointing, autocast and torch.compile."""

import functools

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from .models import BLOCKS, compare, make_model, peft_mlp


@pytest.mark.parametrize("block", ["mlp", "qkv"])
def test_retain_graph_second_backward_is_identical(block):
    model = make_model(use_dora=True, lora_dropout=0.2, bias=True)
    ours = BLOCKS[block][0]
    X = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    outs = ours(model, X)
    outs = outs if isinstance(outs, tuple) else (outs,)
    params = [X] + [p for p in model.parameters() if p.requires_grad]
    G = [torch.randn_like(o) for o in outs]
    first = torch.autograd.grad(outs, params, G, retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(outs, params, G, allow_unused=True)
    assert sum(g is not None for g in first) > 5
    for a, b in zip(first, second, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non_reentrant"])
@pytest.mark.parametrize("block", ["mlp", "qkv"])
def test_gradient_checkpointing(reentrant, block):
    ours = BLOCKS[block][0]

    def checkpointed(m, X):
        return checkpoint(ours, m, X, use_reentrant=reentrant)

    model = make_model(lora_dropout=0.3, bias=True)
    X = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    errs = compare(block, model, X, ours_fn=checkpointed)
    assert max(errs.values()) < 1e-10, errs


@pytest.mark.parametrize("block", ["mlp", "qkv", "o"])
@pytest.mark.parametrize("variant", [{}, {"use_dora": True, "bias": True}])
def test_autocast_matches_peft_under_autocast(block, variant):
    ours, peft, _ = BLOCKS[block]

    def under_autocast(fn):
        @functools.wraps(fn)
        def run(m, X):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(m, X)

        return run

    model = make_model(torch.float32, **variant)
    X = torch.randn(4, 8, 16, requires_grad=True)
    errs = compare(block, model, X, ours_fn=under_autocast(ours), peft_fn=under_autocast(peft))
    assert max(errs.values()) < 2e-2, errs


COMPILED_BLOCKS = {
    "mlp swiglu": ("mlp", BLOCKS["mlp"][0], None),
    "mlp geglu_tanh": (
        "mlp",
        functools.partial(BLOCKS["mlp"][0], activation="geglu_tanh"),
        functools.partial(peft_mlp, activation="geglu_tanh"),
    ),
    "qkv": ("qkv", BLOCKS["qkv"][0], None),
    "o": ("o", BLOCKS["o"][0], None),
}


@pytest.mark.parametrize("case", list(COMPILED_BLOCKS))
@pytest.mark.parametrize("adapters", [2, 1], ids=["general", "plain"])
def test_torch_compile(case, adapters):
    """fullgraph=True traces each Function with PEFT's gradients, on every torch: before 2.12,
    whose dynamo zeroed the gradient of an output made in place, through ``_args.output``.
    One adapter per projection takes ``_plain``'s path for QKV and O."""
    block, ours, peft = COMPILED_BLOCKS[case]
    model = make_model(torch.float32, bias=True, adapters=adapters)
    k = BLOCKS[block][2]
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    X = torch.randn(2, 5, k, requires_grad=True)
    errs = compare(block, model, X, ours_fn=compiled, peft_fn=peft)
    assert max(errs.values()) < 1e-5, errs
