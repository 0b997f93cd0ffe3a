"""Benchmark lk-triton's gated activations against torch eager, torch.compile and Liger.

Usage: ``python tools/bench_activation.py [--rows 8192 --cols 14336]`` on a CUDA machine.

Every implementation is first checked against a float64 reference on the benchmark data,
then timed with ``triton.testing.do_bench`` (median). Achieved bandwidth counts the bytes
each implementation must move (reads + writes of its own inputs and outputs) and is
reported as a fraction of the device-to-device copy bandwidth measured in the same run.
Writes JSON to ``$OUT/bench_activation.json`` when ``OUT`` is set.
"""

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import triton
from rich.console import Console
from rich.table import Table

import lk_triton
from _peers import liger_swiglu
from lk_triton._reference import activation_derivative


@dataclass
class Row:
    name: str
    direction: str
    tensors_moved: int  # full-size tensors read plus written
    ms: float
    copy_fraction: float
    max_rel_err: float


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def bench(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def copy_bandwidth(numel: int, dtype: torch.dtype) -> tuple[float, float]:
    """Time a device-to-device copy; return (ms, bytes read + written per ms)."""
    src = torch.randn(numel, device="cuda", dtype=dtype)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return ms, 2 * numel * src.element_size() / ms


def reference(act, dh, gate, up):
    g = gate.double().requires_grad_()
    u = up.double().requires_grad_()
    h = act(g) * u
    h.backward(dh.double())
    return h.detach(), g.grad, u.grad


def candidates(kind: str):
    """name -> (forward(g, u) -> h, backward(dh, g, u) -> tuple with dgate, dup last, moved)."""
    if kind == "silu":
        act = F.silu
        ours_f, ours_b = lk_triton.swiglu_forward, lk_triton.swiglu_backward
    else:
        approx = "tanh" if kind == "gelu_tanh" else "none"
        act = lambda x: F.gelu(x, approximate=approx)  # noqa: E731
        ours_f = lambda g, u: lk_triton.geglu_forward(g, u, approx)  # noqa: E731
        ours_b = lambda dh, g, u: lk_triton.geglu_backward(dh, g, u, approx)  # noqa: E731
    op_b = torch.ops.lk_triton.gated_activation_backward

    def eager_b(dh, g, u):  # what autograd runs for act(g) * u
        g = g.detach().requires_grad_()
        u = u.detach().requires_grad_()
        return torch.autograd.grad(act(g) * u, (g, u), dh)

    def math_b(dh, g, u):  # our kernel's three outputs, as explicit math for torch.compile
        g32, u32, dh32 = g.float(), u.float(), dh.float()
        a = act(g32)
        da = activation_derivative(g32, kind)
        return (a * u32).to(g.dtype), (dh32 * u32 * da).to(g.dtype), (dh32 * a).to(g.dtype)

    out = {
        "lk_triton": (ours_f, ours_b, 6),
        "lk_triton op (no h)": (None, lambda dh, g, u: op_b(dh, g, u, kind), 5),
        "torch eager": (lambda g, u: act(g) * u, eager_b, 5),
        "torch.compile": (torch.compile(lambda g, u: act(g) * u), torch.compile(math_b), 6),
    }
    if kind == "silu" and (liger := liger_swiglu()):
        liger_forward, liger_backward = liger
        out["liger"] = (
            lambda g, u: liger_forward(g, u)[2],
            lambda dh, g, u: liger_backward(g, u, dh),  # in place: (dgate, dup) in (g, u)
            5,
        )
    return act, out


def run(rows: int, cols: int) -> list[Row]:
    dtype = torch.bfloat16
    torch.manual_seed(0)
    gate, up, dh = (torch.randn(rows, cols, device="cuda", dtype=dtype) for _ in range(3))
    tensor_bytes = gate.numel() * gate.element_size()

    copy_ms, copy_bw = copy_bandwidth(3 * gate.numel(), dtype)
    result = [Row("device copy", "-", 0, copy_ms, 1.0, 0.0)]

    for kind in ("silu", "gelu", "gelu_tanh"):
        act, impls = candidates(kind)
        ref_h, ref_dg, ref_du = reference(act, dh, gate, up)
        for name, (fwd, bwd, moved_bwd) in impls.items():
            if fwd is not None:
                err = rel_err(fwd(gate, up), ref_h)
                ms = bench(lambda fwd=fwd: fwd(gate, up))
                frac = 3 * tensor_bytes / ms / copy_bw
                result.append(Row(f"{name} ({kind})", "fwd", 3, ms, frac, err))
            # Backward implementations that work in place get fresh copies to check, and
            # are timed on scratch buffers (values drift, the work per element does not).
            outs = bwd(dh.clone(), gate.clone(), up.clone())
            err = max(rel_err(outs[-2], ref_dg), rel_err(outs[-1], ref_du))
            bufs = (dh.clone(), gate.clone(), up.clone())
            ms = bench(lambda bwd=bwd, bufs=bufs: bwd(*bufs))
            frac = moved_bwd * tensor_bytes / ms / copy_bw
            result.append(Row(f"{name} ({kind})", "bwd", moved_bwd, ms, frac, err))
            del outs, bufs
    return result


def sweep_launch_config(rows: int, cols: int) -> None:
    """Time the SwiGLU kernels under each (BLOCK, num_warps) to choose lk_triton's defaults."""
    from lk_triton import _gated

    gate, up, dh = (torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    default = (_gated._BLOCK, _gated._NUM_WARPS)
    for block, warps in [(1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16)]:
        _gated._BLOCK, _gated._NUM_WARPS = block, warps
        fwd = bench(lambda: lk_triton.swiglu_forward(gate, up))
        bwd = bench(lambda: lk_triton.swiglu_backward(dh, gate, up))
        print(f"BLOCK={block:5d} warps={warps:2d}: fwd {fwd:.3f} ms, bwd {bwd:.3f} ms")
    _gated._BLOCK, _gated._NUM_WARPS = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=14336)
    parser.add_argument("--sweep", action="store_true", help="also time block/warp choices")
    args = parser.parse_args()
    if args.sweep:
        sweep_launch_config(args.rows, args.cols)
    rows = run(args.rows, args.cols)

    env = (
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"{args.rows}x{args.cols} bf16"
    )
    table = Table(title=f"Gated activations: {env}")
    for col in ("implementation", "dir", "tensors", "ms", "of copy BW", "rel err"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.name, r.direction, str(r.tensors_moved), f"{r.ms:.3f}",
            f"{r.copy_fraction:.1%}", f"{r.max_rel_err:.1e}",
        )  # fmt: skip
    Console(width=120).print(table)
    if out := os.environ.get("OUT"):
        with open(os.path.join(out, "bench_activation.json"), "w") as f:
            json.dump({"env": env, "rows": [asdict(r) for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
