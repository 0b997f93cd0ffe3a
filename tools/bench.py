"""The benchmark entry point: LoRA blocks (micro) and whole-model training steps (model).

    uv run tools/bench.py --suite micro|model|all [--ranks 8 16 64 128] [--layers 8 32]
        [--steps 5] [--tokens 8192] [--repeat N] [--fp32-adapters] [--out DIR] [--smoke]
    uv run tools/bench.py --chart bench-results/bench_micro.json   # re-render its PNG anywhere

micro (``bench_lora_blocks.py``, CUDA only): MLP, QKV and O forward+backward at Llama-3-8B
shapes, a bf16 and (when bitsandbytes imports) an NF4 base, each rank; time as a ratio to the
dense floor of the same run, held and peak activation memory, for PEFT, ours and the peers
that import. model (``bench_model.py``): a training step of 8 layers without checkpointing and
32 with, PEFT / lk-patch / Axolotl / Unsloth, each also with Liger. ``--smoke`` checks the
scripts: the model suite on a tiny CPU model, and the micro suite (CUDA only) at the first rank,
1024 tokens.

Each suite writes ``DIR/bench_<suite>.json`` (environment, rows, what was skipped and why) and,
when matplotlib imports, the chart ``DIR/bench_<suite>.png``; DIR is ``--out``, else ``$OUT``,
else ``bench-results/`` at the repository root. A short table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = ("torch", "triton", "transformers", "peft", "bitsandbytes", "liger-kernel",
                 "axolotl", "unsloth")  # fmt: skip
FLOOR, TARGET = 1.0, 1.08  # ratio-to-floor lines on the micro chart
SMOKE_MICRO_TOKENS = 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; exactly one of ``--suite`` and ``--chart``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("micro", "model", "all"))
    ap.add_argument("--chart", type=Path, metavar="FILE", help="render FILE's PNG and exit")
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 64, 128], help="micro")
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 32],
                    help="model; more than 8 layers: gradient checkpointing")  # fmt: skip
    ap.add_argument("--steps", type=int, default=5, help="model: timed steps")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="micro: each configuration N times, median ratios")  # fmt: skip
    ap.add_argument("--fp32-adapters", action="store_true",
                    help="micro: PEFT's default autocast_adapter_dtype=True")  # fmt: skip
    ap.add_argument("--no-fused-gemm", action="store_true",
                    help="ours on cuBLAS only (set_fused_gemm(False)), a control")  # fmt: skip
    ap.add_argument("--ws-gemm", action="store_true",
                    help="ours with the warp-specialized _ws_gemm (off by default)")  # fmt: skip
    ap.add_argument("--profile", action="store_true",
                    help="model: one more step per variant under torch.profiler, its kernels' "
                         "times in the JSON and a table")  # fmt: skip
    ap.add_argument("--out", type=Path, metavar="DIR")
    ap.add_argument("--smoke", action="store_true", help="check the scripts, quickly")
    args = ap.parse_args(argv)
    if (args.suite is None) == (args.chart is None):
        ap.error("give either --suite or --chart")
    return args


# torch and the suites' modules (with peft: ~20 s to import on a laptop) are imported where a
# suite runs, so that --chart needs only matplotlib and rich.


def environment() -> dict:
    """Hardware, the installed versions that matter, and the UTC date."""
    import torch

    cuda = torch.cuda.is_available()
    env = {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for name in DISTRIBUTIONS:
        with contextlib.suppress(PackageNotFoundError):  # absent: left out
            env[name] = version(name)
    return env


def run_micro(args: argparse.Namespace) -> dict | None:
    """Every block at every rank on each base; None when there is no CUDA."""
    import torch

    if not torch.cuda.is_available():
        print("micro suite: needs CUDA, skipped")
        return None
    from bench_lora_blocks import bench as bench_blocks
    from bench_lora_blocks import peer_blocks

    ranks, tokens = args.ranks, args.tokens
    if args.smoke:
        ranks, tokens = ranks[:1], SMOKE_MICRO_TOKENS
    skipped = dict(peer_blocks()[1])
    bases = [False]
    try:
        import bitsandbytes  # noqa: F401

        bases.append(True)
    except ImportError:
        skipped["nf4 base"] = "bitsandbytes not importable"
    rows = [row for nf4 in bases for r in ranks
            for row in median_rows([bench_blocks(r, nf4, args.fp32_adapters, tokens)
                                    for _ in range(args.repeat)])]  # fmt: skip
    return {"suite": "micro", "tokens": tokens, "smoke": args.smoke, "repeat": args.repeat,
            "fp32_adapters": args.fp32_adapters, "skipped": skipped, "rows": rows}  # fmt: skip


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per block from repeated runs of the same configuration: the median of each time
    (``*_ms``) and of each ratio to its own run's floor (``*_x``, every run's kept in
    ``*_x_runs``); memory and errors from the first run. Small blocks are host-bound on some
    machines, so single runs of them vary by tens of percent."""
    merged = []
    for rows in zip(*runs, strict=True):
        row = {**rows[0], "runs": len(rows)}
        for key in rows[0]:
            if key.endswith(("_ms", "_x")):
                values = [r[key] for r in rows if key in r]
                row[key] = statistics.median(values)
                if key.endswith("_x"):
                    row[f"{key}_runs"] = values
        merged.append(row)
    return merged


