"""LoRA MLP / QKV / O blocks: PEFT, lk-autograd and peers against the dense floor.

Llama-3-8B shapes (hidden 4096, intermediate 14336, 32 heads / 8 KV heads of 128), bf16
activations, a bf16 or NF4 base. Forward+backward time (median of ``triton.testing.do_bench``
over 0.5 s of calls), the same step's time replayed from a CUDA graph (the GPU's share, without
the host), activation memory held between forward and backward (allocated delta, output
included) and peak, each also as a ratio to the dense-GEMM floor measured in the same run on the
block's own weights and data (see DESIGN.md "Performance"). Correctness (each implementation
vs PEFT, relative error of output and every gradient) is checked before timing. Peers, when
their wheels import: PEFT with Liger's SwiGLU (MLP), Axolotl's and Unsloth's LoRA Functions.

This is the measuring half of ``tools/bench.py --suite micro``, which runs it, writes the JSON
and the chart. Run directly, it is that suite, or with ``--profile BLOCK [--nf4]`` the
torch.profiler kernel table of one block at the first of ``--ranks``:

    uv run tools/bench_lora_blocks.py --profile mlp --ranks 16 [--nf4]
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F
import triton
from _blocks import Block, to_nf4
from peft import LoraConfig, get_peft_model
from rich.table import Table
from torch import Tensor, nn

from _peers import axolotl_lora, liger_silu_mul, unsloth_lora
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
    # Detached: a view of X would keep X's AccumulateGrad node (made on the default stream)
    # alive, and a later CUDA-graph capture of a step that differentiates X would then wait on
    # the default stream, which invalidates the capture.
    X2 = X.detach().reshape(-1, X.shape[-1])
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


def liger_swiglu_blocks(silu_mul: type[torch.autograd.Function]) -> dict[str, Callable]:
    """PEFT's gate/up/down modules around Liger's fused ``silu(gate) * up``: the MLP only."""

    def mlp(m: nn.Module, X: Tensor) -> Tensor:
        return m.down_proj(silu_mul.apply(m.gate_proj(X), m.up_proj(X)))

    return {"mlp": mlp}


def fused_lora_blocks(kernels) -> dict[str, Callable]:
    """Entry points of Axolotl's or Unsloth's LoRA kernels module (the same signatures).

    ``inplace=False``: Unsloth's backward otherwise writes dX into X's storage, and the
    benchmark reuses X for every call (Axolotl ignores the flag).
    """
    return {"mlp": functools.partial(kernels.apply_lora_mlp_swiglu, inplace=False),
            "qkv": functools.partial(kernels.apply_lora_qkv, inplace=False),
            "o": kernels.apply_lora_o}  # fmt: skip


PEERS: dict[str, tuple[Callable, Callable]] = {
    "peft+liger_swiglu": (liger_silu_mul, liger_swiglu_blocks),
    "axolotl": (axolotl_lora, fused_lora_blocks),
    "unsloth": (unsloth_lora, fused_lora_blocks),
}


@functools.cache
def peer_blocks() -> tuple[dict[str, dict[str, Callable]], dict[str, str]]:
    """Each importable peer's implementation per block, and why each other peer is skipped."""
    found, skipped = {}, {}
    for name, (load, blocks) in PEERS.items():
        peer = load()
        if peer is None:
            skipped[name] = "not importable"
        else:
            found[name] = blocks(peer)
    return found, skipped


def implementations(block: str) -> dict[str, Callable]:
    """PEFT, ours and every importable peer that implements ``block``, by name."""
    peft, ours, _ = BLOCKS[block]
    impls = {"peft": peft, "ours": ours}
    for name, blocks in peer_blocks()[0].items():
        if block in blocks:
            impls[name] = blocks[block]
    return impls


def timed_ms(fn: Callable[[], None]) -> float:
    """``do_bench``'s median over ~0.5 s of calls (its default is the mean of ~0.1 s: about ten
    samples of an 8 ms block, where one stall moves the figure by several percent)."""
    return triton.testing.do_bench(fn, rep=500, return_mode="median")


