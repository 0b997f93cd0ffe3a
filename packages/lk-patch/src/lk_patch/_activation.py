"""Which lk-autograd kernel computes an MLP's activation, read from the activation module.

Reading the module (``mlp.act_fn``) rather than the config string catches models that
hard-code their activation or read a differently named config field. Classes are matched
by name within ``transformers.activations`` / ``torch.nn`` because transformers renamed
them across versions (``PytorchGELUTanh`` became ``GELUTanh``).
"""

from __future__ import annotations

from torch import nn

# transformers.activations class name -> kernel; every class here computes exactly the
# kernel's function (GELUActivation's python variant is the same erf formula).
_TRANSFORMERS_KERNELS = {
    "SiLUActivation": "swiglu",
    "GELUActivation": "geglu",
    "GELUTanh": "geglu_tanh",
    "PytorchGELUTanh": "geglu_tanh",
    "NewGELUActivation": "geglu_tanh",
}


def kernel_for(activation: object) -> tuple[str | None, str]:
    """``(kernel, description)``: kernel is ``"swiglu"``, ``"geglu"``, ``"geglu_tanh"`` or None."""
    cls = type(activation)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(activation, nn.SiLU):
        return "swiglu", "silu"
    if isinstance(activation, nn.GELU):
        kernel = {"none": "geglu", "tanh": "geglu_tanh"}.get(activation.approximate)
        return kernel, f"nn.GELU(approximate={activation.approximate!r})"
    if cls.__module__ == "transformers.activations" and cls.__name__ in _TRANSFORMERS_KERNELS:
        return _TRANSFORMERS_KERNELS[cls.__name__], cls.__name__
    return None, name
