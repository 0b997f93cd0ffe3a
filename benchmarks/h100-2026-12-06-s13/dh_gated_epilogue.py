"""Scratch (thirteenth session): the MLP's dh GEMM with the gated backward in its epilogue, on
smaller non-persistent tiles so that two or more programs share an SM and one's epilogue
overlaps another's K loop. A/B against the shipped pair (persistent lora_matmul, then the
gated backward kernel), at 8192 x 14336 x 4096, r = 16. Prints a table last.

Run from the repository root with the packages' src folders and tools/ on PYTHONPATH (as
tools/gpu_session.sh sets it), on the GPU machine; output: the .txt beside this file."""

import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from lk_autograd._gemm import _add_lora, _tile, lora_matmul
from lk_triton import _gated
from lk_triton._kernels import activation_and_derivative


@triton.jit
def _epilogue(
    dh,
    om,
    on,
    e_ptr,
    g_ptr,
    h_ptr,
    de_ptr,
    dg_ptr,
    M,
    N,
    BM: tl.constexpr,
    BW: tl.constexpr,
    ACT: tl.constexpr,
    GATED: tl.constexpr,
):
    rows = om + tl.arange(0, BM)
    cols = on + tl.arange(0, BW)
    offs = rows[:, None] * N + cols[None, :]
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    dh = dh.to(h_ptr.dtype.element_ty)
    if GATED:
        dh = dh.to(tl.float32)
        e = tl.load(e_ptr + offs, mask=mask).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
        a, da = activation_and_derivative(e, ACT)
        tl.store(h_ptr + offs, (a * g).to(h_ptr.dtype.element_ty), mask=mask)
        tl.store(de_ptr + offs, (dh * g * da).to(h_ptr.dtype.element_ty), mask=mask)
        tl.store(dg_ptr + offs, (dh * a).to(h_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(h_ptr + offs, dh, mask=mask)


@triton.jit
def _halves(t, BM: tl.constexpr, BN: tl.constexpr):
    return tl.split(tl.permute(tl.reshape(t, (BM, 2, BN // 2)), (0, 2, 1)))


@triton.jit
def dh_gated_kernel(
    dy_desc,
    w_desc,
    xa_desc,
    a_desc,
    e_ptr,
    g_ptr,
    h_ptr,
    de_ptr,
    dg_ptr,
    M,
    N,
    K,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP_M: tl.constexpr,
    ACT: tl.constexpr,
    GATED: tl.constexpr,
    SPLIT: tl.constexpr,
):
    n_m = tl.cdiv(M, BM)
    pm, pn = _tile(tl.program_id(0), GROUP_M * tl.cdiv(N, BN), n_m, GROUP_M)
    om, on = pm * BM, pn * BN
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(tl.cdiv(K, BK)):
        acc = tl.dot(dy_desc.load([om, k * BK]), w_desc.load([k * BK, on]), acc)
    acc = _add_lora(acc, xa_desc, a_desc, 1.0, om, on, True, False)
    if SPLIT:
        left, right = _halves(acc, BM, BN)
        _epilogue(left, om, on, e_ptr, g_ptr, h_ptr, de_ptr, dg_ptr, M, N, BM, BN // 2, ACT, GATED)
        _epilogue(
            right,
            om,
            on + BN // 2,
            e_ptr,
            g_ptr,
            h_ptr,
            de_ptr,
            dg_ptr,
            M,
            N,
            BM,
            BN // 2,
            ACT,
            GATED,
        )
    else:
        _epilogue(acc, om, on, e_ptr, g_ptr, h_ptr, de_ptr, dg_ptr, M, N, BM, BN, ACT, GATED)


def dh_gated(dY, W, dXA, A, e, g, h, de, dg, cfg, gated=True):
    BM, BN, BK, stages, warps, split = cfg
    M, K = dY.shape
    N = W.shape[1]
    R = 16
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    return dh_gated_kernel[grid](
        TensorDescriptor.from_tensor(dY, [BM, BK]),
        TensorDescriptor.from_tensor(W, [BK, BN]),
        TensorDescriptor.from_tensor(dXA, [BM, R]),
        TensorDescriptor.from_tensor(A, [R, BN]),
        e,
        g,
        h,
        de,
        dg,
        M,
        N,
        K,
        BM=BM,
        BN=BN,
        BK=BK,
        GROUP_M=8,
        ACT=0,
        GATED=gated,
        SPLIT=split,
        num_stages=stages,
        num_warps=warps,
    )


def ms(fn):
    return triton.testing.do_bench(fn, rep=300, return_mode="median")


def main():
    torch.manual_seed(0)
    dev, bf = "cuda", torch.bfloat16
    M, K, N, r = 8192, 4096, 14336, 16
    dY = torch.randn(M, K, device=dev, dtype=bf)
    W = (torch.randn(K, N, device=dev) * 0.02).to(bf)
    dXA = (torch.randn(M, r, device=dev) * 0.5).to(bf)
    A = (torch.randn(r, N, device=dev) * 0.02).to(bf)
    e, g = torch.randn(M, N, device=dev, dtype=bf), torch.randn(M, N, device=dev, dtype=bf)
    h, de, dg = (torch.empty(M, N, device=dev, dtype=bf) for _ in range(3))
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)

    def shipped():
        dh = lora_matmul(dY, W, dXA, A, 1.0, w_kn=True)
        _gated._launch_backward(dh, e, g, dh, de, dg, "silu", True)
        return dh

    ref = [t.clone() for t in (shipped(), de, dg)]
    rows = [("cuBLAS dY @ W (bare)", ms(lambda: dY @ W), "")]
    rows.append(
        ("shipped dh GEMM alone", ms(lambda: lora_matmul(dY, W, dXA, A, 1.0, w_kn=True)), "")
    )
    rows.append(("shipped dh + gated backward", ms(shipped), "0"))
    configs = [
        (128, 128, 64, 3, 8, 0),
        (128, 128, 64, 3, 4, 0),
        (128, 128, 64, 4, 8, 0),
        (128, 128, 64, 2, 8, 0),
        (128, 128, 64, 3, 8, 1),
        (128, 256, 64, 3, 8, 1),
        (64, 256, 64, 3, 4, 0),
        (64, 128, 64, 4, 4, 0),
        (128, 64, 64, 4, 4, 0),
        (256, 128, 64, 3, 8, 1),
    ]
    for cfg in configs:
        try:
            k = dh_gated(dY, W, dXA, A, e, g, h, de, dg, cfg)
            torch.cuda.synchronize()
            diff = max(
                (a.float() - b.float()).abs().max().item()
                for a, b in zip((h, de, dg), ref, strict=True)
            )
            t = ms(lambda cfg=cfg: dh_gated(dY, W, dXA, A, e, g, h, de, dg, cfg))
            t_plain = ms(lambda cfg=cfg: dh_gated(dY, W, dXA, A, e, g, h, de, dg, cfg, gated=False))
            rows.append(
                (
                    f"fused {cfg} smem {k.metadata.shared} regs {k.n_regs}",
                    t,
                    f"{diff:.1e}; plain-epilogue {t_plain:.3f}",
                )
            )
        except Exception as err:  # a tile that does not fit
            rows.append((f"fused {cfg}", float("nan"), repr(err)[:120]))
        print(rows[-1], flush=True)
    floor = rows[0][1]
    print(f"\n{'variant':<60} {'ms':>7} {'x bare':>7}  max |diff| vs shipped")
    for name, t, note in rows:
        print(f"{name:<60} {t:7.3f} {t / floor:7.3f}  {note}")


if __name__ == "__main__":
    sys.exit(main())