def run_model(args: argparse.Namespace) -> dict | None:
    """Every variant on every configuration; None without CUDA unless ``--smoke``."""
    import torch
    from bench_model import LLAMA3_8B, SMOKE, run_config, unavailable

    if args.smoke:
        options = argparse.Namespace(dims=SMOKE, device="cpu", tokens=64, steps=1,
                                     profile=args.profile)  # fmt: skip
    elif torch.cuda.is_available():
        options = argparse.Namespace(dims=LLAMA3_8B, device="cuda", tokens=args.tokens,
                                     steps=args.steps, profile=args.profile)  # fmt: skip
    else:
        print("model suite: needs CUDA (or --smoke for the tiny CPU model), skipped")
        return None
    rows = []
    for layers in args.layers:
        rows += [asdict(result) for result in run_config(options, layers)]
        if options.device == "cuda":
            torch.cuda.empty_cache()
    return {"suite": "model", "tokens": options.tokens, "smoke": args.smoke,
            "skipped": unavailable(options.device), "rows": rows}  # fmt: skip


def ratio_to_peft(row: dict, rows: list[dict]) -> float:
    """tokens/s over PEFT's on the same configuration (PEFT + Liger's for a Liger variant)."""
    baseline = "PEFT + Liger" if row["variant"].endswith(" + Liger") else "PEFT"
    key = (row["layers"], baseline)
    base = next(b["tokens_per_s"] for b in rows if (b["layers"], b["variant"]) == key)
    return row["tokens_per_s"] / base


def impls_in(rows: list[dict]) -> list[str]:
    """The implementations measured (``<impl>_peak_mib``) or failed (``<impl>_error``) in micro
    rows."""
    suffixes = ("_peak_mib", "_error")
    keys = (key for row in rows for key in row if key.endswith(suffixes))
    return list(dict.fromkeys(key.removesuffix("_peak_mib").removesuffix("_error") for key in keys))


def title(payload: dict) -> str:
    """What was measured, where, with which torch, when."""
    env = payload["env"]
    where = env["gpu"] or "CPU"
    if payload["suite"] == "micro":
        adapters = "fp32" if payload["fp32_adapters"] else "bf16"
        what = f"LoRA blocks fwd+bwd, {adapters} adapters"
        if payload.get("repeat", 1) > 1:
            what += f", median of {payload['repeat']} runs"
    else:
        what = "LoRA r=16 training step"
    what += " (smoke)" if payload["smoke"] else ""
    what += ", ours on cuBLAS only" if env.get("fused_gemm") is False else ""
    what += ", ours with _ws_gemm" if env.get("ws_gemm") else ""
    return f"{what}, {payload['tokens']} tokens, {where}, torch {env['torch']}, {env['date_utc']}"


def skipped_line(payload: dict) -> str:
    """``skipped: name (why), ...``, or empty."""
    skipped = payload["skipped"]
    return "skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()) if skipped else ""


def bar_positions(groups: list[int], index: int, count: int) -> tuple[list[float], float]:
    """x positions and width of bar ``index`` of ``count`` side by side in each group."""
    width = 0.8 / count
    return [g + (index - (count - 1) / 2) * width for g in groups], width


