"""The Gluon kernels' SASS, compiled for sm_90 on the CPU: dumped to a JSON file, or compared with
an earlier dump, specialization by specialization.

How a change to a shared building block of ``down_backward``, ``_ws_gemm`` and ``_ws_gated``
(``_shared_state``, ``_mma_half``, an epilogue helper) is shown to leave every kernel as it
was, GPU-run or not: dump before the change, compare after. ``identical`` means the same
instructions at the same addresses, so the same bits and the same time as before.

Specializations: ``down_backward`` and ``_ws_gated`` for SiLU, GELU and GELU-tanh, whole and
partial row blocks, bf16 and fp16; ``_ws_gemm`` for both weight layouts, one and three base
pairs, bf16 and fp16, and its group for two and three outputs, bf16 and fp16.

Usage: ``uv run --with triton==3.6.0 tools/sass_dump.py dump|compare FILE [--ir ttgir]`` (the
GPU machine's Triton; no GPU needed, ``tools/_sm90.py``). ``--ir ttgir`` compares the TTGIR
without source locations instead: where the SASS differs only in scheduling, an identical
TTGIR says the computation did not change.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from functools import partial
from unittest import mock

import torch
from _sm90 import sass, sm90_driver

from lk_autograd import _down_backward, _ws_gated, _ws_gemm

ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
DTYPES = (torch.bfloat16, torch.float16)
K, N, R = 192, 512, 16  # the code depends on their divisibility by 16, not on their size


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


def _down_backward_call(activation: str, tokens: int, dtype: torch.dtype) -> None:
    shapes = ((tokens, K), (K, N), (tokens, R), (R, N), (tokens, N), (tokens, N))
    _down_backward.gated_grads(*(_randn(*s, dtype=dtype) for s in shapes), activation, True)


def _ws_gated_call(activation: str, tokens: int, dtype: torch.dtype) -> None:
    X = _randn(tokens, K, dtype=dtype)
    Ws = [_randn(N, K, dtype=dtype) for _ in range(2)]
    XAs = [_randn(tokens, R, dtype=dtype) for _ in range(2)]
    Us = [_randn(N, R, dtype=dtype) for _ in range(2)]
    _ws_gated.ws_gated_lora_matmul(X, Ws, XAs, Us, (2.0, 0.5), activation)


def _ws_gemm_call(w_kn: bool, pairs: int, dtype: torch.dtype) -> None:
    def weight(k: int) -> torch.Tensor:
        return _randn(k, N, dtype=dtype) if w_kn else _randn(N, k, dtype=dtype)

    M = 256
    more = [(_randn(M, 64, dtype=dtype), weight(64)) for _ in range(pairs - 1)]
    U = _randn(R, N, dtype=dtype) if w_kn else _randn(N, R, dtype=dtype)
    XA = _randn(M, R, dtype=dtype)
    _ws_gemm.ws_lora_matmul(_randn(M, K, dtype=dtype), weight(K), XA, U, 2.0, w_kn, more)


def _ws_group_call(outputs: int, dtype: torch.dtype) -> None:
    M, Ns = 256, (N, 128, 128)[:outputs]
    Ws = [_randn(n, K, dtype=dtype) for n in Ns]
    XAs = _randn(M, outputs * R, dtype=dtype).split(R, dim=1)
    Us = [_randn(n, R, dtype=dtype) for n in Ns]
    _ws_gemm.ws_lora_matmul_group(_randn(M, K, dtype=dtype), Ws, XAs, Us, (2.0,) * outputs)


def specializations() -> Iterator[tuple[str, object, Callable[[], None]]]:
    """``(name, module, call)``: each call launches one specialization of the module's kernel."""
    for dtype in DTYPES:
        dt = str(dtype).removeprefix("torch.")
        for activation in ACTIVATIONS:
            for tokens in (256, 300):
                case = (activation, tokens, dtype)
                yield (
                    f"down_backward-{activation}-{tokens}-{dt}",
                    _down_backward,
                    partial(_down_backward_call, *case),
                )
                yield (
                    f"ws_gated-{activation}-{tokens}-{dt}",
                    _ws_gated,
                    partial(_ws_gated_call, *case),
                )
        for w_kn in (False, True):
            for pairs in (1, 3):
                name = f"ws_gemm-{'XW' if w_kn else 'XWt'}-{pairs}-{dt}"
                yield name, _ws_gemm, partial(_ws_gemm_call, w_kn, pairs, dtype)
        for outputs in (2, 3):
            yield f"ws_gemm_group-{outputs}-{dt}", _ws_gemm, partial(_ws_group_call, outputs, dtype)


def kernel_sass(module: object, call: Callable[[], None], ir: str = "sass") -> list[str]:
    """The instructions of the kernel ``call`` launches, compiled and not run: its SASS, or
    (``ir="ttgir"``) its TTGIR without source locations, the same for code that only moved
    between helpers."""
    compiled = []

    def compile_only(kernel, programs, args, options, device) -> None:
        compiled.append(kernel.warmup(*args, grid=(programs,), **options))

    with mock.patch.object(module, "launch", compile_only):
        call()
    if ir == "ttgir":
        ttgir = compiled[0].asm["ttgir"].splitlines()
        return [_without_locations(line) for line in ttgir if not line.startswith("#loc")]
    return [text for _, text in sass(compiled[0])]


def _without_locations(line: str) -> str:
    """``line`` without its `` loc(...)`` annotations (balanced parentheses: named and
    call-site locations nest)."""
    out, i = [], 0
    while (start := line.find(" loc(", i)) >= 0:
        out.append(line[i:start])
        depth, j = 0, start + len(" loc")
        while j < len(line):
            depth += {"(": 1, ")": -1}.get(line[j], 0)
            j += 1
            if depth == 0:
                break
        i = j
    return "".join(out) + line[i:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["dump", "compare"])
    parser.add_argument("file")
    parser.add_argument("--ir", choices=["sass", "ttgir"], default="sass",
                        help="what to dump: the SASS, or the TTGIR without locations")  # fmt: skip
    args = parser.parse_args()
    with sm90_driver():
        dumps = {name: kernel_sass(module, call, args.ir)
                 for name, module, call in specializations()}  # fmt: skip
    if args.mode == "dump":
        with open(args.file, "w") as f:
            json.dump(dumps, f)
        print(f"{len(dumps)} specializations written to {args.file}")
        return
    with open(args.file) as f:
        before = json.load(f)
    for name, verdict in verdicts(before, dumps).items():
        print(f"{name:36} {verdict}")


def verdicts(before: dict[str, list[str]], now: dict[str, list[str]]) -> dict[str, str]:
    """Per specialization in ``now``: ``identical``, ``differs (...)`` or ``absent before``."""
    out = {}
    for name, lines in now.items():
        if name not in before:
            out[name] = "absent before"
        elif before[name] == lines:
            out[name] = "identical"
        else:
            out[name] = f"differs ({len(before[name])} -> {len(lines)} instructions)"
    return out


if __name__ == "__main__":
    main()
