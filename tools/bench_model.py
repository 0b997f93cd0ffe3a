"""Whole-model LoRA training-step benchmark: PEFT vs lk-patch vs Axolotl's kernels.

A Llama-3-8B-shaped model with random weights (hidden 4096, intermediate 14336, 32 heads,
8 KV heads, vocab 128256), LoRA r=16 on all seven projections with non-zero B, one sequence
of 8192 tokens, bf16. Two configurations: 8 layers without checkpointing, and 32 layers with
(non-reentrant) gradient checkpointing. A step is forward, backward and AdamW on the LoRA
weights. Each variant then runs again with Liger's RoPE, RMSNorm and fused linear
cross-entropy (not its SwiGLU, which the LoRA MLP replaces), as users run them.

Usage on a CUDA machine: ``python tools/bench_model.py [--layers 8 32] [--steps 5]``;
``--smoke`` runs a tiny model on the CPU to check the script itself.
Writes ``$OUT/bench_model.json`` when ``OUT`` is set.
"""

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM

import lk_autograd
from _peers import axolotl_lora
from lk_patch import patch_model, unpatch_model

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256}  # fmt: skip
SMOKE = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 256}  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Result:
    layers: int
    checkpointing: bool
    variant: str
    tokens_per_s: float
    peak_gib: float
    loss: float


def build(dims: dict, layers: int, checkpointing: bool, device: str, tokens: int):
    config = LlamaConfig(
        **dims, num_hidden_layers=layers, max_position_embeddings=tokens,
        attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(model, lora)


def time_steps(model, steps: int, tokens: int) -> tuple[float, float, float]:
    """Return (tokens/s, peak GiB, first loss) over ``steps`` timed steps after 2 warm-ups.

    The first warm-up loss comes before any optimizer step, so it compares across variants.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    device = params[0].device
    generator = torch.Generator().manual_seed(0)  # the same tokens for every variant
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator).to(device)
    cuda = device.type == "cuda"

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    first_loss = step()
    step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return tokens * steps / elapsed, peak, first_loss


@contextlib.contextmanager
def lk_kernels(model) -> Iterator[None]:
    patch_model(model)
    try:
        yield
    finally:
        unpatch_model(model)


@contextlib.contextmanager
def axolotl_kernels(model, axolotl) -> Iterator[None]:
    """Axolotl's LoRA Functions, bound through lk-patch's rewriting of the same statements.

    Axolotl's own patcher needs its whole package (configs, trainers); its Functions need
    only the kernels folder. lk-patch resolves ``lk_autograd.apply_lora_*`` when it binds,
    so pointing those names at Axolotl's entry points binds Axolotl's Functions instead.
    """
    names = ("apply_lora_mlp", "apply_lora_qkv", "apply_lora_o")
    saved = {name: getattr(lk_autograd, name) for name in names}
    lk_autograd.apply_lora_mlp = lambda mlp, X, activation, **_: axolotl.apply_lora_mlp_swiglu(
        mlp, X
    )
    lk_autograd.apply_lora_qkv = lambda attn, X, **_: axolotl.apply_lora_qkv(attn, X)
    lk_autograd.apply_lora_o = lambda attn, X, **_: axolotl.apply_lora_o(attn, X)
    try:
        patch_model(model)
    finally:
        for name, fn in saved.items():
            setattr(lk_autograd, name, fn)
    try:
        yield
    finally:
        unpatch_model(model)


def apply_liger(model) -> bool:
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError:
        print("liger-kernel not importable: Liger variants skipped")
        return False
    apply_liger_kernel_to_llama(
        rope=True, rms_norm=True, fused_linear_cross_entropy=True, swiglu=False,
        model=model.get_base_model(),
    )  # fmt: skip
    return True


def run_config(args: argparse.Namespace, layers: int) -> list[Result]:
    checkpointing = layers > 8
    model = build(args.dims, layers, checkpointing, args.device, args.tokens)
    axolotl = axolotl_lora()
    variants = {"PEFT": contextlib.nullcontext, "lk-patch": lambda: lk_kernels(model)}
    if axolotl is not None:
        variants["Axolotl"] = lambda: axolotl_kernels(model, axolotl)
    # Every variant starts from the same LoRA weights, so the losses are comparable too.
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    results = []
    for suffix in ("", " + Liger"):
        if suffix and (args.device != "cuda" or not apply_liger(model)):
            break  # Liger's kernels are Triton: GPU only
        for name, context in variants.items():
            with context():
                tps, peak, loss = time_steps(model, args.steps, args.tokens)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in initial:
                        p.copy_(initial[n])
            results.append(Result(layers, checkpointing, name + suffix, tps, peak, loss))
            print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, 1 step")
    args = parser.parse_args()
    args.dims, args.device, args.tokens = LLAMA3_8B, "cuda", 8192
    if args.smoke:
        args.dims, args.device, args.tokens, args.steps = SMOKE, "cpu", 64, 1
    results = []
    for layers in args.layers:
        results += run_config(args, layers)
        if args.device == "cuda":
            torch.cuda.empty_cache()

    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU smoke run"
    table = Table(title=f"LoRA r=16 training step, {args.tokens} tokens, {where}")
    for col in ("layers", "ckpt", "variant", "tok/s", "vs PEFT", "peak GiB", "first loss"):
        table.add_column(col)
    for r in results:
        baseline = "PEFT + Liger" if r.variant.endswith(" + Liger") else "PEFT"
        key = (r.layers, baseline)
        base = next(b.tokens_per_s for b in results if (b.layers, b.variant) == key)
        table.add_row(
            str(r.layers), str(r.checkpointing), r.variant, f"{r.tokens_per_s:,.0f}",
            f"{r.tokens_per_s / base:.3f}x", f"{r.peak_gib:.1f}", f"{r.loss:.4f}",
        )  # fmt: skip
    Console(width=120).print(table)
    if out := os.environ.get("OUT"):
        with open(os.path.join(out, "bench_model.json"), "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)


if __name__ == "__main__":
    main()
