"""Scratch (12th session): tile sweep of lora_grads on the q+k+v group and the q-alone shape, and
cuBLAS times of QKV's skinny GEMMs (X A^T, dXA^T X, dXA A).

Run from the repository root with the packages' src folders and tools/ on PYTHONPATH (as
tools/gpu_session.sh sets it), on the GPU machine; output: the .txt beside this file."""

import itertools

import torch
from bench_lora_blocks import graph_ms
from bench_lora_grads import _cublas, _errors, operands

from lk_autograd import _lora_grads

real_launch = _lora_grads.launch
override = {}


def launch(kernel, grid, args, options, device):
    if kernel is _lora_grads._partials_kernel:
        options = {**options, **override}
    return real_launch(kernel, grid, args, options, device)


_lora_grads.launch = launch

M, r = 8192, 16
print(torch.cuda.get_device_name(), flush=True)
for Ns in [(4096, 1024, 1024)]:
    dYs, Bs, XAs = operands(M, Ns, r)
    refs = _cublas(*([t.double() for t in ts] for ts in (dYs, Bs, XAs)))
    base = graph_ms(lambda dYs=dYs, Bs=Bs, XAs=XAs: _cublas(dYs, Bs, XAs)) * 1e3
    print(f"N={Ns} cublas {base:.1f} us", flush=True)
    for BM, BN, st, w in itertools.product((32, 64, 128), (128, 256, 512), (2, 3, 4), (4, 8)):
        if BM * BN * 2 * st > 200_000 or (BM == 32 and BN < 256) or (BM == 128 and BN == 128):
            continue
        _lora_grads._TILE = (BM, BN)
        override.update(num_stages=st, num_warps=w)

        def fn(dYs=dYs, Bs=Bs, XAs=XAs):
            return _lora_grads.lora_grads(dYs, Bs, XAs, [2.0] * len(dYs))

        try:
            err = _errors(fn(), refs)
            us = graph_ms(fn) * 1e3
        except Exception as e:
            print(f"  BM={BM} BN={BN} st={st} w={w}: {type(e).__name__} {str(e)[:80]}", flush=True)
            continue
        print(f"  BM={BM:3d} BN={BN:3d} st={st} w={w}: {us:6.1f} us err {err:.1e}", flush=True)
    _lora_grads._TILE = (64, 512)
    override.clear()

bf = dict(device="cuda", dtype=torch.bfloat16)
X = torch.randn(M, 4096, **bf)
A = torch.randn(48, 4096, **bf)
dXA = torch.randn(M, 48, **bf)
As = list(A.split(16))
for name, fn in [
    ("XA = X A^T [8192x4096]x[4096x48]", lambda: X @ A.t()),
    ("dA = dXA^T X", lambda: dXA.t() @ X),
    ("dXA A [8192x48]x[48x4096]", lambda: dXA @ A),
    ("cat(As)", lambda: torch.cat(As)),
]:
    print(f"{name}: {graph_ms(fn) * 1e3:.1f} us", flush=True)
