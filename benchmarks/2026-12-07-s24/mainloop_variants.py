"""Twenty-fourth session, call 3: down_backward's mainloop: K step (BK), stages, the
grouped raster's GROUP_M and the epilogue stores' L2 eviction policy. For each variant,
gated_grads' de and dg are checked against the separate route (8192 and 8191 tokens, SiLU,
r = 16); then the kernel's CUDA graph is replayed in turn with every other variant's and the
bare cuBLAS dY W, over ROUNDS alternated rounds.
A record: it ran against the kernel as it was then (5eb9908: _STORE_EVICTION; removed once timed no
faster).
"""

import statistics
import sys

import torch
from bench_lora_blocks import alternated_ms, capture_graph
from epilogue_variants import data

from lk_autograd import _down_backward as db
from lk_autograd import _linear as L
from lk_autograd._activation_backward import activation_backward_with_dA

# (BK, stages, GROUP_M, the stores' L2 eviction policy); the first is the shipped configuration.
VARIANTS = [
    (64, 3, 8, ""), (32, 6, 8, ""), (32, 5, 8, ""), (64, 3, 16, ""), (64, 3, 8, "evict_first"),
]  # fmt: skip
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def set_variant(bk: int, stages: int, group: int, store_eviction: str) -> None:
    db._TILE, db._STAGES, db._GROUP_M = (128, 256, bk), stages, group
    db._STORE_EVICTION = store_eviction


def check(variant: tuple[int, int, int, str]) -> str:
    worst = 0.0
    for tokens in (8192, 8191):
        dY, W, dXA, A, e, g = data(tokens)
        dh = L.input_grad(None, (dXA, A), [(dY, W, None)], torch.bfloat16)
        ref = activation_backward_with_dA(dh, e, g, dXA, "silu", False)[:2]
        set_variant(*variant)
        out = db.gated_grads(dY, W, dXA, A, e, g, "silu", False)[:2]  # de, dg
        for a, b in zip(out, ref, strict=True):
            worst = max(worst, ((a.double() - b.double()).norm() / b.double().norm()).item())
    return f"{worst:.2e}"


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    checks = {v: check(v) for v in VARIANTS}
    print("checked", checks, flush=True)
    dY, W, dXA, A, e, g = data(8192)
    graphs = {"cuBLAS dY W": capture_graph(lambda: dY @ W)}
    for v in VARIANTS:
        set_variant(*v)
        graphs[v] = capture_graph(lambda: db.gated_grads(dY, W, dXA, A, e, g, "silu", False))
    times = alternated_ms(graphs, ROUNDS)
    print(f"{'BK, stages, GROUP_M, stores':<34} {'max rel diff':>12} {'median ms':>10}  rounds")
    for k, ts in times.items():
        print(
            f"{k!s:<34} {checks.get(k, ''):>12} {statistics.median(ts):>10.3f}  "
            + " ".join(f"{t:.3f}" for t in ts)
        )


if __name__ == "__main__":
    main()
