"""Twenty-fourth session: down_backward's epilogue subtile rows (SM) and prefetch depth.

For each (SM, PREFETCH) the kernel's outputs are checked against the separate route (8192 and
8191 tokens, SiLU, r = 16), then every variant's CUDA graph is replayed in turn over ROUNDS
alternated rounds with the bare cuBLAS dY W; medians printed last. Run on an sm_90 GPU with
tools/ and the workspace on PYTHONPATH (tools/gpu_session.sh sets it).
A record: it ran against the kernel as it was then (28c80cf: _PREFETCH; removed once timed no
faster).
"""

import statistics
import sys

import torch
from bench_lora_blocks import alternated_ms, capture_graph

from lk_autograd import _down_backward as db
from lk_autograd import _linear as L
from lk_autograd._activation_backward import activation_backward_with_dA

D, INTER, R = 4096, 14336, 16
VARIANTS = [(32, 1), (32, 2), (16, 1), (16, 2), (8, 2)]
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def data(tokens: int) -> list[torch.Tensor]:
    torch.manual_seed(tokens)
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    dY, dXA = torch.randn(tokens, D, **bf16), torch.randn(tokens, R, **bf16)
    W, A = torch.randn(D, INTER, **bf16) * 0.02, torch.randn(R, INTER, **bf16) * 0.02
    e, g = torch.randn(tokens, INTER, **bf16), torch.randn(tokens, INTER, **bf16)
    return [dY, W, dXA, A, e, g]


def set_variant(sm: int, prefetch: int) -> None:
    db._SUBTILE, db._PREFETCH = (sm, 64), prefetch


def check(sm: int, prefetch: int) -> str:
    worst = 0.0
    for tokens in (8192, 8191):
        dY, W, dXA, A, e, g = data(tokens)
        dh = L.input_grad(None, (dXA, A), [(dY, W, None)], torch.bfloat16)
        ref = activation_backward_with_dA(dh, e, g, dXA, "silu", False)
        set_variant(sm, prefetch)
        out = db.down_backward(dY, W, dXA, A, e, g, "silu", False)
        for a, b in zip(out, ref, strict=True):
            rel = ((a.double() - b.double()).norm() / b.double().norm()).item()
            worst = max(worst, rel)
    return f"{worst:.2e}"


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__)
    checks = {v: check(*v) for v in VARIANTS}
    dY, W, dXA, A, e, g = data(8192)
    graphs = {"cuBLAS dY W": capture_graph(lambda: dY @ W)}
    for v in VARIANTS:
        set_variant(*v)
        graphs[v] = capture_graph(lambda: db.down_backward(dY, W, dXA, A, e, g, "silu", False))
    times = alternated_ms(graphs, ROUNDS)
    print(f"{'variant':<16} {'max rel diff':>12} {'median ms':>10}  rounds")
    for k, ts in times.items():
        name = k if isinstance(k, str) else f"SM={k[0]} P={k[1]}"
        diff = checks.get(k, "")
        print(
            f"{name:<16} {diff:>12} {statistics.median(ts):>10.3f}  "
            + " ".join(f"{t:.3f}" for t in ts)
        )


if __name__ == "__main__":
    main()
