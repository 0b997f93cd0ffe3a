"""Scratch (thirteenth session): our fused GEMM's tax over cuBLAS on the MLP's shapes, cuBLAS
and ours alternated (clock drift shows up in both), with a few tile variants of _gemm._TILE.

Run from the repository root with the packages' src folders and tools/ on PYTHONPATH (as
tools/gpu_session.sh sets it), on the GPU machine; output: the .txt beside this file."""

import torch
import triton

from lk_autograd import _gemm


def ms(fn):
    return triton.testing.do_bench(fn, rep=200, return_mode="median")


torch.manual_seed(0)
bf, dev = torch.bfloat16, "cuda"
M, d, I, r = 8192, 4096, 14336, 16
X = torch.randn(M, d, device=dev, dtype=bf)
Wg = (torch.randn(I, d, device=dev) * 0.02).to(bf)  # gate: X Wg^T   [M, I]
dY = torch.randn(M, d, device=dev, dtype=bf)
Wd = (torch.randn(d, I, device=dev) * 0.02).to(bf)  # dh = dY Wd     [M, I]
H = torch.randn(M, I, device=dev, dtype=bf)  # down: H Wd^T   [M, d]
XA, XAd = (torch.randn(M, r, device=dev) * 0.5).to(bf), (torch.randn(M, r, device=dev) * 0.5).to(bf)
Bg, Ad, Bd = ((torch.randn(*s, device=dev) * 0.02).to(bf) for s in ((I, r), (r, I), (d, r)))
cases = {
    "gate fwd X Wg^T": (
        lambda: X @ Wg.t(),
        lambda: _gemm.lora_matmul(X, Wg, XA, Bg, 2.0, w_kn=False),
    ),
    "dh = dY Wd": (lambda: dY @ Wd, lambda: _gemm.lora_matmul(dY, Wd, XAd, Ad, 1.0, w_kn=True)),
    "down fwd H Wd^T": (
        lambda: H @ Wd.t(),
        lambda: _gemm.lora_matmul(H, Wd, XAd, Bd, 2.0, w_kn=False),
    ),
}
tiles = [
    ((128, 256, 64), 3, 8),
    ((256, 128, 64), 3, 8),
    ((128, 256, 64), 4, 8),
    ((128, 128, 64), 4, 8),
    ((128, 256, 32), 5, 8),
]
default = (_gemm._TILE, _gemm._launch_options)
print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
for name, (cublas, ours) in cases.items():
    for tile, stages, warps in tiles:
        _gemm._TILE = tile

        def opts(X, _s=stages, _w=warps):
            o = default[1](X)
            o.update(num_stages=_s, num_warps=_w)
            return o

        _gemm._launch_options = opts
        try:
            ours()
            torch.cuda.synchronize()
            pairs = [(ms(cublas), ms(ours)) for _ in range(3)]
            ratios = " ".join(f"{o / c:.3f}" for c, o in pairs)
            print(
                f"{name:<18} tile {tile} st {stages} w {warps}: "
                f"cuBLAS {pairs[-1][0]:.3f} ms, ours/cuBLAS {ratios}",
                flush=True,
            )
        except Exception as err:
            print(f"{name:<18} tile {tile} st {stages} w {warps}: {repr(err)[:100]}", flush=True)
        _gemm._launch_options = default[1]
_gemm._TILE = default[0]
