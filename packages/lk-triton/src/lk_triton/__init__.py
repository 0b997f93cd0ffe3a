"""Triton SwiGLU and GeGLU kernels, forward and backward.

CUDA/ROCm tensors run Triton kernels; CPU tensors run an exact torch implementation, or the
Triton kernels in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before import.
"""

from ._gated import uses_triton
from ._geglu import geglu_backward, geglu_forward
from ._ops import geglu, swiglu
from ._swiglu import swiglu_backward, swiglu_forward

__all__ = [
    "geglu",
    "geglu_backward",
    "geglu_forward",
    "swiglu",
    "swiglu_backward",
    "swiglu_forward",
    "uses_triton",
]
