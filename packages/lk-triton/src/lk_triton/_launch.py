"""Launch a Triton kernel through the ``CompiledKernel`` it compiled to, past the JIT's dispatch.

``kernel[grid](*args, **kwargs)`` binds and specializes every argument, builds a string cache
key from them and the options, and checks the kernel's globals, on every call. Skipping that
saved 16-47 us of host time per launch on the lent H200's CPU (BENCHMARKS.md, seventh
session), which counts where a block is host-bound (Q/K/V and O at 8192 tokens run ~1 ms of
GPU under ~1.5 ms of host). The first launch of each specialization goes through the JIT as
usual, and the ``CompiledKernel`` it returns is kept; later launches of the same
specialization call it directly, with every parameter in ``kernel.arg_names`` order
(constexprs included: its launcher skips them) and a three-axis grid (its runner reads
``grid[0..2]``).

The cache key is what the JIT specializes on (Triton 3.6-3.9's ``native_specialize_impl``,
checked against it by ``tests/triton/test_launch.py``): per argument, a tensor descriptor's
dtype and block shape, and a Gluon descriptor's shared-memory layout (their shapes and strides
are run-time arguments), a tensor's dtype and 16-byte alignment, an int's ``== 1``,
``% 16 == 0``, 32-bit and unsigned 64-bit ranges, a bool's or a float's type, None; then the
constexpr and option values, the kernel and the current device. Gluon kernels launch the same
way: their JIT is Triton's (``GluonJITFunction`` keeps ``JITFunction.run``, which calls the
``CompiledKernel``'s launcher with the bound arguments, as the cached path does). NVIDIA only:
see ``launch``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

try:
    from triton.tools.tensor_descriptor import TensorDescriptor

    _DESCRIPTOR: tuple[type, ...] = (TensorDescriptor,)
except ImportError:  # no triton (nothing launches), or one without host tensor descriptors
    _DESCRIPTOR = ()
# Gluon's host descriptors are looked up where their module is already imported (a kernel that
# takes them imported it): importing Gluon here would add ~0.3 s to importing lk_triton.
_GLUON_DESCRIPTORS = "triton.experimental.gluon.nvidia.hopper"

# Specializations differ only in dtypes, alignment, flags and ranks: a few dozen in a process.
# A bound keeps an unexpected stream of them (a caller varying a constexpr) from growing.
_MAX_ENTRIES = 256
_compiled: dict[tuple, Any] = {}


def _specialization(arg: Any) -> Any:
    """The part of one argument that selects the compiled kernel (see the module docstring)."""
    if isinstance(arg, _DESCRIPTOR):
        return arg.base.dtype, tuple(arg.block_shape)
    if isinstance(arg, Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool):
        return bool
    if isinstance(arg, int):
        return int, arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31, arg >= 2**63
    if isinstance(arg, float):
        return float
    if arg is None:
        return None
    gluon = sys.modules.get(_GLUON_DESCRIPTORS)
    if gluon is not None and isinstance(arg, gluon.TensorDescriptor):
        return arg.base.dtype, tuple(arg.block_shape), arg.layout
    raise TypeError(f"_launch: no specialization rule for a {type(arg).__name__} argument")


def launch(
    kernel: Any, programs: int, args: Sequence[Any], kwargs: dict[str, Any], device: torch.device
) -> None:
    """``kernel[(programs,)](*args, **kwargs)`` on ``device``'s tensors; ``kwargs`` hold the
    constexprs (every parameter after ``args``) and the launch options (``num_warps``,
    ``num_stages``). Elsewhere the JIT runs every launch: in Triton's interpreter (CPU
    tensors), and on ROCm, whose backend also specializes pointers on a 2 GB range."""
    if device.type != "cuda" or torch.version.hip is not None:
        kernel[(programs,)](*args, **kwargs)
        return
    key = (kernel, torch.cuda.current_device(), *kwargs.items(), *map(_specialization, args))
    compiled = _compiled.get(key)
    if compiled is None:
        compiled = kernel[(programs,)](*args, **kwargs)
        if len(_compiled) >= _MAX_ENTRIES:
            _compiled.clear()
        _compiled[key] = compiled
        return
    constexprs = (kwargs[name] for name in kernel.arg_names[len(args) :])
    compiled[(programs, 1, 1)](*args, *constexprs)
