"""Twenty-fourth session: where down_backward's time over the bare GEMM goes (SiLU, 8192
tokens, r = 16). CUDA-graph replays, ROUNDS alternated rounds: cuBLAS dY W, the whole
down_backward, its kernel alone (gated_grads) and its cuBLAS dA alone (two layouts); then each
replayed for SECONDS under nvidia-smi's clock and power readings, to see whether the fused
kernel runs at a lower SM clock than the bare GEMM (power). Run like epilogue_variants.py.
"""

import statistics
import subprocess
import time

import torch
from bench_lora_blocks import alternated_ms, capture_graph
from epilogue_variants import data

from lk_autograd import _down_backward as db

ROUNDS, SECONDS = 5, 4.0


def sustained(graph: torch.cuda.CUDAGraph) -> str:
    """Replays for SECONDS while nvidia-smi reads the SM clock and power every 50 ms; the
    medians of the readings after the first second."""
    smi = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,clocks_event_reasons.active",
         "--format=csv,noheader,nounits", "-lms", "50"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    start = time.time()
    n = 0
    while time.time() - start < SECONDS:
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
        n += 20
    rate = (time.time() - start) / n * 1e3
    smi.terminate()
    lines = [line.split(", ") for line in smi.communicate()[0].splitlines() if line]
    late = lines[len(lines) // 4 :]
    clock = statistics.median(float(x[0]) for x in late)
    power = statistics.median(float(x[1]) for x in late)
    reasons = sorted({x[2] for x in late})
    return f"{rate:.3f} ms/replay, SM {clock:.0f} MHz, {power:.0f} W, reasons {reasons}"


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    dY, W, dXA, A, e, g = data(8192)
    _, _, h = db.gated_grads(dY, W, dXA, A, e, g, "silu", False)
    steps = {
        "cuBLAS dY W": lambda: dY @ W,
        "down_backward": lambda: db.down_backward(dY, W, dXA, A, e, g, "silu", False),
        "gated_grads (kernel)": lambda: db.gated_grads(dY, W, dXA, A, e, g, "silu", False),
        "dA = dXA^T h": lambda: dXA.t() @ h,
        "dA = (h^T dXA)^T": lambda: (h.t() @ dXA).t(),
    }
    graphs = {k: capture_graph(f) for k, f in steps.items()}
    times = alternated_ms(graphs, ROUNDS)
    for k, ts in times.items():
        print(f"{k:<22} {statistics.median(ts):.3f} ms  " + " ".join(f"{t:.3f}" for t in ts))
    for k in ("cuBLAS dY W", "gated_grads (kernel)", "cuBLAS dY W", "gated_grads (kernel)"):
        print(f"{k:<22} sustained: {sustained(graphs[k])}", flush=True)


if __name__ == "__main__":
    main()
