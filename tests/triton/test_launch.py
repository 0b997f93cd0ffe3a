"""``lk_triton._launch``: its cache key against the JIT's own specialization, and which path each
launch takes, with a stand-in kernel (CPU). The real kernels launched through it twice, on fresh
data, against float64: ``tests/autograd/test_gemm.py::test_second_launches_take_the_cache`` (GPU).
"""

import itertools

import pytest
import torch

from lk_triton import _launch

triton = pytest.importorskip("triton")


def _arguments() -> list:
    """Arguments of every kind our kernels take, in variants that do and do not specialize."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    base = torch.empty(64, 64, dtype=torch.bfloat16)
    ints = [0, 1, 2, 15, 16, 17, 32, 4096, 2**31 - 16, 2**31, 2**33 + 1, 2**63, -16, -17]
    tensors = [base, base[1:], base.view(-1)[8:], base.float(), torch.empty(8, dtype=torch.uint8)]
    descriptors = [TensorDescriptor.from_tensor(t, block) for t, block in [
        (base, [16, 16]), (base[:, :32], [16, 16]), (base[:16], [16, 16]), (base, [16, 32]),
        (base.half(), [16, 16]),
    ]]  # fmt: skip
    return [*ints, True, False, 0.5, 1.0, 2.0, None, *tensors, *descriptors, *_gluon_descriptors()]


def _gluon_descriptors() -> list:
    """Gluon's host descriptors (``_down_backward``, ``_ws_gemm``, ``_ws_gated``): they also
    specialize on their shared-memory layout."""
    try:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    except ImportError:
        return []
    base = torch.empty(64, 64, dtype=torch.bfloat16)
    wide, narrow = gl.NVMMASharedLayout(128, 16), gl.NVMMASharedLayout(64, 16)
    return [TensorDescriptor.from_tensor(t, block, layout) for t, block, layout in [
        (base, [16, 64], wide), (base[:32], [16, 64], wide), (base, [16, 64], narrow),
        (base, [32, 64], wide), (base.half(), [16, 64], gl.NVMMASharedLayout(128, 16)),
        (base, [16, 32], narrow),
    ]]  # fmt: skip


def test_specialization_is_the_jit_s():
    """Two arguments share a cache key exactly when Triton's JIT specializes them alike (so a
    cached kernel is only reused where the JIT would pick the same one)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    def jit_s(arg):
        return native_specialize_impl(CUDABackend, arg, False, True, True)

    args = _arguments()
    for a, b in itertools.combinations(args, 2):
        same_key = _launch._specialization(a) == _launch._specialization(b)
        assert same_key == (jit_s(a) == jit_s(b)), (a, b, jit_s(a), jit_s(b))


def test_unknown_argument_kind_raises():
    with pytest.raises(TypeError, match="no specialization rule for a str"):
        _launch._specialization("text")


class _Compiled:
    """Stands in for a ``CompiledKernel``: records each ``[grid](*args)`` launch."""

    def __init__(self, launches: list):
        self.launches = launches

    def __getitem__(self, grid):
        assert len(grid) == 3, "CompiledKernel's runner reads three grid axes"
        return lambda *args: self.launches.append(("compiled", grid, args))


class _Kernel:
    """Stands in for a ``JITFunction`` with parameters ``x, n, BLOCK, FLAG``."""

    arg_names = ("x", "n", "BLOCK", "FLAG")

    def __init__(self):
        self.launches: list = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.launches.append(("jit", grid, args, kwargs))
            return _Compiled(self.launches)

        return run


@pytest.fixture
def cuda_device(monkeypatch):
    """A CUDA device as far as ``launch`` can tell, on the CPU: its index is all it reads."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(_launch, "_compiled", {})
    return torch.device("cuda", 0)


def test_second_launch_takes_the_compiled_kernel(cuda_device):
    kernel, x = _Kernel(), torch.empty(32)
    options = {"BLOCK": 64, "FLAG": True, "num_warps": 4}
    _launch.launch(kernel, 5, [x, 48], options, cuda_device)
    _launch.launch(kernel, 7, [x[4:], 64], options, cuda_device)  # same specialization
    assert kernel.launches[0] == ("jit", (5,), (x, 48), options)
    path, grid, args = kernel.launches[1]
    assert (path, grid) == ("compiled", (7, 1, 1))
    assert args[0] is not x and args[1:] == (64, 64, True)  # the constexprs in arg_names order


@pytest.mark.parametrize(
    "args, options",
    [
        ([torch.empty(32, dtype=torch.float16), 48], {}),  # another dtype
        ([torch.empty(32)[1:], 48], {}),  # not 16-byte aligned
        ([torch.empty(32), 47], {}),  # an int not divisible by 16
        ([torch.empty(32), 1], {}),  # an int of 1 (the JIT makes it a constant)
        ([torch.empty(32), 48], {"FLAG": False}),  # a constexpr
        ([torch.empty(32), 48], {"num_warps": 8}),  # an option
    ],
    ids=["dtype", "alignment", "int-divisibility", "int-one", "constexpr", "option"],
)
def test_another_specialization_takes_the_jit(cuda_device, args, options):
    kernel = _Kernel()
    base = {"BLOCK": 64, "FLAG": True, "num_warps": 4}
    _launch.launch(kernel, 5, [torch.empty(32), 48], base, cuda_device)
    _launch.launch(kernel, 5, args, {**base, **options}, cuda_device)
    assert [launch[0] for launch in kernel.launches] == ["jit", "jit"]


def test_devices_and_backends_that_always_take_the_jit(cuda_device, monkeypatch):
    """CPU tensors (Triton's interpreter) and ROCm, whose pointers also specialize on a 2 GB
    range: every launch through the JIT, nothing cached."""
    kernel, x, options = _Kernel(), torch.empty(32), {"BLOCK": 64, "FLAG": True}
    for _ in range(2):
        _launch.launch(kernel, 5, [x, 48], options, torch.device("cpu"))
    monkeypatch.setattr(torch.version, "hip", "6.2")
    for _ in range(2):
        _launch.launch(kernel, 5, [x, 48], options, cuda_device)
    assert [launch[0] for launch in kernel.launches] == ["jit"] * 4
    assert _launch._compiled == {}


def test_cache_is_bounded(cuda_device, monkeypatch):
    monkeypatch.setattr(_launch, "_MAX_ENTRIES", 3)
    kernel, x = _Kernel(), torch.empty(32)
    for block in range(5):
        _launch.launch(kernel, 5, [x, 48], {"BLOCK": block, "FLAG": True}, cuda_device)
    assert len(_launch._compiled) == 2  # emptied at the fourth, then the fourth and fifth
