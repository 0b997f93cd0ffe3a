"""Benchmark lk-autograd's LoRA_MLP / LoRA_QKV / LoRA_O against plain PEFT and the dense floor.

Llama-3-8B shapes (hidden 4096, intermediate 14336, 32 heads / 8 KV heads of 128), 8192 tokens,
bf16, r=16 and r=64, and an NF4 base when bitsandbytes imports. Forward+backward time (median of
``triton.testing.do_bench``), activation memory held between forward and backward (allocated
delta, output included) and peak, each also as a ratio to the dense-GEMM floor measured in the
same run on the block's own weights and data (see DESIGN.md "Performance"). Correctness (ours
vs PEFT, relative error of output and every gradient) is checked before timing.

    uv run python tools/bench_lora_blocks.py [--tokens 8192] [--ranks 16 64] [--fp32-adapters]

Writes ``$OUT/bench_lora_blocks.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from importlib.metadata import version

import torch
import torch.nn.functional as F
import triton
from _blocks import Block, to_nf4
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from _peers import axolotl_lora
from lk_autograd import apply_lora_mlp, apply_lora_o, apply_lora_qkv

D, INTER, HEADS, KV, HD = 4096, 14336, 32, 8, 128
MLP = ("gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MiB = 2**20


def build(r: int, nf4: bool, fp32_adapters: bool) -> nn.Module:
    torch.manual_seed(0)
    with torch.device("cuda"):
        block = Block(D, INTER, HEADS, KV, HD).to(torch.bfloat16)
    for p in block.parameters():
        nn.init.normal_(p, std=0.02)
    if nf4:
        to_nf4(block, torch.bfloat16, "cuda")
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(MLP + ATTN),
                     init_lora_weights=False)  # fmt: skip
    model = get_peft_model(block, cfg, autocast_adapter_dtype=fp32_adapters).base_model.model
    for name, p in model.named_parameters():
        if "lora_" in name:
            with torch.no_grad():
                p.mul_(0.1)
    return model


def dense(m: nn.Module, name: str) -> Tensor:
    """The base weight, dequantized for NF4."""
    layer = getattr(m, name).get_base_layer()
    qs = getattr(layer.weight, "quant_state", None)
    if qs is None:
        return layer.weight
    import bitsandbytes.functional as bnbF

    return bnbF.dequantize_4bit(layer.weight, qs).to(torch.bfloat16)


def peft_mlp(m: nn.Module, X: Tensor) -> Tensor:
    return m.down_proj(F.silu(m.gate_proj(X)) * m.up_proj(X))


def ours_mlp(m: nn.Module, X: Tensor) -> Tensor:
    return apply_lora_mlp(m, X, "swiglu")


BLOCKS: dict[str, tuple[Callable, Callable, int]] = {
    "mlp": (peft_mlp, ours_mlp, D),
    "qkv": (lambda m, X: (m.q_proj(X), m.k_proj(X), m.v_proj(X)), apply_lora_qkv, D),
    "o": (lambda m, X: m.o_proj(X), apply_lora_o, HEADS * HD),
}


def _outs(o):
    return list(o) if isinstance(o, tuple) else [o]


def fwd_bwd(fn: Callable, m: nn.Module, X: Tensor, dYs: list[Tensor]) -> Callable[[], None]:
    params = [X] + [p for p in m.parameters() if p.requires_grad]

    def step() -> None:
        outs = _outs(fn(m, X))
        torch.autograd.grad(outs, params, dYs, allow_unused=True)

    return step


def rel_errors(
    m: nn.Module, X: Tensor, dYs: list[Tensor], block: str, candidate: Callable | None = None
) -> dict[str, float]:
    """Relative error of ``candidate`` (ours by default) against PEFT, outputs and gradients."""
    peft, ours, _ = BLOCKS[block]
    ours = candidate or ours
    params = [X] + [p for p in m.parameters() if p.requires_grad]
    results = []
    for fn in (ours, peft):
        outs = _outs(fn(m, X))
        grads = torch.autograd.grad(outs, params, dYs, allow_unused=True)
        results.append([o.detach() for o in outs] + [g for g in grads if g is not None])
    errs = [
        ((a.float() - b.float()).norm() / b.float().norm()).item()
        for a, b in zip(*results, strict=True)
    ]
    return {"max_rel_err": max(errs), "n_tensors": len(errs)}


def held_and_peak(fn: Callable, m: nn.Module, X: Tensor, dYs: list[Tensor]) -> tuple[float, float]:
    params = [X] + [p for p in m.parameters() if p.requires_grad]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    outs = _outs(fn(m, X))
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    torch.autograd.grad(outs, params, dYs, allow_unused=True)
    del outs
    torch.cuda.synchronize()
    return held / MiB, (torch.cuda.max_memory_allocated() - base) / MiB


def floor(m: nn.Module, block: str, X: Tensor, dYs: list[Tensor]) -> Callable[[], None]:
    """The block's mandatory dense GEMMs, forward ``X W^T`` and backward ``dY W`` per projection,
    on its own weights and data: the real inputs and the real activation gradients."""
    X2 = X.reshape(-1, X.shape[-1])
    with torch.no_grad():
        if block == "mlp":
            Wg, Wu, Wd = (dense(m, n) for n in MLP)
            e, g = X2 @ Wg.t(), X2 @ Wu.t()
            e_, g_ = e.detach().float().requires_grad_(), g.float().requires_grad_()
            with torch.enable_grad():
                h = F.silu(e_) * g_
            dY = dYs[0].reshape(-1, D)
            dh = dY @ Wd
            de, dg = (t.to(torch.bfloat16) for t in torch.autograd.grad(h, (e_, g_), dh.float()))
            h = h.detach().to(torch.bfloat16)

            def run() -> None:
                X2 @ Wg.t(), X2 @ Wu.t(), h @ Wd.t()
                dY @ Wd, de @ Wg, dg @ Wu

            return run
        names = ("q_proj", "k_proj", "v_proj") if block == "qkv" else ("o_proj",)
        Ws = [dense(m, n) for n in names]
        dY2 = [d.reshape(-1, d.shape[-1]) for d in dYs]

        def run() -> None:
            for W, dY in zip(Ws, dY2, strict=True):
                X2 @ W.t()
                dY @ W

        return run


def axolotl_blocks() -> dict[str, Callable]:
    """Axolotl's entry points per block, when its wheel is installed."""
    axolotl = axolotl_lora()
    if axolotl is None:
        return {}
    return {"mlp": axolotl.apply_lora_mlp_swiglu, "qkv": axolotl.apply_lora_qkv,
            "o": axolotl.apply_lora_o}  # fmt: skip


