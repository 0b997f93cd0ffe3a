"""Every shipped Triton kernel compiles for sm_90 (H100, H200) and fits its shared memory: on a CPU.

Triton's compiler and its bundled ``ptxas`` run without a GPU. Here each launcher builds its
real arguments, descriptors and constexprs on CPU tensors, and ``launch`` is replaced by the
JIT's ``warmup`` under a stand-in driver that reports an sm_90 target: the kernels go through
the whole pipeline (TTIR to cubin) without running. This catches what the interpreter tests
cannot: front-end errors the interpreter accepts (the ninth session's two ``return``\\ s
around a constexpr ``if`` failed only on the GPU) and a specialization that needs more
shared memory than one block may have, which fails only at launch. Numerics stay the GPU
tests' (``-m gpu``) and the interpreter's.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lk_autograd import (
    _activation_backward,
    _down_backward,
    _gemm,
    _lora_grads,
    _quant_kernel,
    _ws_gated,
    _ws_gemm,
)
from lk_triton import _gated
from tools._sm90 import sm90_driver, spill_bytes

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    _gated.INTERPRET, reason="TRITON_INTERPRET=1 replaces the JIT that compiles here"
)

# CUDA C Programming Guide, compute capability 9.0: at most 227 KB of shared memory per block.
SM90_SHARED_BYTES = 227 * 1024


@pytest.fixture
def compiled(monkeypatch) -> Iterator[list[Any]]:
    """The ``CompiledKernel`` of each launch the test makes, compiled and not run."""
    kernels: list[Any] = []

    def compile_only(kernel, programs, args, kwargs, device) -> None:
        kernels.append(kernel.warmup(*args, grid=(programs,), **kwargs))

    for module in (
        _gated, _gemm, _lora_grads, _quant_kernel, _activation_backward, _down_backward, _ws_gemm,
        _ws_gated,
    ):  # fmt: skip
        monkeypatch.setattr(module, "launch", compile_only)
    monkeypatch.setattr(_gated, "uses_triton", lambda t: True)
    with sm90_driver():
        yield kernels


def _check(kernels: list[Any], names: list[str]) -> None:
    assert [k.name for k in kernels] == names
    for k in kernels:
        assert k.asm["cubin"], k.name
        assert k.metadata.shared <= SM90_SHARED_BYTES, (k.name, k.metadata.shared)


def _randn(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["bf16", "fp64"])
def test_gated_activation(compiled, kind, dtype):
    gate, up = _randn(333, 40, dtype=dtype), _randn(333, 40, dtype=dtype)
    _gated.gated_forward(gate, up, kind)
    _gated.gated_backward(gate.clone(), gate, up, kind, inplace=False, store_h=False)
    _check(compiled, ["gated_forward_kernel", "gated_backward_kernel"])


@pytest.mark.parametrize("kind", ["silu", "gelu_tanh"])
def test_fast_sigmoid(compiled, kind):
    """Float32 sigmoids take the hardware's flush-to-zero approximations (``_kernels._sigmoid``;
    ``tests/triton/test_kernels.py`` checks their bits on a GPU), not ``div.full``."""
    gate, up = _randn(333, 40), _randn(333, 40)
    _gated.gated_backward(gate.clone(), gate, up, kind, inplace=False, store_h=False)
    ptx = compiled[0].asm["ptx"]
    assert "ex2.approx.ftz.f32" in ptx and "div.approx.ftz.f32" in ptx
    assert "div.full.f32" not in ptx


def test_gated_activation_int64_offsets(compiled, monkeypatch):
    """Past 2^31 elements the offsets are int64 (``INT64``); the bound lowered to reach it."""
    monkeypatch.setattr(_gated, "_INT32_LIMIT", 0)
    gate = _randn(64, 32)
    _gated.gated_backward(gate.clone(), gate, gate.clone(), "silu", inplace=True)
    _check(compiled, ["gated_backward_kernel"])


@pytest.mark.parametrize(
    "dtype, M, r, w_kn, more, bias, s",
    [
        (torch.bfloat16, 256, 16, False, 0, False, 2.0),  # a projection's forward
        (torch.bfloat16, 333, 16, False, 0, True, 1.0),  # biased (Qwen2), unit scale
        (torch.bfloat16, 256, 64, True, 2, False, 2.0),  # q/k/v's dX: three pairs, top rank
        (torch.float16, 333, 8, True, 1, False, 0.5),  # gate/up's dX, rank below 16
    ],
    ids=["bf16-r16", "bf16-bias", "bf16-r64-3pairs", "fp16-r8-2pairs"],
)
def test_lora_matmul(compiled, dtype, M, r, w_kn, more, bias, s):
    K, N = 192, 320
    W = _randn(K, N, dtype=dtype) if w_kn else _randn(N, K, dtype=dtype)
    U = _randn(r, N, dtype=dtype) if w_kn else _randn(N, r, dtype=dtype)
    pairs = [(_randn(M, 64, dtype=dtype), _randn(64, N, dtype=dtype)) for _ in range(more)]
    b = _randn(N, dtype=dtype) if bias else None
    X, XA = _randn(M, K, dtype=dtype), _randn(M, r, dtype=dtype)
    _gemm.lora_matmul(X, W, XA, U, s, w_kn, pairs, bias=b)
    _check(compiled, ["_kernel"])


@pytest.mark.parametrize(
    "activation, r, dtype",
    [("silu", 16, torch.bfloat16), ("gelu", 64, torch.bfloat16), ("gelu_tanh", 8, torch.float16)],
    ids=["silu-r16-bf16", "gelu-r64-bf16", "gelu_tanh-r8-fp16"],
)
def test_gated_lora_matmul(compiled, activation, r, dtype):
    M, K, N = 333, 192, 320
    X = _randn(M, K, dtype=dtype)
    Ws = [_randn(N, K, dtype=dtype) for _ in range(2)]
    XAs = [_randn(M, r, dtype=dtype) for _ in range(2)]
    Us = [_randn(N, r, dtype=dtype) for _ in range(2)]
    _gemm.gated_lora_matmul(X, Ws, XAs, Us, [2.0, 2.0], activation)
    _check(compiled, ["_gated_kernel"])


@pytest.mark.parametrize(
    "ranks, biases, dtype",
    [((16, 16, 16), (True, True, True), torch.bfloat16), ((64, 8), (False, True), torch.float16)],
    ids=["qkv-biased", "two-outputs-r64"],
)
def test_lora_matmul_group(compiled, ranks, biases, dtype):
    M, K, Ns = 256, 192, (320, 64, 64)
    X = _randn(M, K, dtype=dtype)
    XAs = _randn(M, sum(ranks), dtype=dtype).split(ranks, dim=1)
    Ws = [_randn(N, K, dtype=dtype) for N in Ns[: len(ranks)]]
    Us = [_randn(W.shape[0], r, dtype=dtype) for W, r in zip(Ws, ranks, strict=True)]
    bs = [_randn(W.shape[0], dtype=dtype) if b else None for W, b in zip(Ws, biases, strict=True)]
    _gemm.lora_matmul_group(X, Ws, XAs, Us, [2.0] * len(Ws), bs)
    _check(compiled, ["_grouped_kernel"])


@pytest.mark.parametrize(
    "Ns, r, dtype",
    [
        ((1096,), 16, torch.bfloat16),
        ((600,), 8, torch.float16),
        ((640, 128, 128), 16, torch.bfloat16),
        ((640, 128), 8, torch.float16),
    ],
    ids=["one-tma-r16", "one-tma-r8", "qkv-pointers", "two-pointers-r8"],
)
def test_lora_grads(compiled, Ns, r, dtype):
    M = 333
    dYs = [_randn(M, N, dtype=dtype) for N in Ns]
    Bs = [_randn(N, r, dtype=dtype) for N in Ns]
    XAs = _randn(M, r * len(Ns), dtype=dtype).split(r, dim=1)
    _lora_grads.lora_grads(dYs, Bs, XAs, [2.0] * len(Ns))
    _check(compiled, ["_partials_kernel", "_sum_kernel"])


@pytest.mark.parametrize(
    "activation, r, dtype",
    [("silu", 16, torch.bfloat16), ("gelu", 64, torch.bfloat16), ("gelu_tanh", 8, torch.float16)],
    ids=["silu-r16-bf16", "gelu-r64-bf16", "gelu_tanh-r8-fp16"],
)
def test_activation_backward_with_dA(compiled, activation, r, dtype):
    dh, e, g = (_randn(333, 320, dtype=dtype) for _ in range(3))
    dXA = _randn(333, r, dtype=dtype)
    _activation_backward.activation_backward_with_dA(dh, e, g, dXA, activation, inplace=True)
    _check(compiled, ["_partials_kernel", "_sum_kernel"])


@pytest.mark.skipif(_down_backward.gluon is None, reason="this Triton has no Gluon (3.6-3.9) API")
@pytest.mark.parametrize(
    "activation, r, dtype, M",
    [
        ("silu", 16, torch.bfloat16, 256),
        ("gelu", 64, torch.bfloat16, 256),
        ("gelu_tanh", 72, torch.float16, 333),
        ("gelu_tanh", 8, torch.float16, 333),
    ],
    ids=["silu-r16-bf16", "gelu-r64-bf16", "gelu_tanh-r72-fp16-M333", "gelu_tanh-r8-fp16-M333"],
)
def test_down_backward(compiled, activation, r, dtype, M):
    """The warp-specialized kernel: its shared memory fits, and no partition spills (a spill
    in the epilogue's loop costs its two warps more than the ``dh`` store it saves). M = 256
    compiles whole row blocks (no mask code), 333 a partial last one (``TAIL``)."""
    K, N = 192, 512
    e, g = (_randn(M, N, dtype=dtype) for _ in range(2))
    dY, W = _randn(M, K, dtype=dtype), _randn(K, N, dtype=dtype)
    dXA, A = _randn(M, r, dtype=dtype), _randn(r, N, dtype=dtype)
    _down_backward.down_backward(dY, W, dXA, A, e, g, activation, inplace=True)
    _check(compiled, ["_kernel"])
    assert spill_bytes(compiled[0]) == 0


@pytest.mark.skipif(_down_backward.gluon is None, reason="this Triton has no Gluon (3.6-3.9) API")
@pytest.mark.parametrize("w_kn", [False, True], ids=["XWt", "XW"])
@pytest.mark.parametrize(
    "ks, r, s, dtype, M, N",
    [
        ((192,), 16, 2.0, torch.bfloat16, 256, 512),
        ((200, 72, 72), 72, 1.0, torch.float16, 333, 264),
    ],
    ids=["one-pair-r16-bf16", "three-pairs-r72-fp16-tails"],
)
def test_ws_lora_matmul(compiled, w_kn, ks, r, s, dtype, M, N):
    """The warp-specialized LoRA GEMM, both weight layouts: its shared memory fits, no
    partition spills."""
    pairs = [(_randn(M, k, dtype=dtype), _randn(*((k, N) if w_kn else (N, k)), dtype=dtype))
             for k in ks]  # fmt: skip
    (X, W), *more = pairs
    U = _randn(*((r, N) if w_kn else (N, r)), dtype=dtype)
    _ws_gemm.ws_lora_matmul(X, W, _randn(M, r, dtype=dtype), U, s, w_kn, more)
    _check(compiled, ["_kernel"])
    assert spill_bytes(compiled[0]) == 0
    assert compiled[0].metadata.shared <= SM90_SHARED_BYTES


@pytest.mark.skipif(_down_backward.gluon is None, reason="this Triton has no Gluon (3.6-3.9) API")
@pytest.mark.parametrize(
    "Ns, ranks, ss, dtype, M",
    [
        ((512, 128, 128), (16, 16, 16), (2.0, 2.0, 2.0), torch.bfloat16, 256),
        ((264, 520), (72, 8), (1.0, 0.5), torch.float16, 333),
    ],
    ids=["qkv-r16-bf16", "two-outputs-r72-fp16-tails"],
)
def test_ws_lora_matmul_group(compiled, Ns, ranks, ss, dtype, M):
    """Two or three projections of one input over the warp-specialized mainloop: its shared
    memory fits, no partition spills."""
    K = 192
    Ws = [_randn(N, K, dtype=dtype) for N in Ns]
    XAs = _randn(M, sum(ranks), dtype=dtype).split(ranks, dim=1)
    Us = [_randn(N, r, dtype=dtype) for N, r in zip(Ns, ranks, strict=True)]
    _ws_gemm.ws_lora_matmul_group(_randn(M, K, dtype=dtype), Ws, XAs, Us, ss)
    _check(compiled, ["_group_kernel"])
    assert spill_bytes(compiled[0]) == 0


@pytest.mark.skipif(_down_backward.gluon is None, reason="this Triton has no Gluon (3.6-3.9) API")
@pytest.mark.parametrize(
    "activation, dtype, M",
    [
        ("silu", torch.bfloat16, 256),
        ("gelu", torch.bfloat16, 256),
        ("gelu_tanh", torch.float16, 333),
    ],
    ids=["silu-bf16", "gelu-bf16", "gelu_tanh-fp16-M333"],
)
def test_ws_gated_lora_matmul(compiled, activation, dtype, M):
    """Gate, up and the activation over the warp-specialized mainloop: its shared memory
    fits, no partition spills; M = 333 compiles the masked last row block."""
    N, K, ranks = 384, 192, (16, 8)
    Ws = [_randn(N, K, dtype=dtype) for _ in ranks]
    XAs, Us = [_randn(M, r, dtype=dtype) for r in ranks], [_randn(N, r, dtype=dtype) for r in ranks]
    _ws_gated.ws_gated_lora_matmul(_randn(M, K, dtype=dtype), Ws, XAs, Us, (2.0, 0.5), activation)
    _check(compiled, ["_kernel"])
    assert spill_bytes(compiled[0]) == 0
    assert compiled[0].metadata.shared <= SM90_SHARED_BYTES


@pytest.mark.parametrize("nested", [False, True], ids=["absmax", "nested-absmax"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_dequantize_4bit(compiled, nested, dtype):
    """A bitsandbytes ``QuantState``'s fields, as the launcher reads them (no bitsandbytes)."""
    shape, blocksize = torch.Size((64, 32)), 64
    blocks = shape.numel() // blocksize
    state2 = SimpleNamespace(absmax=torch.rand(1), code=torch.randn(256), blocksize=256)
    absmax = torch.randint(0, 255, (blocks,), dtype=torch.uint8) if nested else torch.rand(blocks)
    qs = SimpleNamespace(
        shape=shape, dtype=dtype, blocksize=blocksize, nested=nested, absmax=absmax,
        code=torch.randn(16), state2=state2 if nested else None, offset=0.5 if nested else None,
    )  # fmt: skip
    packed = torch.randint(0, 255, (shape.numel() // 2, 1), dtype=torch.uint8)
    _quant_kernel.dequantize_4bit_triton(packed, qs)
    _check(compiled, ["_dequantize_4bit_kernel"])