def micro_chart(payload: dict, figure: Figure) -> None:
    """Per block, grouped bars of the ratio to floor per (base, r), one per implementation; a
    black tick on each bar at its CUDA-graph ratio (the GPU's time alone), where measured."""
    rows = payload["rows"]
    impls = impls_in(rows)
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    for ax, block in zip(figure.subplots(len(blocks), 1, squeeze=False)[:, 0], blocks, strict=True):
        found = [r for r in rows if r["block"] == block]
        for i, impl in enumerate(impls):
            positions, width = bar_positions(list(range(len(found))), i, len(impls))
            ratios = [r.get(f"{impl}_x", float("nan")) for r in found]
            ax.bar(positions, ratios, width, label=impl)
            graph = [r.get(f"{impl}_graph_x", float("nan")) for r in found]
            label = "CUDA graph" if i == 0 and block == blocks[0] else None
            ax.hlines(graph, [p - width / 2 for p in positions], [p + width / 2 for p in positions],
                      colors="black", linewidth=2, label=label)  # fmt: skip
        ax.axhline(FLOOR, color="black", linestyle="--", linewidth=1, label="floor")
        ax.axhline(TARGET, color="red", linestyle=":", linewidth=1, label=f"target {TARGET}x")
        ax.set_xticks(range(len(found)), [f"{r['base']} r{r['r']}" for r in found])
        ax.set_ylabel(f"{block}: time / floor")
        ax.set_ylim(bottom=0.9)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")


