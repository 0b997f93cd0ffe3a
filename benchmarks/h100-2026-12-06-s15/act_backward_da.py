"""Scratch (fifteenth session): the MLP's activation backward with down's ``dA`` in the same
pass, and nothing else. The fourteenth session fused three rank-r products (gate's and up's
``dXA``, their ``dB``, and down's ``dA``) into the activation backward and lost to register
pressure (``s14/gated_grads_anatomy.py``). Down's ``dA = s dXA_d^T h`` alone is one
``[r, BN]`` float32 accumulator, 16 registers a thread at four warps, and it is the only
reader of ``h``: fused, the backward no longer writes ``h`` (six passes of ``[M, I]`` -> five)
and cuBLAS no longer reads it (one pass fewer again).

Shipped pair: lk_triton's flat backward (``dh, e, g -> h, de, dg``) then cuBLAS ``dXA^T h``.
Fused: persistent programs over (column block, row chunk) units; each loads ``[BM, BN]`` tiles
of ``dh``, ``e``, ``g``, stores ``de``, ``dg`` and accumulates ``dXA[rows]^T h`` (the computed
``h`` as the second ``tl.dot`` operand: one layout, see s14), then stores its ``[r, BN]``
float32 partial; ``torch.sum`` over the chunks, ``s`` and the rounding to bf16 follow.

Prints registers and spills of every configuration, errors against float64 and the times
(CUDA-graph replay, us). Run from the repository root with the packages' src folders and
tools/ on PYTHONPATH, on the GPU machine; ``--compile-only`` on a CPU lists registers only.
"""

import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from lk_triton import _gated
from lk_triton._kernels import SILU, activation_and_derivative

M, N, R = 8192, 14336, 16
# (BM, BN, warps, stages, programs per SM (0: one program per unit), row chunks, TMA loads)
CONFIGS = [
    (32, 128, 4, 1, 0, 16, False), (32, 128, 4, 1, 4, 8, False), (32, 128, 4, 1, 0, 8, False),
    (16, 256, 4, 1, 0, 16, False), (32, 256, 8, 1, 0, 16, False), (64, 128, 8, 1, 0, 16, False),
    (32, 128, 4, 2, 0, 16, True), (32, 128, 4, 2, 4, 8, True), (64, 64, 4, 2, 0, 16, True),
    (64, 64, 4, 2, 4, 8, True), (32, 128, 4, 3, 3, 8, True), (64, 128, 4, 2, 2, 8, True),
]  # fmt: skip


