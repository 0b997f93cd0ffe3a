"""Triton device functions for kernels that fuse a gated activation into their own work
(lk-autograd's LoRA MLP does). Needs triton.

    from lk_triton.language import ACTIVATION_ID, activation_and_derivative

    @triton.jit
    def kernel(..., ACTIVATION: tl.constexpr):
        a, da = activation_and_derivative(g, ACTIVATION)  # act(g), act'(g); g float32/64

launched with ``ACTIVATION=ACTIVATION_ID[name]``, ``name`` one of ``"silu"``, ``"gelu"``
(exact, erf) and ``"gelu_tanh"``: the same math as lk_triton's own kernels.
"""

from ._gated import _KERNEL_ID as ACTIVATION_ID
from ._kernels import activation_and_derivative

__all__ = ["ACTIVATION_ID", "activation_and_derivative"]