def model_chart(payload: dict, figure: Figure) -> None:
    """Grouped bars: tokens/s per configuration, one bar per variant, labelled vs PEFT."""
    rows = payload["rows"]
    configs = list(dict.fromkeys((r["layers"], r["checkpointing"]) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    ax = figure.subplots()
    for i, variant in enumerate(variants):
        found = [r for r in rows if r["variant"] == variant]
        groups = [configs.index((r["layers"], r["checkpointing"])) for r in found]
        positions, width = bar_positions(groups, i, len(variants))
        bars = ax.bar(positions, [r["tokens_per_s"] for r in found], width, label=variant)
        labels = [f"{ratio_to_peft(r, rows):.2f}x" for r in found]
        ax.bar_label(bars, labels, fontsize="x-small", padding=2)
    names = [f"{layers} layers" + (", checkpointing" if ckpt else "") for layers, ckpt in configs]
    ax.set_xticks(range(len(configs)), names)
    ax.set_ylabel("tokens / s (label: vs PEFT, or vs PEFT + Liger)")
    ax.legend(fontsize="small")


def render_chart(json_path: Path) -> Path:
    """Draw the chart of a suite's JSON into the PNG beside it (needs matplotlib)."""
    from matplotlib.figure import Figure

    payload = json.loads(json_path.read_text())
    if payload["suite"] == "micro":
        blocks = len({r["block"] for r in payload["rows"]})
        size = (max(8.0, 0.9 * len(payload["rows"]) / blocks), 1.0 + 3.0 * blocks)
    else:
        size = (8.0, 5.5)
    figure = Figure(figsize=size, layout="constrained")
    (micro_chart if payload["suite"] == "micro" else model_chart)(payload, figure)
    figure.suptitle(title(payload) + "\n" + skipped_line(payload), fontsize="medium")
    png = json_path.with_suffix(".png")
    figure.savefig(png, dpi=120)
    return png


def micro_table(payload: dict) -> Table:
    """One line per (block, base, r): the floor, then each implementation's figures."""
    rows = payload["rows"]
    impls = impls_in(rows)
    caption = ("cells: time / floor, then replayed from a CUDA graph (g); held / peak activation"
               " MiB. " + skipped_line(payload))  # fmt: skip
    table = Table(title=title(payload), caption=caption)
    for column in ("block", "base", "r", "floor ms", *impls, "ours err"):
        table.add_column(column)
    for r in rows:
        cells = [micro_cell(r, i) for i in impls]
        table.add_row(r["block"], r["base"], str(r["r"]), f"{r['floor_ms']:.2f}", *cells,
                      f"{r['max_rel_err']:.1e}")  # fmt: skip
    return table


def micro_cell(row: dict, impl: str) -> str:
    """``1.11x g1.04x 512/804``: wall and graph ratios, held / peak MiB; or why it is missing."""
    if f"{impl}_x" not in row:
        return row.get(f"{impl}_error", "-")[:20]
    graph = f"g{row[f'{impl}_graph_x']:.2f}x" if f"{impl}_graph_x" in row else "g-"
    return (f"{row[f'{impl}_x']:.2f}x {graph} "
            f"{row[f'{impl}_held_mib']:.0f}/{row[f'{impl}_peak_mib']:.0f}")  # fmt: skip


def model_table(payload: dict) -> Table:
    """One line per (configuration, variant)."""
    rows = payload["rows"]
    table = Table(title=title(payload), caption=skipped_line(payload))
    for column in ("layers", "ckpt", "variant", "tok/s", "vs PEFT", "peak GiB", "first loss"):
        table.add_column(column)
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        table.add_row(
            str(r["layers"]), str(r["checkpointing"]), r["variant"], f"{r['tokens_per_s']:,.0f}",
            f"{ratio_to_peft(r, rows):.3f}x", peak, f"{r['loss']:.4f}",
        )  # fmt: skip
    return table


KERNEL_ROWS, KERNEL_NAME = 20, 70  # the kernel table: rows, and characters of each name


def kernel_tables(payload: dict) -> list[Table]:
    """With ``--profile``: per configuration, the kernels with the most time in any variant's
    profiled step, each variant's ms and calls for them (``-``: not among its largest)."""
    tables = []
    for layers in dict.fromkeys(r["layers"] for r in payload["rows"]):
        rows = [r for r in payload["rows"] if r["layers"] == layers and r.get("kernels")]
        if not rows:
            continue

        def most_ms(name: str, rows: list[dict] = rows) -> float:
            return max(r["kernels"].get(name, [0, 0.0])[1] for r in rows)

        names = sorted({n for r in rows for n in r["kernels"]}, key=most_ms, reverse=True)
        table = Table(title=f"{layers} layers: ms (calls) per step, one profiled step")
        table.add_column("kernel")
        for r in rows:
            table.add_column(r["variant"])
        for name in names[:KERNEL_ROWS]:
            cells = [f"{r['kernels'][name][1]:.2f} ({r['kernels'][name][0]})"
                     if name in r["kernels"] else "-" for r in rows]  # fmt: skip
            table.add_row(name[:KERNEL_NAME], *cells)
        tables.append(table)
    return tables


def output_dir(args: argparse.Namespace) -> Path:
    """``--out``, else ``$OUT``, else ``bench-results/`` at the repository root."""
    out = args.out or Path(os.environ.get("OUT") or ROOT / "bench-results")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save(payload: dict, out: Path) -> None:
    """Write ``bench_<suite>.json`` into ``out``, and its chart when matplotlib is here."""
    json_path = out / f"bench_{payload['suite']}.json"
    json_path.write_text(json.dumps(payload, indent=1))
    if find_spec("matplotlib") is None:
        print(f"wrote {json_path}; matplotlib not importable: render its chart on any machine "
              f"with `uv run tools/bench.py --chart {json_path}`")  # fmt: skip
    else:
        print(f"wrote {json_path} and {render_chart(json_path)}")


def run(args: argparse.Namespace) -> None:
    """Run the chosen suites, write each one's JSON and chart, then print the tables."""
    import lk_autograd
    from lk_autograd import _ws_gemm

    lk_autograd.set_fused_gemm(not args.no_fused_gemm)
    _ws_gemm.set_ws_gemm(args.ws_gemm)
    suites = ("micro", "model") if args.suite == "all" else (args.suite,)
    runners = {"micro": run_micro, "model": run_model}
    payloads = []
    for suite in suites:
        measured = runners[suite](args)
        if measured is not None:
            env = {**environment(), "fused_gemm": not args.no_fused_gemm,
                   "ws_gemm": args.ws_gemm}  # fmt: skip
            payloads.append({"env": env, **measured})
            save(payloads[-1], output_dir(args))
    for payload in payloads:
        print_table(payload)


def print_table(payload: dict) -> None:
    """The suite's short table, on the console."""
    micro = payload["suite"] == "micro"
    console = Console(width=160)
    console.print(micro_table(payload) if micro else model_table(payload))
    for table in [] if micro else kernel_tables(payload):
        console.print(table)


def main(argv: list[str] | None = None) -> None:
    """Run suites (``--suite``) or re-render one JSON's chart (``--chart``)."""
    args = parse_args(argv)
    if args.chart:
        print(f"wrote {render_chart(args.chart)}")
        print_table(json.loads(args.chart.read_text()))
    else:
        run(args)


if __name__ == "__main__":
    main()