def capture_graph(step: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """``step`` captured once in a CUDA graph, after two warm-up calls off the default stream
    (as capture requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def graph_ms(step: Callable[[], None]) -> float:
    """``step``'s CUDA graph (``capture_graph``) replayed and timed like ``step`` itself: the
    GPU's time with the host out of the loop. On a slow host the small blocks' wall time is the
    host's (Python and launches), which in a whole model overlaps the GPU work of other layers;
    this is the part that does not."""
    graph = capture_graph(step)
    ms = timed_ms(graph.replay)
    del graph
    torch.cuda.empty_cache()
    return ms


def alternated_ms(
    graphs: dict[Hashable, torch.cuda.CUDAGraph], rounds: int
) -> dict[Hashable, list[float]]:
    """Each graph's replays timed (``timed_ms``) in turn, ``rounds`` times, so that the card's
    clock drift falls on all of them alike: the times of each, in round order."""
    times: dict[Hashable, list[float]] = {k: [] for k in graphs}
    for _ in range(rounds):
        for k, graph in graphs.items():
            times[k].append(timed_ms(graph.replay))
    return times


def mlp_ab_rows(rounds: int, switch: str, nf4: bool = False) -> list[dict]:
    """The r = 16 MLP block with one of ``lk_autograd._mlp``'s routes on and off (``switch``,
    the name of its gate function, replaced by one that says no): both captured once as CUDA
    graphs, then their replays timed in turn, ``rounds`` times each, so that the card's clock
    drift falls on both alike; graph time over the dense floor's (timed in each round too),
    and the block's held and peak memory."""
    import lk_autograd._mlp as mlp

    m = build(16, nf4, False)
    torch.manual_seed(1)
    X = torch.randn(1, 8192, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        dYs = [torch.randn_like(peft_mlp(m, X))]
    real = getattr(mlp, switch)
    graphs, memory = {}, {}
    try:
        for on in (True, False):
            setattr(mlp, switch, real if on else (lambda *a: False))
            graphs[on] = capture_graph(fwd_bwd(ours_mlp, m, X, dYs))
            memory[on] = held_and_peak(ours_mlp, m, X, dYs)
    finally:
        setattr(mlp, switch, real)
    times = alternated_ms({"floor": capture_graph(floor(m, "mlp", X, dYs)), **graphs}, rounds)
    rows = []
    for i, floor_ms in enumerate(times["floor"]):
        for on in (True, False):
            ms = times[on][i]
            held, peak = memory[on]
            rows.append({"round": i, switch: on, "graph_ms": ms, "x_floor": ms / floor_ms,
                         "floor_ms": floor_ms, "held_mib": held, "peak_mib": peak})  # fmt: skip
    return rows


def rows_table(title: str, rows: list[dict]) -> Table:
    """A rich table of ``rows`` (dicts of one set of keys), floats to four digits."""
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    return table


def measure(fn: Callable, m: nn.Module, X: Tensor, dYs: list[Tensor], row: dict) -> dict:
    """Time, ratio to the floor (wall and CUDA-graph replay), held and peak activation memory of
    one implementation; the floor's times are ``row``'s ``floor_ms`` and ``floor_graph_ms``. A
    step that cannot be captured gets ``graph_failure`` instead of the graph figures."""
    step = fwd_bwd(fn, m, X, dYs)
    ms = timed_ms(step)
    held, peak = held_and_peak(fn, m, X, dYs)
    figures = {"ms": ms, "x": ms / row["floor_ms"], "held_mib": held, "peak_mib": peak}
    try:
        figures["graph_ms"] = graph_ms(step)
    except Exception as err:  # a peer that syncs or allocates outside the graph's pool
        # Recorded, and the run goes on; but a failed capture can leave CUDA's RNG in capture
        # mode, so later random draws may fail too ("Offset increment outside graph capture").
        figures["graph_failure"] = repr(err)[:200]
        torch.cuda.synchronize()
    else:
        figures["graph_x"] = figures["graph_ms"] / row["floor_graph_ms"]
    return figures


def bench(r: int, nf4: bool, fp32_adapters: bool, tokens: int) -> list[dict]:
    """One row per block: the floor, then ``<impl>_ms/_x/_held_mib/_peak_mib`` per implementation.

    ``max_rel_err`` is ours against PEFT, ``<peer>_max_rel_err`` each peer's; a peer that fails
    on this configuration gets ``<peer>_error`` instead of figures, and the run goes on.
    """
    m = build(r, nf4, fp32_adapters)
    rows = []
    for block, (peft, _, k) in BLOCKS.items():
        torch.manual_seed(1)
        X = torch.randn(1, tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        with torch.no_grad():
            dYs = [torch.randn_like(o) for o in _outs(peft(m, X))]
        row = {"block": block, "r": r, "base": "nf4" if nf4 else "bf16", "tokens": tokens,
               "fp32_adapters": fp32_adapters, **rel_errors(m, X, dYs, block)}  # fmt: skip
        floor_step = floor(m, block, X, dYs)
        row["floor_ms"] = timed_ms(floor_step)
        row["floor_graph_ms"] = graph_ms(floor_step)
        for name, fn in implementations(block).items():
            if name not in ("peft", "ours"):
                try:
                    row[f"{name}_max_rel_err"] = rel_errors(m, X, dYs, block, fn)["max_rel_err"]
                except Exception as err:
                    row[f"{name}_error"] = repr(err)
                    continue
            figures = measure(fn, m, X, dYs, row)
            row.update({f"{name}_{key}": value for key, value in figures.items()})
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
    peft, _, k = BLOCKS[block]
    X = torch.randn(1, tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        dYs = [torch.randn_like(o) for o in _outs(peft(m, X))]
    for name, fn in implementations(block).items():
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
    """``--profile BLOCK``: the kernel tables; otherwise ``tools/bench.py --suite micro``."""
    import bench  # here, not above: bench imports this module

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Other options: those of tools/bench.py.")  # fmt: skip
    ap.add_argument("--profile", choices=list(BLOCKS), help="profile one block and exit")
    ap.add_argument("--nf4", action="store_true", help="with --profile: an NF4 base")
    args, rest = ap.parse_known_args()
    options = bench.parse_args(["--suite", "micro", *rest])
    if args.profile:
        profile(args.profile, options.ranks[0], args.nf4, options.tokens)
    else:
        bench.run(options)


if __name__ == "__main__":
    main()
