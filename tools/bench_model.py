"""Whole-model LoRA training-step benchmark: PEFT vs lk-patch vs Axolotl's and Unsloth's kernels.

A Llama-3-8B-shaped model with random weights (hidden 4096, intermediate 14336, 32 heads,
8 KV heads, vocab 128256), LoRA r=16 on all seven projections with non-zero B, one sequence
of 8192 tokens, bf16. Two configurations: 8 layers without checkpointing, and 32 layers with
(non-reentrant) gradient checkpointing. A step is forward, backward and AdamW on the LoRA
weights. Each variant then runs again with Liger's RoPE, RMSNorm and fused linear
cross-entropy (not its SwiGLU, which the LoRA MLP replaces), as users run them.

This is the measuring half of ``tools/bench.py --suite model``, which runs it, writes the JSON
and the chart; run directly, it is that suite (``--layers 8 32 --steps 5``; ``--smoke``: a
tiny model on the CPU, to check the script itself).
"""

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import lk_autograd
from _peers import axolotl_lora, unsloth_lora
from lk_patch import patch_model, unpatch_model

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256}  # fmt: skip
SMOKE = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 256}  # fmt: skip
PEERS = {"Axolotl": axolotl_lora, "Unsloth": unsloth_lora}  # loaders of the peers' kernels
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KEPT_KERNELS = 40  # per profiled variant: the kernels (CPU ops on the CPU) with the most time


@dataclass
class Result:
    layers: int
    checkpointing: bool
    variant: str
    tokens_per_s: float
    peak_gib: float | None  # None on the CPU
    loss: float
    # With --profile: {kernel: [calls, ms]} over one more step, its KEPT_KERNELS largest
    kernels: dict[str, list] | None = field(default=None, repr=False)


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


def time_steps(
    model, steps: int, tokens: int, profile: bool = False
) -> tuple[float, float | None, float, dict[str, list] | None]:
    """Return (tokens/s, peak GiB, first loss, kernels) over ``steps`` timed steps after 2
    warm-ups; with ``profile``, ``kernels`` is ``profiled_step``'s table of one more step.

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
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    kernels = profiled_step(step, cuda) if profile else None
    return tokens * steps / elapsed, peak, first_loss, kernels


def profiled_step(step, cuda: bool) -> dict[str, list]:
    """``{name: [calls, ms]}`` of one ``step()`` under ``torch.profiler``: the GPU kernels'
    own time on CUDA (the CPU ops' on the CPU), the ``KEPT_KERNELS`` largest. Where a step's
    time goes, kernel by kernel, to set one variant beside another."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    totals: dict[str, list] = {}
    for event in prof.key_averages():  # by name; kernels are events of the CUDA device type
        on_gpu = event.device_type == torch.autograd.DeviceType.CUDA
        if on_gpu == cuda:
            us = event.self_device_time_total if on_gpu else event.self_cpu_time_total
            totals[event.key] = [event.count, us / 1e3]
    if not totals:  # said, not raised: the timed figures of the run stand without it
        print("profiled step: torch.profiler recorded no kernels of that device", flush=True)
    largest = sorted(totals.items(), key=lambda item: -item[1][1])[:KEPT_KERNELS]
    return {name: [calls, round(ms, 4)] for name, (calls, ms) in largest}


@contextlib.contextmanager
def lk_kernels(model) -> Iterator[None]:
    patch_model(model)
    try:
        yield
    finally:
        unpatch_model(model)


@contextlib.contextmanager
def peer_kernels(model, kernels) -> Iterator[None]:
    """Axolotl's or Unsloth's LoRA Functions (``kernels``: its module, the same entry points),
    bound through lk-patch's rewriting of the same statements.

    Their own patchers need their whole packages (configs, trainers, model rewrites); their
    Functions need only the kernels. lk-patch resolves ``lk_autograd.apply_lora_*`` when it
    binds, so pointing those names at the peer's entry points binds the peer's Functions
    instead. ``inplace=False``: Unsloth's backward otherwise writes dX into X's storage
    (Axolotl ignores the flag).
    """
    names = ("apply_lora_mlp", "apply_lora_qkv", "apply_lora_o")
    saved = {name: getattr(lk_autograd, name) for name in names}
    lk_autograd.apply_lora_mlp = lambda mlp, X, activation, **_: kernels.apply_lora_mlp_swiglu(
        mlp, X, inplace=False
    )
    lk_autograd.apply_lora_qkv = lambda attn, X, **_: kernels.apply_lora_qkv(attn, X, inplace=False)
    lk_autograd.apply_lora_o = lambda attn, X, **_: kernels.apply_lora_o(attn, X)
    try:
        patch_model(model)
    finally:
        for name, fn in saved.items():
            setattr(lk_autograd, name, fn)
    try:
        yield
    finally:
        unpatch_model(model)


def unavailable(device: str) -> dict[str, str]:
    """The variants ``run_config`` cannot run on ``device``, each with the reason."""
    reasons = {}
    for name, load in PEERS.items():
        if load() is None:
            reasons[name] = f"{name.lower()} not importable"
    if device != "cuda":
        reasons["+ Liger"] = "Liger's kernels are Triton: CUDA only"
    elif find_spec("liger_kernel") is None:
        reasons["+ Liger"] = "liger-kernel not importable"
    return reasons


def apply_liger(model) -> None:
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    apply_liger_kernel_to_llama(
        rope=True, rms_norm=True, fused_linear_cross_entropy=True, swiglu=False,
        model=model.get_base_model(),
    )  # fmt: skip


def run_config(args: argparse.Namespace, layers: int) -> list[Result]:
    """Every available variant on one configuration; ``args`` has dims, device, tokens, steps."""
    checkpointing = layers > 8
    model = build(args.dims, layers, checkpointing, args.device, args.tokens)
    skipped = unavailable(args.device)
    variants = {"PEFT": contextlib.nullcontext, "lk-patch": lambda: lk_kernels(model)}
    for name, load in PEERS.items():
        if name not in skipped:
            variants[name] = functools.partial(peer_kernels, model, load())
    # Every variant starts from the same LoRA weights, so the losses are comparable too.
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    results = []
    for suffix in ("", " + Liger"):
        if suffix:
            if "+ Liger" in skipped:
                break
            apply_liger(model)
        for name, context in variants.items():
            with context():
                tps, peak, loss, kernels = time_steps(
                    model, args.steps, args.tokens, getattr(args, "profile", False)
                )
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in initial:
                        p.copy_(initial[n])
            results.append(Result(layers, checkpointing, name + suffix, tps, peak, loss, kernels))
            print(results[-1], flush=True)
    return results


def main() -> None:
    """``tools/bench.py --suite model`` with the same options."""
    import bench  # here, not above: bench imports this module

    bench.main(["--suite", "model", *sys.argv[1:]])


if __name__ == "__main__":
    main()
