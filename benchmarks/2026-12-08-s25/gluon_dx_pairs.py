"""Twenty-fifth session, for the next GPU call: the warp-specialized input gradient
(``lk_autograd._dx_gemm.input_grad_matmul``, written from ``gluon_dx.py`` with up to three base
pairs, off by default) against ``_gemm.lora_matmul(..., w_kn=True, more=...)``, which ships,
and cuBLAS's chain: ``dX = dY_0 W_0 + dY_1 W_1 + dY_2 W_2 + dXA A`` at the blocks' shapes
(Llama-3-8B, 8192 tokens, r = 16 per projection): o's ``dX`` (``K`` = 4096), q, k and v's
(``K`` = 4096, 1024, 1024; ``dXA`` the three adapters' ``[M, 48]``) and gate and up's
(``K`` = 14336 twice; ``[M, 32]``).

*Prediction* (from ``gluon_dx.py``'s single pair, 9-34 us under ``_gemm``, plus the split MMA
partitions): ~1-2% under ``_gemm`` at every shape, 15-25 us at q/k/v's, 30-60 at gate/up's.
If so, switch it on (``_dx_gemm._enabled``) after the GPU tests pass.

Usage (sm_90 GPU, PYTHONPATH as tools/gpu_session.sh sets it): ``python3 gluon_dx_pairs.py``
checks each route against float64, prints whether Gluon and ``_gemm`` give the same bits, and
times cuBLAS's chain, Gluon and ``_gemm`` (5 alternated rounds of CUDA-graph replays).
"""

import statistics

import torch

from lk_autograd import _dx_gemm, _gemm


def _operands(device, ks, r, M=8192, N=4096):
    bf16 = {"device": device, "dtype": torch.bfloat16}
    pairs = [(torch.randn(M, k, **bf16), torch.randn(k, N, **bf16) * 0.02) for k in ks]
    return pairs, torch.randn(M, r, **bf16), torch.randn(r, N, **bf16) * 0.02


def shape_row(name: str, ks: tuple[int, ...], r: int) -> str:
    from bench_lora_blocks import alternated_ms, capture_graph

    torch.manual_seed(sum(ks))
    pairs, dXA, A = _operands("cuda", ks, r)
    ref = dXA.double() @ A.double()
    for dY, W in pairs:
        ref += dY.double() @ W.double()

    def cublas():
        dX = dXA @ A
        for dY, W in pairs:
            dX.addmm_(dY, W)
        return dX

    (dY0, W0), *more = pairs
    steps = {
        "cuBLAS chain": cublas,
        "Gluon": lambda: _dx_gemm.input_grad_matmul(pairs, dXA, A),
        "_gemm": lambda: _gemm.lora_matmul(dY0, W0, dXA, A, 1.0, True, more=more),
    }
    outs = {k: f() for k, f in steps.items()}
    errs = ", ".join(
        f"{k} {((o.double() - ref).norm() / ref.norm()).item():.2e}" for k, o in outs.items()
    )
    times = alternated_ms({k: capture_graph(f) for k, f in steps.items()}, 5)
    ms = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in times.items())
    same = torch.equal(outs["Gluon"], outs["_gemm"])
    return f"{name} K = {ks}, r = {r}: rel err vs float64 {errs}; same bits {same}; ms {ms}"


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    print(shape_row("o", (4096,), 16), flush=True)
    print(shape_row("qkv", (4096, 1024, 1024), 48), flush=True)
    print(shape_row("gate/up", (14336, 14336), 32), flush=True)


if __name__ == "__main__":
    main()
