"""Scratch (sixteenth session): registers of the gated forward kernel with down's
``XA_d = h A_d^T`` partials in its epilogue, compiled for sm_90a on a CPU (no GPU needed).

Variant: after each ``[BM, BN/2]`` half of ``h`` is stored, ``part[pn, rows, :] +=
h_half @ A_d[:, cols_half]^T`` (two dots into one ``[BM, R]`` float32 accumulator, stored once
per tile through pointers). ``--bench`` (GPU, not run yet) times it with ``part.sum(0)`` for
the sum, against the shipped kernel + cuBLAS; ``--check`` runs it under TRITON_INTERPRET=1 on
float32 CPU tensors; no argument compiles both for sm_90a and prints registers and spills.
"""

import pathlib
import re
import subprocess
import tempfile

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from lk_autograd._gemm import _ACTIVATION, _TILE, _add_lora, _gated_kernel, _halves, _tile
from lk_triton._kernels import activation_and_derivative


@triton.jit
def _gated_xad_kernel(
    x_desc, wg_desc, wu_desc, K, xag_desc, bg_desc, sg, xau_desc, bu_desc, su,
    e_desc, g_desc, h_desc, ad_desc, part_ptr, M, N,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    N_SM: tl.constexpr, SCALE: tl.constexpr, ACTIVATION: tl.constexpr, R: tl.constexpr,
):  # fmt: skip
    n_m = tl.cdiv(M, BM)
    n_in_group = GROUP_M * tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), n_m * tl.cdiv(N, BN), N_SM, flatten=True):
        pm, pn = _tile(tile, n_in_group, n_m, GROUP_M)
        om, on = pm * BM, pn * BN
        acc_e = tl.zeros((BM, BN), dtype=tl.float32)
        acc_g = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(tl.cdiv(K, BK)):
            x = x_desc.load([om, k * BK])
            acc_e = tl.dot(x, wg_desc.load([on, k * BK]).T, acc_e)
            acc_g = tl.dot(x, wu_desc.load([on, k * BK]).T, acc_g)
        e = _add_lora(acc_e, xag_desc, bg_desc, sg, om, on, False, SCALE).to(e_desc.dtype)
        e_desc.store([om, on], e)
        g = _add_lora(acc_g, xau_desc, bu_desc, su, om, on, False, SCALE).to(g_desc.dtype)
        g_desc.store([om, on], g)
        e0, e1 = _halves(e, BM, BN)
        g0, g1 = _halves(g, BM, BN)
        xad = tl.zeros((BM, R), dtype=tl.float32)
        a0, _ = activation_and_derivative(e0.to(tl.float32), ACTIVATION)
        h0 = (a0 * g0.to(tl.float32)).to(h_desc.dtype)
        h_desc.store([om, on], h0)
        xad = tl.dot(h0, ad_desc.load([0, on]).T, xad)
        a1, _ = activation_and_derivative(e1.to(tl.float32), ACTIVATION)
        h1 = (a1 * g1.to(tl.float32)).to(h_desc.dtype)
        h_desc.store([om, on + BN // 2], h1)
        xad = tl.dot(h1, ad_desc.load([0, on + BN // 2]).T, xad)
        rows = om + tl.arange(0, BM)
        rank = tl.arange(0, R)
        out = (pn * M + rows).to(tl.int64)[:, None] * R + rank[None, :]
        tl.store(part_ptr + out, xad, mask=(rows < M)[:, None])


class _Sm90Driver:
    def get_current_device(self):
        return "sm_90 scratch"

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


def _usage(ptx: str) -> str:
    ptxas = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/ptxas-blackwell"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True).stderr  # fmt: skip
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    return f"regs {regs.group(1) if regs else '?'} spill stores {spills}"


def main() -> None:
    from triton.runtime import driver

    driver.set_active(_Sm90Driver())
    M, K, N, r = 1024, 512, 1024, 16
    BM, BN, BK = _TILE
    BN //= 2
    bf = torch.bfloat16
    X, Wg, Wu = torch.empty(M, K, dtype=bf), *(torch.empty(N, K, dtype=bf) for _ in range(2))
    XAg, XAu = torch.empty(M, r, dtype=bf), torch.empty(M, r, dtype=bf)
    Bg, Bu = torch.empty(N, r, dtype=bf), torch.empty(N, r, dtype=bf)
    e, g, h = (torch.empty(M, N, dtype=bf) for _ in range(3))
    Ad = torch.empty(r, N, dtype=bf)
    part = torch.empty(N // BN, M, r, dtype=torch.float32)
    D = TensorDescriptor.from_tensor
    common = [D(X, [BM, BK]), D(Wg, [BN, BK]), D(Wu, [BN, BK]), K, D(XAg, [BM, 16]),
              D(Bg, [BN, 16]), 2.0, D(XAu, [BM, 16]), D(Bu, [BN, 16]), 2.0,
              D(e, [BM, BN]), D(g, [BM, BN]), D(h, [BM, BN // 2])]  # fmt: skip
    opts = {"BM": BM, "BN": BN, "BK": BK, "GROUP_M": 8, "N_SM": 132, "SCALE": True,
            "ACTIVATION": _ACTIVATION["silu"], "num_stages": 3, "num_warps": 8}  # fmt: skip
    k = _gated_kernel.warmup(*common, M, N, grid=(132,), **opts)
    print(f"shipped _gated_kernel          {_usage(k.asm['ptx'])} shared {k.metadata.shared}")
    k = _gated_xad_kernel.warmup(*common, D(Ad, [16, BN // 2]), part, M, N, R=16, grid=(132,),
                                 **opts)  # fmt: skip
    print(f"+ XA_d partials in epilogue    {_usage(k.asm['ptx'])} shared {k.metadata.shared}")


def check() -> None:
    """Under TRITON_INTERPRET=1 on float32 CPU tensors (the interpreter's way for these
    kernels): e, g, h as the shipped kernel's, and sum over column tiles of the partials =
    h A_d^T."""
    torch.manual_seed(0)
    M, K, N, r = 300, 128, 384, 16
    BM, BN, BK = _TILE
    BN //= 2
    f = torch.float32
    X, Wg, Wu = torch.randn(M, K), torch.randn(N, K), torch.randn(N, K)
    XAg, XAu, Bg, Bu = torch.randn(M, r), torch.randn(M, r), torch.randn(N, r), torch.randn(N, r)
    Ad = torch.randn(r, N)
    D = TensorDescriptor.from_tensor
    outs = []
    for variant in (False, True):
        e, g, h = (torch.empty(M, N, dtype=f) for _ in range(3))
        part = torch.zeros(triton.cdiv(N, BN), M, r, dtype=f)
        args = [D(X, [BM, BK]), D(Wg, [BN, BK]), D(Wu, [BN, BK]), K, D(XAg, [BM, 16]),
                D(Bg, [BN, 16]), 2.0, D(XAu, [BM, 16]), D(Bu, [BN, 16]), 0.5,
                D(e, [BM, BN]), D(g, [BM, BN]), D(h, [BM, BN // 2])]  # fmt: skip
        opts = {"BM": BM, "BN": BN, "BK": BK, "GROUP_M": 8, "N_SM": 3, "SCALE": True,
                "ACTIVATION": _ACTIVATION["silu"]}  # fmt: skip
        if variant:
            _gated_xad_kernel[(3,)](*args, D(Ad, [16, BN // 2]), part, M, N, R=16, **opts)
        else:
            _gated_kernel[(3,)](*args, M, N, **opts)
        outs.append((e, g, h, part))
    (e0, g0, h0, _), (e1, g1, h1, part) = outs
    print("e, g, h identical:", all(torch.equal(a, b) for a, b in ((e0, e1), (g0, g1), (h0, h1))))
    ref = h0.double() @ Ad.double().T
    err = (part.double().sum(0) - ref).abs().max() / ref.abs().max()
    print(f"XA_d from the partials against float64: {err:.2e}")


def bench() -> None:
    """On the GPU (not run yet): the shipped gated kernel + cuBLAS ``h A_d^T`` against the
    variant + the sum of its partials, 8192 x 4096 -> 14336, r = 16 (CUDA-graph replay)."""
    from triton.testing import do_bench_cudagraph

    torch.manual_seed(0)
    M, K, N, r = 8192, 4096, 14336, 16
    BM, BN, BK = _TILE
    BN //= 2
    bf, dev = torch.bfloat16, "cuda"
    X = torch.randn(M, K, device=dev, dtype=bf)
    Wg, Wu = (torch.randn(N, K, device=dev, dtype=bf) * 0.02 for _ in range(2))
    XAg, XAu = (torch.randn(M, r, device=dev, dtype=bf) for _ in range(2))
    Bg, Bu = (torch.randn(N, r, device=dev, dtype=bf) * 0.02 for _ in range(2))
    Ad = torch.randn(r, N, device=dev, dtype=bf) * 0.02
    e, g, h = (torch.empty(M, N, device=dev, dtype=bf) for _ in range(3))
    part = torch.empty(triton.cdiv(N, BN), M, r, device=dev, dtype=torch.float32)
    D = TensorDescriptor.from_tensor
    args = [D(X, [BM, BK]), D(Wg, [BN, BK]), D(Wu, [BN, BK]), K, D(XAg, [BM, 16]),
            D(Bg, [BN, 16]), 2.0, D(XAu, [BM, 16]), D(Bu, [BN, 16]), 2.0,
            D(e, [BM, BN]), D(g, [BM, BN]), D(h, [BM, BN // 2])]  # fmt: skip
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    opts = {"BM": BM, "BN": BN, "BK": BK, "GROUP_M": 8, "N_SM": n_sm, "SCALE": True,
            "ACTIVATION": _ACTIVATION["silu"], "num_stages": 3, "num_warps": 8}  # fmt: skip
    ad_desc = D(Ad, [16, BN // 2])

    def shipped():
        _gated_kernel[(n_sm,)](*args, M, N, **opts)
        return h @ Ad.T

    def variant():
        _gated_xad_kernel[(n_sm,)](*args, ad_desc, part, M, N, R=16, **opts)
        return part.sum(0).to(bf)

    ref = shipped().double()
    err = (variant().double() - ref).abs().max() / ref.abs().max()
    print(f"{torch.cuda.get_device_name()}: XA_d error against the shipped pair {err:.2e}")
    for _ in range(3):  # alternated rounds (the H100's clock drifts)
        print(
            f"shipped + cuBLAS {do_bench_cudagraph(shipped) * 1e3:8.1f} us   "
            f"variant + sum {do_bench_cudagraph(variant) * 1e3:8.1f} us"
        )


if __name__ == "__main__":
    import sys

    {"--check": check, "--bench": bench}.get(sys.argv[-1], main)()
