"""Twenty-sixth session, on the CPU (no GPU was lent): the host time of launching the three Gluon
kernels (``down_backward``, ``_ws_gemm``, ``_ws_gated``) through Triton's JIT, as they did, and
through ``lk_triton._launch``'s kept ``CompiledKernel``, as they now do.

Each launcher builds its real arguments on CPU tensors of the Llama-3-8B blocks' divisibility
(``M`` = 1024 rows stand in for 8192: the JIT specializes on ``% 16``, not on size). Timed per
call, median of 7 rounds of 200:

- ``jit``: ``kernel.warmup(*args, grid, **options)`` after a first compile (under
  ``tools/_sm90``'s stand-in driver): the JIT's binder, its string key, the cache lookup and
  the globals check, everything ``kernel[grid](...)`` does before the driver's launch;
- ``kept``: ``lk_triton._launch.launch`` with the kept kernel's launcher replaced by nothing:
  its key (one ``_specialization`` per argument), the lookup, the constexprs in order.

Then the parts of building the arguments that do not depend on the tensors' device: Gluon's
``NVMMASharedLayout.get_default_for`` (two per launch, which each launcher called until
``_down_backward.tile_layout`` kept them), the kept ``tile_layout`` and one
``TensorDescriptor.from_tensor`` (7 to 10 per launch).

The driver's launch itself (``CompiledKernel.run``: descriptor encoding, ``cuLaunchKernelEx``)
is the same on both paths and is not timed, and so is building the arguments (on CPU tensors
its ``torch`` calls cost what they do not on a GPU). This machine's CPU is not the GPU host's:
read the ratio, not the microseconds.

Usage: ``PYTHONPATH=tools:packages/lk-autograd/src:packages/lk-triton/src uv run --with
triton==3.6.0 python benchmarks/2026-12-08-s26/host_dispatch.py``.
"""

import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from _sm90 import sm90_driver

from lk_autograd import _down_backward, _ws_gated, _ws_gemm
from lk_triton import _launch

M, HIDDEN, INTERMEDIATE, R = 1024, 4096, 14336, 16
CUDA = torch.device("cuda", 0)  # what launch reads of the device: its type


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).to(torch.bfloat16)


def calls() -> dict[str, tuple[object, Callable[[], None]]]:
    """Each Gluon kernel and a call of its launcher, at one block's shapes."""
    dY, e, g = _randn(M, HIDDEN), _randn(M, INTERMEDIATE), _randn(M, INTERMEDIATE)
    W_down, dXA, A = _randn(HIDDEN, INTERMEDIATE), _randn(M, R), _randn(R, INTERMEDIATE)
    X, W_o, XA, B = _randn(M, HIDDEN), _randn(HIDDEN, HIDDEN), _randn(M, R), _randn(HIDDEN, R)
    W_g, W_u = _randn(INTERMEDIATE, HIDDEN), _randn(INTERMEDIATE, HIDDEN)
    B_g, B_u = _randn(INTERMEDIATE, R), _randn(INTERMEDIATE, R)
    XA2 = _randn(M, 2 * R)
    Ws_qkv = [_randn(HIDDEN, n) for n in (HIDDEN, 1024, 1024)]
    dYs = [_randn(M, n) for n in (HIDDEN, 1024, 1024)]
    dXA3, A3 = _randn(M, 3 * R), _randn(3 * R, HIDDEN)
    return {
        "down_backward": (
            _down_backward._kernel,
            lambda: _down_backward.gated_grads(dY, W_down, dXA, A, e, g, "silu", True),
        ),
        "ws o forward (1 pair)": (
            _ws_gemm._kernel,
            lambda: _ws_gemm.ws_lora_matmul(X, W_o, XA, B, 2.0, False),
        ),
        "ws q/k/v dX (3 pairs)": (
            _ws_gemm._kernel,
            lambda: _ws_gemm.ws_lora_matmul(
                dYs[0], Ws_qkv[0], dXA3, A3, 1.0, True, list(zip(dYs[1:], Ws_qkv[1:], strict=True))
            ),
        ),
        "ws gated forward": (
            _ws_gated._kernel,
            lambda: _ws_gated.ws_gated_lora_matmul(
                X, [W_g, W_u], [XA2[:, :R], XA2[:, R:]], [B_g, B_u], [2.0, 2.0], "silu"
            ),
        ),
    }


def per_call_us(fn: Callable[[], None], rounds: int = 7, n: int = 200) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


class _NoLaunch:
    """A kept kernel whose launcher does nothing: ``compiled[grid](*args)``."""

    def __getitem__(self, grid):
        return lambda *args: None


def dispatch_us(kernel, call: Callable[[], None]) -> tuple[int, float, float]:
    """The launch's argument count and its ``jit`` and ``kept`` host microseconds."""
    launches = []
    module = {_down_backward._kernel: _down_backward, _ws_gemm._kernel: _ws_gemm,
              _ws_gated._kernel: _ws_gated}[kernel]  # fmt: skip
    with mock.patch.object(module, "launch", lambda *launch: launches.append(launch)):
        call()
    _, programs, args, options, _ = launches[0]
    kernel.warmup(*args, grid=(programs,), **options)  # the first compile
    jit_us = per_call_us(lambda: kernel.warmup(*args, grid=(programs,), **options))
    _launch._compiled.clear()
    key = (kernel, 0, *options.items(), *map(_launch._specialization, args))
    _launch._compiled[key] = _NoLaunch()
    kept_us = per_call_us(lambda: _launch.launch(kernel, programs, args, options, CUDA))
    return len(args), jit_us, kept_us


def main() -> None:
    print(f"{'launch':24} {'args':>4} {'jit us':>8} {'kept us':>8}")
    with sm90_driver(), mock.patch.object(torch.cuda, "current_device", lambda: 0):
        for name, (kernel, call) in calls().items():
            n_args, jit_us, kept_us = dispatch_us(kernel, call)
            print(f"{name:24} {n_args:>4} {jit_us:8.1f} {kept_us:8.1f}")
    X, dtype = torch.empty(M, HIDDEN, dtype=torch.bfloat16), _down_backward.gl.bfloat16
    layout = _down_backward.tile_layout(X.dtype, 128, 64)
    parts = {
        "get_default_for": lambda: _down_backward.gl.NVMMASharedLayout.get_default_for(
            [128, 64], dtype
        ),
        "tile_layout (kept)": lambda: _down_backward.tile_layout(X.dtype, 128, 64),
        "from_tensor": lambda: _down_backward.TensorDescriptor.from_tensor(X, [128, 64], layout),
    }
    for name, part in parts.items():
        print(f"{name:24} {per_call_us(part):8.1f} us")


if __name__ == "__main__":
    main()