@triton.jit
def _kernel(
    dh_desc, e_desc, g_desc, de_desc, dg_desc, dh_ptr, e_ptr, g_ptr, de_ptr, dg_ptr,
    dxa_ptr, part_ptr, M, N, ROWS, BLOCKS, UNITS, PROGRAMS,
    DA: tl.constexpr, TMA: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
):  # fmt: skip
    rank = tl.arange(0, R)
    for unit in tl.range(tl.program_id(0), UNITS, PROGRAMS):
        c, k = unit % BLOCKS, unit // BLOCKS
        on = c * BN
        cols = on + tl.arange(0, BN)
        acc = tl.zeros((R, BN), dtype=tl.float32)
        for i in tl.range(0, ROWS // BM):
            om = k * ROWS + i * BM
            rows = om + tl.arange(0, BM)
            offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
            if TMA:
                dh = dh_desc.load([om, on]).to(tl.float32)
                ev = e_desc.load([om, on]).to(tl.float32)
                gv = g_desc.load([om, on]).to(tl.float32)
            else:
                dh = tl.load(dh_ptr + offs).to(tl.float32)
                ev = tl.load(e_ptr + offs).to(tl.float32)
                gv = tl.load(g_ptr + offs).to(tl.float32)
            a, da = activation_and_derivative(ev, SILU)
            de = (dh * gv * da).to(tl.bfloat16)
            dg = (dh * a).to(tl.bfloat16)
            if TMA:
                de_desc.store([om, on], de)
                dg_desc.store([om, on], dg)
            else:
                tl.store(de_ptr + offs, de)
                tl.store(dg_ptr + offs, dg)
            if DA:
                h = (a * gv).to(tl.bfloat16)
                dxa_t = tl.load(dxa_ptr + rows.to(tl.int64)[None, :] * R + rank[:, None])
                acc = tl.dot(dxa_t, h, acc)
        if DA:
            out = (k * R + rank).to(tl.int64)[:, None] * N + cols[None, :]
            tl.store(part_ptr + out, acc)


def _args(bufs, cfg):
    BM, BN, warps, stages, per_sm, chunks, tma = cfg
    dh, e, g, de, dg, dxa = bufs
    descs = [TensorDescriptor.from_tensor(t, [BM, BN]) for t in (dh, e, g, de, dg)]
    if not tma:
        descs = [None] * 5
    part = torch.empty(chunks * R, N, device=dh.device, dtype=torch.float32)
    blocks = N // BN
    programs = per_sm * n_sm() or blocks * chunks
    args = [*descs, dh, e, g, de, dg, dxa, part, M, N, M // chunks, blocks, blocks * chunks,
            programs]  # fmt: skip
    opts = {"TMA": tma, "BM": BM, "BN": BN, "R": R, "num_warps": warps, "num_stages": stages}
    return args, opts, programs, part


def n_sm() -> int:
    if not torch.cuda.is_available():
        return 132  # an H100's, for --compile-only
    return torch.cuda.get_device_properties(0).multi_processor_count


def name(cfg) -> str:
    BM, BN, warps, stages, per_sm, chunks, tma = cfg
    return f"{BM}x{BN} w{warps} s{stages} {per_sm}/SM c{chunks} {'tma' if tma else 'ptr'}"


def _ptxas_usage(ptx: str) -> str:
    """ptxas's register and spill line for ``ptx`` (Triton 3.9's bundled Blackwell ptxas
    reads its PTX 9.x; its plain ptxas is too old)."""
    import pathlib
    import re
    import subprocess
    import tempfile

    ptxas = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/ptxas-blackwell"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True).stderr  # fmt: skip
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    return f"regs {regs.group(1) if regs else '?':>3s} spill stores {','.join(spills) or '?'}"


def compile_only() -> None:
    """Registers and spills of each configuration, compiled for sm_90 on a CPU."""
    from triton.runtime import driver

    sys.path.insert(0, ".")
    from tests.test_hopper_compile import _Sm90Driver

    driver.set_active(_Sm90Driver())
    bufs = [torch.empty(M, N, dtype=torch.bfloat16) for _ in range(5)]
    bufs.append(torch.empty(M, R, dtype=torch.bfloat16))
    for cfg in CONFIGS:
        for da in (False, True):
            args, opts, programs, _ = _args(bufs, cfg)
            k = _kernel.warmup(*args, DA=da, grid=(programs,), **opts)
            print(f"{name(cfg):32s} DA={da!s:5s} {_ptxas_usage(k.asm['ptx'])} "
                  f"shared {k.metadata.shared}")  # fmt: skip


def main() -> None:
    from bench_lora_blocks import graph_ms

    torch.manual_seed(0)
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    dh, e, g = (torch.randn(M, N, **bf) for _ in range(3))
    dxa = torch.randn(M, R, **bf)
    s = 2.0
    h_ref, de_ref, dg_ref = _gated.gated_backward(dh, e, g, "silu", inplace=False)
    dA_cublas = (dxa.t() @ h_ref) * s
    dA_exact = (dxa.double().t() @ h_ref.double()) * s
    scale = dA_exact.abs().max().item()
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}, {M} x {N}, r = {R}")
    cublas_err = (dA_cublas.double() - dA_exact).abs().max().item() / scale
    print(f"cuBLAS dA: max error / max |dA| = {cublas_err:.2e}")
    results = {}
    results["lk_triton backward (h too) + cuBLAS dA"] = graph_ms(
        lambda: dxa.t() @ _gated.gated_backward(dh, e, g, "silu", inplace=False)[0]
    )
    results["lk_triton backward (h too)"] = graph_ms(
        lambda: _gated.gated_backward(dh, e, g, "silu", inplace=False)
    )
    results["lk_triton backward, no h (5 passes)"] = graph_ms(
        lambda: _gated.gated_backward(dh, e, g, "silu", inplace=False, store_h=False)
    )
    results["cuBLAS dA alone"] = graph_ms(lambda: dxa.t() @ h_ref)
    for cfg in CONFIGS:
        de, dg = torch.empty_like(e), torch.empty_like(g)
        args, opts, programs, part = _args([dh, e, g, de, dg, dxa], cfg)
        try:
            compiled = _kernel[(programs,)](*args, DA=True, **opts)
        except Exception as exc:  # scratch: a config that cannot launch
            print(f"{name(cfg)}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        dA = (part.view(-1, R, N).sum(0) * s).to(torch.bfloat16)
        ok = torch.equal(de, de_ref) and torch.equal(dg, dg_ref)
        err = (dA.double() - dA_exact).abs().max().item() / scale
        print(f"{name(cfg):32s} regs {compiled.n_regs} spills {compiled.n_spills} "
              f"de/dg identical {ok} dA error {err:.2e}")  # fmt: skip
        for da in (False, True):

            def run(da=da, args=args, opts=opts, programs=programs, part=part):
                _kernel[(programs,)](*args, DA=da, **opts)
                if da:
                    (part.view(-1, R, N).sum(0) * s).to(torch.bfloat16)

            results[f"{name(cfg)} {'+ dA' if da else 'no dA'}"] = graph_ms(run)
    for label, ms in results.items():
        print(f"{label:44s} {ms * 1e3:8.1f} us")


if __name__ == "__main__":
    compile_only() if "--compile-only" in sys.argv else main()