def bench(r: int, nf4: bool, fp32_adapters: bool, tokens: int) -> list[dict]:
    m = build(r, nf4, fp32_adapters)
    axolotl = axolotl_blocks()
    rows = []
    for block, (peft, ours, k) in BLOCKS.items():
        torch.manual_seed(1)
        X = torch.randn(1, tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        with torch.no_grad():
            dYs = [torch.randn_like(o) for o in _outs(peft(m, X))]
        row = {"block": block, "r": r, "base": "nf4" if nf4 else "bf16", "tokens": tokens,
               "fp32_adapters": fp32_adapters, **rel_errors(m, X, dYs, block)}  # fmt: skip
        row["floor_ms"] = triton.testing.do_bench(floor(m, block, X, dYs))
        impls = {"peft": peft, "ours": ours}
        if block in axolotl:
            impls["axolotl"] = axolotl[block]
            row["axolotl_max_rel_err"] = rel_errors(m, X, dYs, block, impls["axolotl"])[
                "max_rel_err"
            ]
        for name, fn in impls.items():
            ms = triton.testing.do_bench(fwd_bwd(fn, m, X, dYs))
            held, peak = held_and_peak(fn, m, X, dYs)
            row.update({f"{name}_ms": ms, f"{name}_x": ms / row["floor_ms"],
                        f"{name}_held_mib": held, f"{name}_peak_mib": peak})  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        del X, dYs
    del m
    torch.cuda.empty_cache()
    return rows


def profile(block: str, r: int, nf4: bool, tokens: int) -> None:
    """Print torch.profiler's kernel table for each implementation of one block."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    m = build(r, nf4, fp32_adapters=False)
    peft, ours, k = BLOCKS[block]
    impls = {"peft": peft, "ours": ours, **{"axolotl": axolotl_blocks().get(block)}}
    X = torch.randn(1, tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        dYs = [torch.randn_like(o) for o in _outs(peft(m, X))]
    for name, fn in impls.items():
        if fn is None:
            continue
        step = fwd_bwd(fn, m, X, dYs)
        step()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(f"\n== {name} {block} r={r} {'nf4' if nf4 else 'bf16'} (3 steps)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--fp32-adapters", action="store_true",
                    help="PEFT's default autocast_adapter_dtype=True (fp32 adapters)")  # fmt: skip
    ap.add_argument("--profile", choices=list(BLOCKS), help="profile one block and exit")
    ap.add_argument("--nf4", action="store_true", help="with --profile: an NF4 base")
    args = ap.parse_args()
    if args.profile:
        profile(args.profile, args.ranks[0], args.nf4, args.tokens)
        return
    try:
        import bitsandbytes  # noqa: F401

        bases = [False, True]
    except ImportError:
        print("bitsandbytes not importable: NF4 skipped")
        bases = [False]
    rows = [row for nf4 in bases for r in args.ranks
            for row in bench(r, nf4, args.fp32_adapters, args.tokens)]  # fmt: skip
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "python": platform.python_version(),
           "peft": version("peft")}  # fmt: skip
    print(f"\n{env}")
    head = (f"{'block':5} {'base':4} {'r':>3} {'floor ms':>8} {'PEFT':>12} {'ours':>12} "
            f"{'held MiB P/ours':>16} {'peak MiB P/ours':>16} {'err':>8}")  # fmt: skip
    print(head)
    for w in rows:
        print(f"{w['block']:5} {w['base']:4} {w['r']:>3} {w['floor_ms']:8.3f} "
              f"{w['peft_ms']:6.3f} {w['peft_x']:4.2f}x {w['ours_ms']:6.3f} {w['ours_x']:4.2f}x "
              f"{w['peft_held_mib']:7.0f}/{w['ours_held_mib']:<8.0f} "
              f"{w['peft_peak_mib']:7.0f}/{w['ours_peak_mib']:<8.0f} "
              f"{w['max_rel_err']:8.1e}")  # fmt: skip
        if "axolotl_ms" in w:
            print(f"{'':14} Axolotl {w['axolotl_ms']:6.3f} {w['axolotl_x']:4.2f}x, held "
                  f"{w['axolotl_held_mib']:.0f} MiB, peak {w['axolotl_peak_mib']:.0f} MiB, "
                  f"err {w['axolotl_max_rel_err']:.1e}")  # fmt: skip
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench_lora_blocks.json"), "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
