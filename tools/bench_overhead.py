"""Per-call CPU overhead of apply_lora_o / apply_lora_qkv / apply_lora_mlp, against PEFT's modules.

On tiny tensors (8 tokens, hidden 64, r=4) the GPU or CPU work is negligible, so the time per
forward+backward call is the Python and dispatch cost that starves the GPU on small blocks.
Blocks: O, QKV, QKV with an NF4 (bitsandbytes 4-bit, double-quant) base, and SwiGLU MLP.
Axolotl's Functions too where its wheel imports (its NF4 and MLP paths need CUDA).

    uv run python tools/bench_overhead.py [--device cpu|cuda] [--iters 200] [--profile BLOCK]
    uv run python tools/bench_overhead.py --launches   # NVIDIA sm_90+

On CUDA the loop is bracketed by ``torch.cuda.synchronize`` (bf16 there, float32 on the CPU).
``--profile BLOCK`` prints a cProfile of our path for that block instead of the table.
``--launches`` times each Triton launcher (the fused LoRA GEMMs, the gated activation, the
4-bit dequantize where bitsandbytes imports, the Gluon kernels on sm_90: ``down_backward`` and
``_ws_gemm``'s and ``_ws_gated``'s, called directly) and the O and QKV steps on the fused path, on
small tensors, through ``lk_triton._launch``'s cache of compiled kernels and through the JIT's
dispatch at every call (the cache made to keep nothing).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _blocks import PROJECTIONS, Block, to_nf4
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from _peers import axolotl_lora
from lk_autograd import (
    _down_backward,
    _gemm,
    _ws_gated,
    _ws_gemm,
    apply_lora_mlp,
    apply_lora_o,
    apply_lora_qkv,
)
from lk_triton import _gated, _launch

D, INTER, HEADS, KV, HD, TOKENS, RANK = 64, 128, 4, 2, 16, 8, 4


def make_model(
    dtype: torch.dtype,
    device: str,
    nf4: bool,
    dims: tuple[int, ...] = (D, INTER, HEADS, KV, HD),
    rank: int = RANK,
) -> nn.Module:
    """A PEFT block (``Block(*dims)``) with rank-``rank`` adapters, ``lora_alpha = 2 rank``."""
    torch.manual_seed(0)
    block = Block(*dims).to(dtype)
    if nf4:
        to_nf4(block, dtype, device)
    block = block.to(device)
    cfg = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(PROJECTIONS), init_lora_weights=False
    )
    return get_peft_model(block, cfg).base_model.model.to(dtype)


def peft_mlp(m: nn.Module, X: Tensor) -> Tensor:
    return m.down_proj(F.silu(m.gate_proj(X)) * m.up_proj(X))


CALLS: dict[str, tuple[bool, Callable, Callable]] = {  # name: (nf4, ours, PEFT)
    "o": (False, lambda m, X: apply_lora_o(m, X), lambda m, X: m.o_proj(X)),
    "qkv": (False, apply_lora_qkv, lambda m, X: (m.q_proj(X), m.k_proj(X), m.v_proj(X))),
    "qkv_nf4": (True, apply_lora_qkv, lambda m, X: (m.q_proj(X), m.k_proj(X), m.v_proj(X))),
    "mlp": (False, lambda m, X: apply_lora_mlp(m, X, "swiglu"), peft_mlp),
}


def axolotl_calls(cuda: bool) -> dict[str, Callable]:
    """Axolotl's entry point per block, or none when its wheel does not import."""
    kernels = axolotl_lora()
    if kernels is None:
        return {}
    qkv = lambda m, X: kernels.apply_lora_qkv(m, X, inplace=False)  # noqa: E731
    calls = {"o": kernels.apply_lora_o, "qkv": qkv}
    if cuda:  # its dequantize and its MLP kernels need CUDA
        calls.update(qkv_nf4=qkv, mlp=kernels.apply_lora_mlp_swiglu)
    return calls


def step(fn: Callable, m: nn.Module, X: Tensor) -> None:
    outs = fn(m, X)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])


def time_us(call: Callable[[], object], iters: int, cuda: bool) -> float:
    """Mean time of one ``call()`` in microseconds, best of 5 repeats. On the CPU this is the
    process's CPU time, which time spent descheduled by other processes doesn't inflate; on
    CUDA it is wall time."""
    clock = time.perf_counter if cuda else time.process_time
    for _ in range(20):
        call()
    times = []
    for _ in range(5):
        if cuda:
            torch.cuda.synchronize()
        t0 = clock()
        for _ in range(iters):
            call()
        if cuda:
            torch.cuda.synchronize()
        times.append((clock() - t0) / iters * 1e6)
    return min(times)


class _KeepsNothing(dict):
    """A launch cache that stores nothing: every launch goes through the JIT's dispatch."""

    def __setitem__(self, key, value) -> None:
        pass


