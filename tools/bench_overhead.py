"""Per-call CPU overhead of apply_lora_o / apply_lora_qkv / apply_lora_mlp, against PEFT's modules.

On tiny tensors (8 tokens, hidden 64, r=4) the GPU or CPU work is negligible, so the time per
forward+backward call is the Python and dispatch cost that starves the GPU on small blocks.
Blocks: O, QKV, QKV with an NF4 (bitsandbytes 4-bit, double-quant) base, and SwiGLU MLP.
Axolotl's Functions too where its wheel imports (its NF4 and MLP paths need CUDA).

    uv run python tools/bench_overhead.py [--device cpu|cuda] [--iters 200] [--profile BLOCK]

On CUDA the loop is bracketed by ``torch.cuda.synchronize`` (bf16 there, float32 on the CPU).
``--profile BLOCK`` prints a cProfile of our path for that block instead of the table.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _blocks import PROJECTIONS, Block, to_nf4
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from _peers import axolotl_lora
from lk_autograd import apply_lora_mlp, apply_lora_o, apply_lora_qkv

D, INTER, HEADS, KV, HD, TOKENS, RANK = 64, 128, 4, 2, 16, 8, 4


def make_model(dtype: torch.dtype, device: str, nf4: bool) -> nn.Module:
    torch.manual_seed(0)
    block = Block(D, INTER, HEADS, KV, HD).to(dtype)
    if nf4:
        to_nf4(block, dtype, device)
    block = block.to(device)
    cfg = LoraConfig(
        r=RANK, lora_alpha=8, target_modules=list(PROJECTIONS), init_lora_weights=False
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


def time_us(fn: Callable, m: nn.Module, X: Tensor, iters: int, cuda: bool) -> float:
    """Mean time of one forward+backward call in microseconds, best of 5 repeats. On the CPU
    this is the process's CPU time, which time spent descheduled by other processes doesn't
    inflate; on CUDA it is wall time."""
    clock = time.perf_counter if cuda else time.process_time
    for _ in range(20):
        step(fn, m, X)
    times = []
    for _ in range(5):
        if cuda:
            torch.cuda.synchronize()
        t0 = clock()
        for _ in range(iters):
            step(fn, m, X)
        if cuda:
            torch.cuda.synchronize()
        times.append((clock() - t0) / iters * 1e6)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--blocks", nargs="+", default=list(CALLS), choices=list(CALLS))
    ap.add_argument("--profile", choices=list(CALLS))
    args = ap.parse_args()
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
        time_us(ours, m, X, 50, cuda)
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
        t_ours = time_us(ours, m, X, args.iters, cuda)
        t_peft = time_us(peft, m, X, args.iters, cuda)
        t_ax = "-"
        if name in axolotl:
            t_ax = f"{time_us(axolotl[name], m, X, args.iters, cuda):.1f}"
        print(f"{name:<8} {t_ours:9.1f} {t_peft:9.1f} {t_ax:>10} {t_ours / t_peft:9.2f}")


if __name__ == "__main__":
    main()
