"""The AST rewrite on every spelling of the q/k/v/o statements, and its error messages."""

import inspect

import pytest
import torch
import transformers
from torch import nn

from lk_patch import SourceMismatchError
from lk_patch._source import AttentionRewrite, gated_mlp_form, rewritten_forward

QKVO = AttentionRewrite(qkv=("q_proj", "k_proj", "v_proj"), o="o_proj")
H = 8


class _Projections(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"):
            setattr(self, name, nn.Linear(H, H if name != "qkv_proj" else 3 * H))
        self.q_norm = nn.LayerNorm(H)
        self.k_norm = nn.LayerNorm(4)  # per head, after the view


class Normed(_Projections):
    def forward(self, hidden_states, scale=1.0):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, 4)
        query_states = self.q_norm(self.q_proj(hidden_states)).view(hidden_shape)
        key_states = self.k_norm(self.k_proj(hidden_states).view(hidden_shape))
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        attn_output = (query_states + key_states).transpose(1, 2) * value_states * scale
        attn_output = attn_output.transpose(1, 2).reshape(*input_shape, -1)
        return self.o_proj(attn_output)


class OldStyleGated(_Projections):
    """The older ``bsz, q_len`` form, a gated query, and zero-argument super()."""

    def forward(self, hidden_states):
        bsz, q_len, _ = hidden_states.size()
        query_states, gate = torch.chunk(self.q_proj(hidden_states).view(bsz, q_len, -1, 2), 2, -1)
        key_states = self.k_proj(hidden_states)
        value_states = self.v_proj(hidden_states)
        attn_output = query_states.reshape(bsz, q_len, -1) * torch.sigmoid(
            gate.reshape(bsz, q_len, -1)
        )
        attn_output = self.o_proj(attn_output.repeat(1, 1, 2) * key_states + value_states)
        return super().__class__.__name__, attn_output


class FusedQKV(_Projections):
    def forward(self, hidden_states):
        qkv = self.qkv_proj(hidden_states)
        q, k, v = qkv.split(H, dim=-1)
        return self.o_proj(q * k + v)


class Conditional(_Projections):
    def forward(self, hidden_states, shared=None):
        query_states = self.q_proj(hidden_states)
        if shared is None:
            key_states = self.k_proj(hidden_states)
        value_states = self.v_proj(hidden_states)
        return self.o_proj(query_states + key_states + value_states)


class Reassigned(_Projections):
    def forward(self, hidden_states):
        query_states = self.q_proj(hidden_states)
        hidden_states = hidden_states * 2
        return self.o_proj(query_states + self.k_proj(hidden_states) + self.v_proj(hidden_states))


class NoOutput(_Projections):
    def forward(self, hidden_states):
        return self.q_proj(hidden_states) + self.k_proj(hidden_states) + self.v_proj(hidden_states)


def _helpers():
    calls = []

    def apply_qkv(module, X, *, q, k, v):
        calls.append(("qkv", q, k, v))
        return getattr(module, q)(X), getattr(module, k)(X), getattr(module, v)(X)

    def apply_single(module, X, *, o):
        calls.append(("single", o))
        return getattr(module, o)(X)

    return calls, apply_qkv, apply_single


@pytest.mark.parametrize(
    ("cls", "rewrite", "expected"),
    [
        (Normed, QKVO, [("qkv", "q_proj", "k_proj", "v_proj"), ("single", "o_proj")]),
        (OldStyleGated, QKVO, [("qkv", "q_proj", "k_proj", "v_proj"), ("single", "o_proj")]),
        (
            FusedQKV,
            AttentionRewrite(fused_qkv="qkv_proj", o="o_proj"),
            [("single", "qkv_proj"), ("single", "o_proj")],
        ),
        (Normed, AttentionRewrite(o="o_proj"), [("single", "o_proj")]),
    ],
)
def test_rewrite_computes_the_original(cls, rewrite, expected):
    module = cls()
    x = torch.randn(2, 3, H)
    calls, apply_qkv, apply_single = _helpers()
    patched = rewritten_forward(cls, rewrite, apply_qkv, apply_single)
    reference = module(x)
    result = patched(module, x)
    assert calls == expected
    reference = reference[-1] if isinstance(reference, tuple) else reference
    result = result[-1] if isinstance(result, tuple) else result
    torch.testing.assert_close(result, reference, rtol=0, atol=0)
    # The rewritten source is inspectable (linecache) and the original class is untouched.
    assert "_lk_apply" in inspect.getsource(patched)
    assert cls.forward is not patched


def test_rewrite_keeps_defaults_and_module_globals():
    _, apply_qkv, apply_single = _helpers()
    patched = rewritten_forward(Normed, QKVO, apply_qkv, apply_single)
    assert patched.__defaults__ == (1.0,)
    assert patched.__globals__ is Normed.forward.__globals__


@pytest.mark.parametrize(
    ("cls", "detail"),
    [
        (Conditional, "self.k_proj is called inside a conditional block"),
        (Reassigned, "`hidden_states` is reassigned between the calls"),
        (NoOutput, "there is no such call"),
    ],
)
def test_mismatch_names_class_version_and_statement(cls, detail):
    _, apply_qkv, apply_single = _helpers()
    with pytest.raises(SourceMismatchError) as error:
        rewritten_forward(cls, QKVO, apply_qkv, apply_single)
    message = str(error.value)
    assert f"{cls.__qualname__}.forward" in message
    assert f"transformers {transformers.__version__}" in message
    assert "looked for `self." in message
    assert detail in message
    assert "verify_arch.py" in message


class Gated(nn.Module):
    def forward(self, x):
        return self.down(self.up(x) * self.act(self.gate(x)))


class FusedGateUp(nn.Module):
    def forward(self, hidden_states):
        up_states = self.gate_up_proj(hidden_states)
        gate, up_states = up_states.chunk(2, dim=-1)
        up_states = up_states * self.activation_fn(gate)
        return self.down_proj(up_states)


class Sparse(nn.Module):
    def forward(self, x):
        gate = self.gate_proj(x)
        if self.sparsity:
            gate = gate.clamp(min=0)
        return self.down_proj(self.act_fn(gate) * self.up_proj(x))


class NotGated(nn.Module):
    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x)))


def test_gated_mlp_forms():
    assert gated_mlp_form(Gated).gate == "gate" and gated_mlp_form(Gated).up == "up"
    fused = gated_mlp_form(FusedGateUp)
    assert (fused.gate_up, fused.down, fused.activation) == (
        "gate_up_proj",
        "down_proj",
        "activation_fn",
    )
    for cls in (Sparse, NotGated):
        with pytest.raises(SourceMismatchError, match=cls.__qualname__):
            gated_mlp_form(cls)