def launcher_calls() -> dict[str, Callable[[], object]]:
    """Each Triton launcher on small bf16 CUDA tensors (M = N = K = 256, r = 16)."""
    n, r = 256, 16
    t = lambda *shape: torch.randn(*shape, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    X, W, XA, B, A = t(n, n), t(n, n), t(n, r), t(n, r), t(r, n)
    pairs, three, two = [(X, W), (X, W)], ([W] * 3, [XA] * 3, [B] * 3), ([W] * 2, [XA] * 2, [B] * 2)
    calls = {
        "lora_matmul": lambda: _gemm.lora_matmul(X, W, XA, B, 2.0, False),
        "lora_matmul +2 pairs (dX)": lambda: _gemm.lora_matmul(X, W, XA, A, 1.0, True, pairs),
        "lora_matmul_group of 3": lambda: _gemm.lora_matmul_group(X, *three, [2.0] * 3),
        "gated_lora_matmul": lambda: _gemm.gated_lora_matmul(X, *two, [2.0] * 2, "silu"),
        "activation forward": lambda: _gated.gated_forward(X, W, "silu"),
        "activation backward": lambda: _gated.gated_backward(X, W, X, "silu", inplace=False),
    }
    if _down_backward.gluon_runs_here(X):  # the Gluon kernels (NVIDIA sm_90)
        e, g = t(n, n), t(n, n)
        ws_group, ws_gated = _ws_gemm.ws_lora_matmul_group, _ws_gated.ws_gated_lora_matmul
        calls.update({
            "down_backward": lambda: _down_backward.gated_grads(X, W, XA, A, e, g, "silu", False),
            "ws_lora_matmul": lambda: _ws_gemm.ws_lora_matmul(X, W, XA, B, 2.0, False),
            "ws_lora_matmul_group of 3": lambda: ws_group(X, *three, [2.0] * 3),
            "ws_gated_lora_matmul": lambda: ws_gated(X, *two, [2.0] * 2, "silu"),
        })  # fmt: skip
    try:
        import bitsandbytes.functional as bnbf

        from lk_autograd._quant_kernel import dequantize_4bit_triton

        packed, state = bnbf.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
        calls["nf4 dequantize"] = lambda: dequantize_4bit_triton(packed, state)
    except ImportError:
        pass
    return calls


def time_launches(iters: int) -> None:
    """Host us per call, cached against the JIT's dispatch (see the module docstring): the
    median of three rounds, the two settings in alternating order (ABBAAB), each round's time
    the best of five repeats."""
    import triton

    _gemm._MIN_OUTPUT = 0  # these small outputs take the fused kernels too
    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'launcher':<28} {'cached us':>10} {'JIT us':>10}")
    # O and Q/K/V take the fused kernels: hidden 256, 4 x 64 heads (2 for k, v), r = 16
    m = make_model(torch.bfloat16, "cuda", False, dims=(256, 512, 4, 2, 64), rank=16)
    X = torch.randn(1, 256, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    calls = {**launcher_calls(),
             "O step (fwd+bwd)": functools.partial(step, CALLS["o"][1], m, X),
             "QKV step (fwd+bwd)": functools.partial(step, CALLS["qkv"][1], m, X)}  # fmt: skip
    for name, call in calls.items():
        times: dict[str, list[float]] = {"cached": [], "JIT": []}
        for cache in ("cached", "JIT", "JIT", "cached", "cached", "JIT"):
            _launch._compiled = {} if cache == "cached" else _KeepsNothing()
            times[cache].append(time_us(call, iters, True))
        cached, jit = (statistics.median(times[k]) for k in ("cached", "JIT"))
        print(f"{name:<28} {cached:10.1f} {jit:10.1f}")
    _launch._compiled = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--blocks", nargs="+", default=list(CALLS), choices=list(CALLS))
    ap.add_argument("--profile", choices=list(CALLS))
    ap.add_argument("--launches", action="store_true", help="Triton launchers, cached vs JIT")
    args = ap.parse_args()
    if args.launches:
        time_launches(args.iters)
        return
    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(1)  # tiny tensors: intra-op threads only add synchronisation
    dtype = torch.bfloat16 if cuda else torch.float32
    models = {nf4: make_model(dtype, args.device, nf4) for nf4 in (False, True)}

    def inputs(name: str) -> Tensor:
        d = HEADS * HD if name == "o" else D
        return torch.randn(1, TOKENS, d, dtype=dtype, device=args.device, requires_grad=True)

    if args.profile:
        nf4, ours, _ = CALLS[args.profile]
        m, X = models[nf4], inputs(args.profile)
        time_us(functools.partial(step, ours, m, X), 50, cuda)
        with cProfile.Profile() as prof:
            for _ in range(args.iters):
                step(ours, m, X)
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        return

    print(f"torch {torch.__version__}, {args.device}, {dtype}, {TOKENS} tokens, d={D}, r={RANK}")
    print(f"{'block':<8} {'ours us':>9} {'PEFT us':>9} {'Axolotl us':>10} {'ours/PEFT':>9}")
    axolotl = axolotl_calls(cuda)
    for name in args.blocks:
        nf4, ours, peft = CALLS[name]
        m, X = models[nf4], inputs(name)
        t_ours = time_us(functools.partial(step, ours, m, X), args.iters, cuda)
        t_peft = time_us(functools.partial(step, peft, m, X), args.iters, cuda)
        t_ax = "-"
        if name in axolotl:
            t_ax = f"{time_us(functools.partial(step, axolotl[name], m, X), args.iters, cuda):.1f}"
        print(f"{name:<8} {t_ours:9.1f} {t_peft:9.1f} {t_ax:>10} {t_ours / t_peft:9.2f}")


if __name__ == "__main__":
    main()
