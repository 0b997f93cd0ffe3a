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

from lk_autograd._gemm import (
    _ACTIVATION,
    _TILE,
    _add_lora,
    _gated_kernel,
    _halves,
    _launch_options,
    _tile,
    gated_lora_matmul,
)
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


def _inputs(M: int, K: int, N: int, r: int, make) -> dict:
    """The gated kernel's inputs and down's ``A_d``; ``make(*shape)`` draws or allocates one."""
    names_shapes = {"X": (M, K), "Wg": (N, K), "Wu": (N, K), "XAg": (M, r), "XAu": (M, r),
                    "Bg": (N, r), "Bu": (N, r), "Ad": (r, N)}  # fmt: skip
    return {name: make(*shape) for name, shape in names_shapes.items()}


def _variant_args(t: dict, ss: tuple[float, float], r: int) -> tuple[list, list, dict]:
    """``_gated_xad_kernel``'s arguments in ``_gemm.gated_lora_matmul``'s layout (its tile,
    options and descriptors), plus ``A_d``'s descriptor and the partials: ``(args, outputs,
    options)``, outputs ``[e, g, h, part]``."""
    X = t["X"]
    M, N = X.shape[0], t["Wg"].shape[0]
    BM, BN, BK = _TILE
    BN //= 2
    e, g, h = (X.new_empty(M, N) for _ in range(3))
    part = X.new_zeros(triton.cdiv(N, BN), M, r, dtype=torch.float32)
    D = TensorDescriptor.from_tensor
    args = [D(X, [BM, BK]), D(t["Wg"], [BN, BK]), D(t["Wu"], [BN, BK]), X.shape[1],
            D(t["XAg"], [BM, 16]), D(t["Bg"], [BN, 16]), ss[0],
            D(t["XAu"], [BM, 16]), D(t["Bu"], [BN, 16]), ss[1],
            D(e, [BM, BN]), D(g, [BM, BN]), D(h, [BM, BN // 2]),
            D(t["Ad"], [16, BN // 2]), part, M, N]  # fmt: skip
    options = {**_launch_options(X), "BN": BN, "SCALE": True, "ACTIVATION": _ACTIVATION["silu"],
               "R": 16}  # fmt: skip
    return args, [e, g, h, part], options


def _shipped(t: dict, ss: tuple[float, float]):
    """The shipped kernel through its launcher: ``(e, g, h)``."""
    return gated_lora_matmul(t["X"], [t["Wg"], t["Wu"]], [t["XAg"], t["XAu"]],
                             [t["Bg"], t["Bu"]], ss, "silu")  # fmt: skip


def main() -> None:
    from triton.runtime import driver

    driver.set_active(_Sm90Driver())
    t = _inputs(1024, 512, 1024, 16, lambda *shape: torch.empty(*shape, dtype=torch.bfloat16))
    args, _, options = _variant_args(t, (2.0, 2.0), 16)
    options["N_SM"] = 132  # an H100's (the options read 3 for CPU tensors)
    shipped_args = args[:13] + args[15:]  # the variant's, less A_d's descriptor and the partials
    shipped_options = {k: v for k, v in options.items() if k != "R"}
    for name, kernel, a, o in (
        ("shipped _gated_kernel", _gated_kernel, shipped_args, shipped_options),
        ("+ XA_d partials in epilogue", _gated_xad_kernel, args, options),
    ):
        k = kernel.warmup(*a, grid=(132,), **o)
        print(f"{name:30s} {_usage(k.asm['ptx'])} shared {k.metadata.shared}")


def check() -> None:
    """Under TRITON_INTERPRET=1 on float32 CPU tensors (the interpreter's way for these
    kernels): e, g, h as the shipped kernel's, and sum over column tiles of the partials =
    h A_d^T."""
    torch.manual_seed(0)
    r, ss = 16, (2.0, 0.5)
    t = _inputs(300, 128, 384, r, torch.randn)
    e0, g0, h0 = _shipped(t, ss)
    args, (e1, g1, h1, part), options = _variant_args(t, ss, r)
    _gated_xad_kernel[(options["N_SM"],)](*args, **options)
    print("e, g, h identical:", all(torch.equal(a, b) for a, b in ((e0, e1), (g0, g1), (h0, h1))))
    ref = h0.double() @ t["Ad"].double().T
    err = (part.double().sum(0) - ref).abs().max() / ref.abs().max()
    print(f"XA_d from the partials against float64: {err:.2e}")


def bench() -> None:
    """On the GPU (not run yet): the shipped gated kernel + cuBLAS ``h A_d^T`` against the
    variant + the sum of its partials, 8192 x 4096 -> 14336, r = 16 (CUDA-graph replay)."""
    from triton.testing import do_bench_cudagraph

    torch.manual_seed(0)
    r, ss, bf = 16, (2.0, 2.0), torch.bfloat16
    t = _inputs(8192, 4096, 14336, r, lambda *shape: torch.randn(*shape, device="cuda", dtype=bf))
    for name in ("Wg", "Wu", "Bg", "Bu", "Ad"):
        t[name] *= 0.02
    args, (_, _, _, part), options = _variant_args(t, ss, r)

    def shipped():
        return _shipped(t, ss)[2] @ t["Ad"].T

    def variant():
        _gated_xad_kernel[(options["N_SM"],)](*args, **options)
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
