"""Shared test helpers: devices, tolerances (DESIGN.md, Numerics), relative error, fresh seeds,
a float64 causal-LM loss and the gated GEMM's float64 check."""

import random

import pytest
import torch
import torch.nn.functional as F

from lk_triton import _gated, _reference

HAS_CUDA = torch.cuda.is_available()

gpu = pytest.mark.gpu
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA/ROCm device")

DEVICES = ["cpu", pytest.param("cuda", marks=[gpu, requires_cuda])]

TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 2e-2,
    torch.float16: 2e-2,
}


def fresh_seed() -> int:
    """A new seed each run, printed (``pytest -s``) so that a failure can be reproduced; torch's
    default generator starts from the same seed every time."""
    seed = random.SystemRandom().randrange(2**16)
    print(f"seed {seed}")
    return seed


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||``, computed in float64."""
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_lk_triton_bits(value: torch.Tensor, ref: torch.Tensor, kind: str) -> None:
    """lk_triton's bits. Exact GELU compiles its erf chain differently in the two kernels: on the
    H100 (fifteenth session) a few elements of some shapes differed, so there at most one
    rounding step apart, in at most one element in a thousand."""
    if kind != "gelu":
        assert torch.equal(value, ref)
        return
    assert (value != ref).float().mean().item() < 1e-3
    eps = torch.finfo(value.dtype).eps
    torch.testing.assert_close(value, ref, rtol=eps, atol=torch.finfo(value.dtype).tiny)


def causal_lm_loss_in_logits_dtype(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    **_,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` without its ``logits.float()``, which rounds float64
    logits to float32. Through it, float64 runs of two implementations agree only to float32's
    rounding boundaries: now and then a 1e-16 difference flips one, and a few SGD steps grow
    that to 1e-8. Set it as ``model.loss_function`` of a float64 model under comparison."""
    shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(
        logits.reshape(-1, vocab_size), shifted.reshape(-1),
        ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def check_gated_against_float64(outs, X, Ws, XAs, Bs, ss, activation) -> None:
    """``outs = (e, g, h)`` of gate, up and the activation against float64, each no worse
    than the separate path: the cuBLAS pair per projection, then ``lk_triton``'s activation
    kernel."""
    parts = list(zip(Ws, XAs, Bs, ss, strict=True))
    e_ref, g_ref = (X.double() @ W.double().t() + s * (XA.double() @ B.double().t())
                    for W, XA, B, s in parts)  # fmt: skip
    e_sep, g_sep = (torch.addmm(XA @ B.t(), X, W.t(), beta=s) for W, XA, B, s in parts)
    h_sep = _gated.gated_forward(e_sep, g_sep, activation)
    h_ref = _reference.gated_forward(e_ref, g_ref, activation)
    for got, sep, ref in zip(outs, (e_sep, g_sep, h_sep), (e_ref, g_ref, h_ref), strict=True):
        err, err_sep = rel_err(got, ref), rel_err(sep, ref)
        assert err <= 1.25 * err_sep + 1e-4, (err, err_sep)
