"""Shared test helpers: devices, relative error and tolerances (DESIGN.md, Numerics)."""

import pytest
import torch

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


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||``, computed in float64."""
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()
