"""The differentiable ``lk_triton.swiglu`` / ``geglu`` custom ops."""

import pytest
import torch
import torch.nn.functional as F

import lk_triton
from tests.helpers import DEVICES, rel_err

OPS = {
    "swiglu": (lk_triton.swiglu, F.silu),
    "geglu": (lk_triton.geglu, lambda g: F.gelu(g)),
    "geglu_tanh": (
        lambda g, u: lk_triton.geglu(g, u, approximate="tanh"),
        lambda g: F.gelu(g, approximate="tanh"),
    ),
}


def _leaves(shape, dtype, device):
    return [torch.randn(shape, dtype=dtype, device=device, requires_grad=True) for _ in range(2)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_gradcheck(name, device):
    op, _ = OPS[name]
    gate, up = _leaves((3, 7), torch.float64, device)
    assert torch.autograd.gradcheck(op, (gate, up))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """torch.library's own checks: schema, fake tensor, autograd registration."""
    gate, up = _leaves((4, 9), torch.float32, device)
    for activation in ("silu", "gelu", "gelu_tanh"):
        torch.library.opcheck(torch.ops.lk_triton.gated_activation, (gate, up, activation))
        dh = torch.randn_like(gate)
        args = (dh, gate.detach(), up.detach(), activation)
        torch.library.opcheck(torch.ops.lk_triton.gated_activation_backward, args)
        torch.library.opcheck(torch.ops.lk_triton.gated_recompute_backward_, args)


@pytest.mark.parametrize("device", DEVICES)
def test_recompute_backward_writes_h_into_dh(device):
    """``gated_recompute_backward_`` leaves ``h`` in ``dh`` and its gate/up inputs untouched."""
    gate, up = (torch.randn(5, 37, dtype=torch.bfloat16, device=device) for _ in range(2))
    dh = torch.randn_like(gate)
    gate0, up0 = gate.clone(), up.clone()
    ref_dgate, ref_dup = torch.ops.lk_triton.gated_activation_backward(dh, gate, up, "silu")
    dgate, dup = torch.ops.lk_triton.gated_recompute_backward_(dh, gate, up, "silu")
    assert torch.equal(dh, torch.ops.lk_triton.gated_activation(gate, up, "silu"))
    assert torch.equal(dgate, ref_dgate) and torch.equal(dup, ref_dup)
    assert torch.equal(gate, gate0) and torch.equal(up, up0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_torch_compile_fullgraph(name, device):
    op, act = OPS[name]

    def block(gate, up):
        return (op(gate, up) * 3).sum()

    # fullgraph is decided by dynamo; inductor's CPU codegen would only add compile time.
    backend = "inductor" if device == "cuda" else "aot_eager"
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    gate, up = _leaves((2, 5, 33), torch.float32, device)
    loss = compiled(gate, up)
    loss.backward()

    g, u = (t.detach().double().requires_grad_() for t in (gate, up))
    terms = act(g) * u * 3
    ref = terms.sum()
    ref.backward()
    # The loss sums terms of both signs, so its float32 error scales with the terms' total
    # magnitude, not with the sum itself, which can cancel to near zero (seen: 1.5e-4 relative
    # to a sum of 0.03 over 330 terms).
    assert abs(loss.item() - ref.item()) < 1e-5 * terms.abs().sum().item()
    assert rel_err(gate.grad, g.grad) < 1e-5
    assert rel_err(up.grad, u.grad) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_backward_leaves_saved_inputs(device):
    """The op saves gate and up for backward; a retained second backward sees them intact."""
    gate, up = _leaves((6, 10), torch.bfloat16, device)
    h = lk_triton.swiglu(gate, up)
    dh = torch.randn_like(h)
    first = torch.autograd.grad(h, (gate, up), dh, retain_graph=True)
    second = torch.autograd.grad(h, (gate, up), dh)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
