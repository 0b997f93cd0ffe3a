"""Device dispatch for the gated activations: Triton kernels or the exact torch path."""

import torch
from torch import Tensor

from . import _reference
from ._env import INTERPRET
from ._launch import launch
from ._validate import Activation, check_same

try:
    import triton

    from . import _kernels
except ImportError:  # triton is a Linux-only dependency
    triton = None
    _kernels = None


_KERNEL_ID = {"silu": 0, "gelu": 1, "gelu_tanh": 2}
_BLOCK = 2048
_NUM_WARPS = 8
_INT32_LIMIT = 2**31 - _BLOCK  # past this, offsets are computed in int64


def uses_triton(t: Tensor) -> bool:
    """Whether tensors on ``t``'s device run the Triton kernels (else the torch path)."""
    if t.is_cuda:  # ROCm builds of torch report HIP devices as cuda too
        if _kernels is None:
            raise RuntimeError(
                "lk_triton: CUDA/ROCm tensors need triton, which is not installed; "
                "pip install triton"
            )
        return True
    return INTERPRET and _kernels is not None and t.device.type == "cpu"


def _launch_args(n: int, dtype: torch.dtype) -> dict:
    return {
        "FP64": dtype == torch.float64,
        "INT64": n >= _INT32_LIMIT,
        "BLOCK": _BLOCK,
        "num_warps": _NUM_WARPS,
    }


def _programs(n: int) -> int:
    return triton.cdiv(n, _BLOCK)


def gated_forward(gate: Tensor, up: Tensor, kind: Activation) -> Tensor:
    """``h = act(gate) * up`` as a new tensor of ``gate``'s shape and dtype."""
    check_same(gate=gate, up=up)
    if not uses_triton(gate):
        return _reference.gated_forward(gate, up, kind)
    gate, up = gate.contiguous(), up.contiguous()
    h = torch.empty_like(gate)
    n = gate.numel()
    if n:
        kwargs = {"ACTIVATION": _KERNEL_ID[kind], **_launch_args(n, gate.dtype)}
        launch(_kernels.gated_forward_kernel, _programs(n), [gate, up, h, n], kwargs, gate.device)
    return h


def gated_backward(
    dh: Tensor, gate: Tensor, up: Tensor, kind: Activation, *, inplace: bool, store_h: bool = True
) -> tuple[Tensor | None, Tensor, Tensor]:
    """Return ``(h, dgate, dup)``; with ``inplace`` they are ``dh``, ``gate``, ``up`` overwritten.

    ``store_h=False`` skips writing ``h`` (returned as None), for callers that only need
    the input gradients.
    """
    check_same(dh=dh, gate=gate, up=up)
    if not uses_triton(gate):
        h, dgate, dup = _reference.gated_backward(dh, gate, up, kind)
    else:
        h, dgate, dup = _triton_backward(dh, gate, up, kind, inplace=inplace, store_h=store_h)
    if inplace and dgate is not gate:
        if store_h:
            h = dh.copy_(h)
        dgate, dup = gate.copy_(dgate), up.copy_(dup)
    return (h if store_h else None), dgate, dup


def _triton_backward(
    dh: Tensor, gate: Tensor, up: Tensor, kind: Activation, *, inplace: bool, store_h: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the kernel in place when the buffers allow it, else into new contiguous tensors."""
    if inplace and dh.is_contiguous() and gate.is_contiguous() and up.is_contiguous():
        h, dgate, dup = dh, gate, up
    else:
        dh, gate, up = dh.contiguous(), gate.contiguous(), up.contiguous()
        h = torch.empty_like(gate) if store_h else gate  # unused when store_h is False
        dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    _launch_backward(dh, gate, up, h, dgate, dup, kind, store_h)
    return h, dgate, dup


def gated_backward_into_dh(
    dh: Tensor, gate: Tensor, up: Tensor, kind: Activation
) -> tuple[Tensor, Tensor]:
    """Return ``(dgate, dup)`` as new tensors and write ``h`` into ``dh``.

    ``gate`` and ``up`` are only read, so tensors saved for a second backward stay intact,
    while reusing ``dh`` (which the caller owns) keeps one full-size buffer fewer alive.
    """
    check_same(dh=dh, gate=gate, up=up)
    if not (uses_triton(gate) and dh.is_contiguous()):
        h, dgate, dup = gated_backward(dh, gate, up, kind, inplace=False)
        dh.copy_(h)
        return dgate, dup
    gate, up = gate.contiguous(), up.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    _launch_backward(dh, gate, up, dh, dgate, dup, kind, store_h=True)
    return dgate, dup


def _launch_backward(
    dh: Tensor, gate: Tensor, up: Tensor, h: Tensor, dgate: Tensor, dup: Tensor,
    kind: Activation, store_h: bool,
) -> None:  # fmt: skip
    """The backward kernel over contiguous buffers; outputs may alias the inputs, since each
    element is read before the same program writes it."""
    n = gate.numel()
    if n:
        kwargs = {"ACTIVATION": _KERNEL_ID[kind], "STORE_H": store_h, **_launch_args(n, gate.dtype)}
        args = [dh, gate, up, h, dgate, dup, n]
        launch(_kernels.gated_backward_kernel, _programs(n), args, kwargs, gate.device)
