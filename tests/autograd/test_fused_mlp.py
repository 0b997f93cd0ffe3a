"""``FusedLoRA_MLP``: the LoRA MLP with its rank-r terms fused into the activation kernels.

It runs where Triton runs: CUDA, or the CPU under ``TRITON_INTERPRET=1`` (which
``tests/test_interpreter.py`` sets when it re-runs this folder). On a plain CPU run
``apply_lora_mlp`` takes ``LoRA_MLP``'s path and these tests skip. Everything is compared with
PEFT's own forward and backward, non-zero ``lora_B``, fresh random data each run.
"""

import copy
import functools

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lk_autograd import apply_lora_mlp
from lk_triton import uses_triton

from .models import MLP, Block, compare, peft_mlp

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not uses_triton(torch.empty(0, device=DEVICE)),
    reason="FusedLoRA_MLP needs Triton: CUDA, or the CPU with TRITON_INTERPRET=1",
)
ACTIVATIONS = ["swiglu", "geglu", "geglu_tanh"]
# bf16 on CUDA only: Triton's interpreter computes bf16 tl.dot wrongly, so on the CPU the
# fused path is not taken for bf16 (test_interpreter_bf16_takes_the_general_path)
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _model(dtype: torch.dtype, r: int, inter: int = 136, **config) -> torch.nn.Module:
    """An MLP of width ``inter`` (two column tiles of 64 and a partial one), LoRA on gate, up
    and down, adapters in ``dtype``."""
    cfg = LoraConfig(r=r, lora_alpha=2 * r + 3, target_modules=list(MLP),
                     init_lora_weights=False, **config)  # fmt: skip
    block = Block(d=32, inter=inter).to(dtype)
    peft = get_peft_model(block, cfg, autocast_adapter_dtype=False)
    return peft.base_model.model.to(DEVICE)


def _function(m: torch.nn.Module, X: torch.Tensor, activation: str = "swiglu") -> str:
    """The autograd node ``apply_lora_mlp`` produced (its output is a view of the Function's)."""
    Y = apply_lora_mlp(m, X, activation)
    return type(Y.grad_fn.next_functions[0][0]).__name__


def _X(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(3, 45, 32, device=DEVICE, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("r", [4, 16, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_mlp_matches_peft(activation, dtype, r):
    model, X = _model(dtype, r), _X(dtype)
    assert _function(model, X, activation) == "FusedLoRA_MLPBackward"
    ours = functools.partial(apply_lora_mlp, activation=activation)
    peft = functools.partial(peft_mlp, activation=activation)
    if dtype == torch.float32:
        errs = compare("mlp", model, X, ours_fn=ours, peft_fn=peft)
        assert max(errs.values()) < 1e-5, errs
        return
    ref_X = X.detach().double().requires_grad_()
    errs = compare("mlp", model, X, ref_model=copy.deepcopy(model).double(), ref_X=ref_X,
                   ours_fn=ours, peft_fn=peft)  # fmt: skip
    assert max(errs.values()) < 2e-2, errs


def test_fused_mlp_retain_graph_and_freed_graph_agree():
    """The first backward keeps e0/g0 (retain_graph); the second overwrites them with de/dg."""
    model, X = _model(torch.float32, 8), _X(torch.float32)
    Y = apply_lora_mlp(model, X, "swiglu")
    params = [X] + [p for p in model.parameters() if p.requires_grad]
    G = torch.randn_like(Y)
    first = torch.autograd.grad(Y, params, G, retain_graph=True)
    second = torch.autograd.grad(Y, params, G)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "config", [{"r": 72}, {"r": 8, "lora_dropout": 0.1}, {"r": 8, "lora_bias": True}],
    ids=["rank_over_max", "dropout", "lora_bias"],
)  # fmt: skip
def test_cases_outside_the_fused_path_take_LoRA_MLP(config):
    model = _model(torch.float32, **config)
    assert _function(model, _X(torch.float32)) == "LoRA_MLPBackward"


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's limitation only")
def test_interpreter_bf16_takes_the_general_path():
    assert _function(_model(torch.bfloat16, 8), _X(torch.bfloat16)) == "LoRA_MLPBackward"
