"""Check that lk_patch computes what PEFT computes, on a tiny random model of an architecture.

    uv run tools/verify_arch.py mistral
    uv run tools/verify_arch.py --all [--device cuda --dtype bfloat16]

For each architecture: build a 2-layer model with tiny sizes from its transformers config
class (no downloads; multimodal wrappers get tiny vision towers and are fed text), inject
LoRA on every projection with random non-zero A and B (``init_lora_weights=False``), then
compare the patched model's logits and every LoRA gradient with the unpatched PEFT model on
the same inputs. Two variants: plain LoRA, and LoRA with a bias on B and dropout 0.1.

Reference: the same model cast to float64, unpatched. Relative error ``||x - ref|| / ||ref||``
per tensor; bounds from DESIGN.md (float64 1e-10, float32 1e-5, bf16/fp16 2e-2), except that
a gradient is measured against at least ``GRAD_FLOOR`` = 1e-6 times the largest reference
gradient norm S: ``||x - ref|| / max(||ref||, 1e-6 * S)`` (numpy's atol/rtol, atol tied to
the gradients' scale). Some gradients are zero in theory: without RoPE, adding one vector to
every key leaves softmax unchanged, so the k_proj ``lora_B`` bias gets ``sum(dK) = 0``. Their
reference is rounding noise (eager attention takes the softmax in float32 even in a float64
model: 2e-7 to 3e-6 against S = 40-76 on opt, jamba, zamba2, nemotron_h...), and an error
relative to noise means nothing. Over all registered architectures that noise is at most
7e-8 S and the smallest real gradient 1.2e-5 S; 1e-6 sits in the gap. With the float64 bound,
any absolute error above 1e-16 S (the largest gradient's unit roundoff) still fails, so a
real bug cannot hide under the floor (tests/tools/test_verify_arch.py). In every dtype the
floor is also at least the dtype's unit roundoff over its bound (``grad_floor``: float64
1.1e-6, float32 6e-3, bfloat16 0.2, float16 2.4e-2), so that the absolute tolerance,
bound x floor x S, is never finer than one rounding of the largest gradient. (On CUDA in
float32, that k_proj bias gradient's noise, ~1e-8 S, read 1.9e-2 against 1e-6 S on jamba.) Below
float64 the bound is also allowed to be twice PEFT's own error against the same reference,
since a whole model accumulates more rounding than one block. Dropout masks match because
both runs start from the same seed and lk-autograd draws each projection's mask the way PEFT
does (``dropout`` applied to a tensor of the same shape and dtype, in PEFT's order); float64
is the default on the CPU so the comparison is tight enough to see a single wrong mask.

Below float64, a float64 model would draw other dropout masks than the model under test
(CUDA's dropout kernel maps random numbers to elements by dtype), so the float64 reference
replays the masks that PEFT's own run drew, recorded by forward hooks on its dropout modules.
The default on CUDA is float32, tight enough to check the real kernels on every
architecture; ``--dtype bfloat16`` checks what users train in.
The patched run must also have fused every group (no silent fallback), and unpatching must
give PEFT's result bit for bit. Exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoModelForImageTextToText
from transformers.models.auto import modeling_auto

import lk_patch

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
BOUNDS = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
# A gradient is compared against at least this fraction of the largest gradient's norm
# (float64; lower dtypes: ``grad_floor``).
GRAD_FLOOR = 1e-6


def grad_floor(dtype: torch.dtype) -> float:
    """``GRAD_FLOOR``, or the dtype's unit roundoff over its bound where that is larger."""
    return max(GRAD_FLOOR, torch.finfo(dtype).eps / 2 / BOUNDS[dtype])


TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
    "input_linear",  # GraniteMoeShared's fused gate/up projection, and its down projection
    "output_linear",
]
# Projections of other names, only where registered (PEFT refuses LoRA on a Mamba mixer's
# out_proj, so a global "out_proj" would break the hybrids).
OWN_TARGETS = {
    "phi": ("dense",),
    "lfm2": ("out_proj",),
    "lfm2_moe": ("out_proj",),
    "codegen": ("out_proj",),
    "gptj": ("out_proj",),
    "mpt": ("Wqkv", "out_proj"),
    "opt": ("out_proj",),
    **dict.fromkeys(
        ("bloom", "gpt_neox", "gpt_neox_japanese", "persimmon"), ("query_key_value", "dense")
    ),
}

# Tiny sizes, applied to every (sub-)config that has the field.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 128,
    "max_position_embeddings": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 48,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "sliding_window": 16,
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
    "vision_output_dim": 64,
    "projector_input_dim": 64,
    "projector_output_dim": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# Hybrid decoders: both tiny layers would be linear-attention / SSM / conv layers by default;
# one becomes a softmax-attention layer, so that the attention class is exercised too.
_LINEAR_THEN_FULL = ["linear_attention", "full_attention"]
# Gated-DeltaNet layers at tiny sizes (defaults are 16-32 heads of 128).
_TINY_DELTANET = {
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
}
_TINY_MAMBA2 = {"mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_state": 16, "mamba_chunk_size": 4}
# Per-architecture adjustments, each with its reason.
OVERRIDES = {
    # every layer would be MoE by default; one dense layer exercises Llama4TextMLP alone.
    "llama4_text": {"interleave_moe_layer_step": 2},
    # M-RoPE sections must add up to head_dim / 2.
    "qwen2_vl_text": {
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
        }
    },
    "qwen3_next": {"layer_types": _LINEAR_THEN_FULL, **_TINY_DELTANET},
    "qwen3_5_text": {"layer_types": _LINEAR_THEN_FULL, **_TINY_DELTANET},
    "qwen3_5_moe_text": {"layer_types": _LINEAR_THEN_FULL, **_TINY_DELTANET},
    "olmo_hybrid": {"layer_types": _LINEAR_THEN_FULL, **_TINY_DELTANET},
    # Mamba-2 mixers at tiny sizes too (the defaults have 128 heads and a 256-wide state; on
    # transformers 5.17 falcon_h1's asked for 16 GiB).
    "bamba": {"attn_layer_indices": [1], **_TINY_MAMBA2},
    "falcon_h1": {"mamba_d_ssm": 128, **_TINY_MAMBA2},
    "lfm3": {"layer_types": ["conv", "full_attention"]},
    # Layer 0: Mamba and a dense MLP; layer 1: attention and MoE.
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1},
    # Two hybrid layers: the shared attention block is tied across them (one fails to build),
    # and its gradients add up over both calls; zamba2 with its per-layer q/k/v adapters on.
    "zamba": {"layers_block_type": ["hybrid", "hybrid"]},
    "zamba2": {
        "layers_block_type": ["hybrid", "hybrid"],
        # the adapters add attention_hidden_size (2 * 64) to q, k and v: as many k/v heads
        # as q heads, of Zamba2's own head_dim (2 * 64 / 4)
        "num_key_value_heads": 4,
        "head_dim": 32,
        "use_shared_attention_adapter": True,
        "adapter_rank": 8,
        "mamba_d_state": 16,
    },
    "granitemoehybrid": {
        "layer_types": ["mamba", "attention"],
        "shared_intermediate_size": 48,
        **_TINY_MAMBA2,
    },
    "nemotron_h": {
        "layers_block_type": ["mamba", "attention", "mlp"],
        "mamba_num_heads": 8,
        "mamba_head_dim": 16,
        "ssm_state_size": 16,
        "n_groups": 1,
        "chunk_size": 4,
    },
    # OPT's residual dropout (0.1) would draw masks that the CUDA reference cannot replay.
    "opt": {"ffn_dim": 96, "word_embed_proj_dim": 64, "dropout": 0.0},
    # the default rotary width (64) exceeds the tiny head_dim.
    "codegen": {"rotary_dim": 8},
    "gptj": {"rotary_dim": 8},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    # the shared gated MLP is off (size 0) by default.
    "granitemoeshared": {"shared_intermediate_size": 48},
    "granitemoe_swa": {"shared_intermediate_size": 48},
    "recurrent_gemma": {"block_types": ["recurrent", "attention"]},
    # the default shared-expert count (None) fails to build.
    "dots1": {"n_shared_experts": 1},
    # clamp q/k/v in place (OLMo-7B-0424 clips at 8); tiny activations need a smaller bound.
    "olmo": {"clip_qkv": 0.5},
}


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    """A default config of ``model_type`` shrunk to tiny sizes (sub-configs too)."""
    config_class = CONFIG_MAPPING[model_type]
    default = config_class()
    kwargs = {key: value for key, value in TINY.items() if hasattr(default, key)}
    kwargs.update(OVERRIDES.get(model_type, {}))
    for name in getattr(config_class, "sub_configs", {}) or {}:
        sub = getattr(default, name, None)
        # sub-configs without a model type of their own (MPT's attn_config) keep their defaults
        if isinstance(sub, transformers.PretrainedConfig) and sub.model_type:
            kwargs[name] = tiny_config(sub.model_type)
    return config_class(**kwargs)


def from_config(
    model_type: str, config: transformers.PretrainedConfig, **kwargs
) -> torch.nn.Module:
    """The causal LM of ``model_type``, else its image-text model.

    A text sub-config without an auto entry of its own (``mllama_text_model``) builds the
    causal LM whose config class it is (``MllamaForCausalLM``).
    """
    if model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM.from_config(config, **kwargs)
    if model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText.from_config(config, **kwargs)
    modeling = importlib.import_module(
        type(config).__module__.replace(".configuration_", ".modeling_")
    )
    for name in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        model_class = getattr(modeling, name, None)
        if model_class is not None and model_class.config_class is type(config):
            return model_class._from_config(config, **kwargs)
    return AutoModelForImageTextToText.from_config(config, **kwargs)  # raises, naming the type


def _without_expert_redirects(lora: LoraConfig, model) -> list[str]:
    """``lora``'s target modules less those PEFT would move onto fused MoE expert parameters.

    For MoE model types whose experts transformers 5 fused into 3-D parameters, PEFT's
    conversion of v4 adapters rewrites a target such as ``...shared_mlp.gate_proj`` into the
    experts' ``gate_up_proj`` parameter, where it refuses LoRA dropout. Users training with
    dropout on these models target the other projections, and so does the dropout variant.
    """
    try:
        from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers
    except ImportError:  # a PEFT without that conversion targets the modules as given
        return lora.target_modules
    converted = copy.deepcopy(lora)
    convert_peft_config_for_transformers(converted, model=model, conversions=None)
    if not converted.target_parameters:
        return lora.target_modules
    return [name for name in lora.target_modules if name in converted.target_modules]


def build_model(model_type: str, dtype: torch.dtype, device: str, dropout: float, bias: bool):
    """A tiny PEFT model of ``model_type`` with random non-zero LoRA weights."""
    config = tiny_config(model_type)
    torch.manual_seed(0)
    # Eager experts: grouped_mm has no float64 kernel.
    model = from_config(
        model_type,
        config,
        attn_implementation="eager",
        experts_implementation="eager",
        dtype=torch.float32,
    )
    # Full names of the nn.Linear projections only (a bare name would also match MoE expert
    # parameters, which PEFT wraps differently).
    names = {*TARGETS, *OWN_TARGETS.get(model_type, ())}
    targets = [
        name
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and name.rsplit(".", 1)[-1] in names
    ]
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        init_lora_weights=False,
        lora_dropout=dropout,
        lora_bias=bias,
    )
    if dropout:
        lora.target_modules = _without_expert_redirects(lora, model)
    model = get_peft_model(model, lora).to(device=device, dtype=dtype)
    model.train()  # LoRA dropout is active only in training mode
    return model, config


def run(model, input_ids: torch.Tensor, weight: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Logits and every LoRA gradient of ``sum(logits * weight)``, from RNG state ``seed``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = model(input_ids=input_ids, use_cache=False).logits
    (logits.float() * weight).sum().backward()
    out = {"logits": logits.detach().double()}
    for name, parameter in model.named_parameters():
        if "lora_" in name and parameter.grad is not None:
            out[name] = parameter.grad.double()
    return out


def rel_error(x: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """``||x - ref|| / max(||ref||, floor)``; ``||x||`` if ``ref`` is zero and there is no floor."""
    scale = max(ref.norm().item(), floor)
    return (x - ref).norm().item() / (scale if scale > 0 else 1.0)


def max_error(out: dict, ref: dict, dtype: torch.dtype = torch.float64) -> tuple[float, float, str]:
    """(logits error, worst gradient error, its parameter); missing gradients count as inf.

    Gradients are measured against a floor of ``grad_floor(dtype)`` times the largest reference
    gradient norm (module docstring: why); ``dtype`` is the compared model's.
    """
    grads = {name: tensor for name, tensor in ref.items() if name != "logits"}
    largest = max((tensor.norm().item() for tensor in grads.values()), default=0.0)
    floor = grad_floor(dtype) * largest
    worst, where = 0.0, ""
    for name, tensor in grads.items():
        error = rel_error(out[name], tensor, floor) if name in out else float("inf")
        if error > worst:
            worst, where = error, name
    if set(out) - set(ref):
        worst, where = float("inf"), f"unexpected gradients: {sorted(set(out) - set(ref))[:3]}"
    return rel_error(out["logits"], ref["logits"]), worst, where


@dataclass
class Result:
    arch: str
    variant: str
    logits: float
    grads: float
    where: str
    peft: float
    bound: float
    grads_checked: int
    fused: str
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem and max(self.logits, self.grads) <= self.bound


def _lora_dropouts(model) -> dict[str, torch.nn.Dropout]:
    return {
        name: module
        for name, module in model.named_modules()
        if ".lora_dropout." in name and isinstance(module, torch.nn.Dropout)
    }


def record_dropout_masks(model, runner) -> tuple[dict, dict[str, list[torch.Tensor]]]:
    """``runner()``'s result, and each LoRA dropout's masks (``output / input``), call order."""
    masks: dict[str, list[torch.Tensor]] = {}

    def hook(name: str):
        def record(module, args, output) -> None:
            kept = output != 0  # dropout zeroes exactly the dropped elements
            masks.setdefault(name, []).append(kept.double() / (1 - module.p))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in _lora_dropouts(model).items()]
    try:
        return runner(), masks
    finally:
        for handle in handles:
            handle.remove()


def replay_dropout_masks(model, masks: dict[str, list[torch.Tensor]]) -> None:
    """Make each LoRA dropout of ``model`` apply the recorded masks, in the same order."""
    for name, module in _lora_dropouts(model).items():
        recorded = iter(masks.get(name, []))
        module.forward = lambda x, recorded=recorded: x * next(recorded).to(x)


def verify_variant(arch: str, variant: str, device: str, dtype: torch.dtype) -> Result:
    dropout, bias = (0.1, True) if variant == "bias+dropout" else (0.0, False)
    model, config = build_model(arch, dtype, device, dropout, bias)
    text = getattr(config, "text_config", None) or config
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, text.vocab_size, (2, 8), generator=generator).to(device)
    weight = torch.randn(2, 8, text.vocab_size, generator=generator).to(device)
    # Copied before any forward: a training forward leaves non-leaf tensors on some models
    # (RecurrentGemma), which deepcopy refuses.
    reference_model = copy.deepcopy(model).to(torch.float64)
    peft, masks = record_dropout_masks(model, lambda: run(model, input_ids, weight, seed=2))
    if dtype != torch.float64:
        replay_dropout_masks(reference_model, masks)
    ref = run(reference_model, input_ids, weight, seed=2)
    report = lk_patch.patch_model(model)
    patched = run(model, input_ids, weight, seed=2)
    lk_patch.unpatch_model(model)
    restored = run(model, input_ids, weight, seed=2)

    logits, grads, where = max_error(patched, ref, dtype)
    peft_error = max(max_error(peft, ref, dtype)[:2])
    bound = BOUNDS[dtype] if dtype == torch.float64 else max(BOUNDS[dtype], 2 * peft_error)
    problem = ""
    skipped = [e for e in report.skipped if e.module != "(decoder layer)"]
    if skipped:
        problem = f"not fused: {skipped[0].module} {skipped[0].group}: {skipped[0].detail}"
    elif not report.patched:
        problem = "nothing was patched"
    elif any(not torch.equal(restored[k], peft[k]) for k in peft) or set(restored) != set(peft):
        problem = "unpatch_model did not restore PEFT's result exactly"
    fused = ", ".join(sorted({f"{e.module}.{e.group}" for e in report.patched}))
    return Result(
        arch, variant, logits, grads, where, peft_error, bound, len(ref) - 1, fused, problem
    )


def verify(arch: str, device: str, dtype: torch.dtype) -> list[Result]:
    """Both variants of one architecture; an exception becomes a failed Result."""
    results: list[Result] = []
    for variant in ("lora", "bias+dropout"):
        try:
            results.append(verify_variant(arch, variant, device, dtype))
        except Exception as error:  # reported in the table; the exit code says it failed
            results.append(
                Result(
                    arch,
                    variant,
                    float("nan"),
                    float("nan"),
                    "",
                    float("nan"),
                    BOUNDS[dtype],
                    0,
                    "",
                    f"{type(error).__name__}: {error}",
                )
            )
    return results


def uncovered_decoders() -> list[str]:
    """Causal-LM model types of the installed transformers that are not registered."""
    registered = set(lk_patch.supported_architectures())
    return sorted(set(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - registered)


def print_table(results: list[Result], device: str, dtype: torch.dtype) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"lk_patch vs PEFT, float64 reference ({device}, {str(dtype)[6:]}, "
        f"transformers {transformers.__version__})",
        caption=f"grad err: ||x - ref|| / max(||ref||, {grad_floor(dtype):.1e} * largest ||ref||)",
    )
    for column in (
        "arch",
        "variant",
        "logits err",
        "grad err (max)",
        "PEFT's own err",
        "bound",
        "grads",
        "result",
    ):
        table.add_column(column)
    for r in results:
        status = "[green]ok[/]" if r.ok else f"[red]FAIL[/] {r.problem or 'error above bound'}"
        table.add_row(
            r.arch,
            r.variant,
            f"{r.logits:.1e}",
            f"{r.grads:.1e}",
            f"{r.peft:.1e}",
            f"{r.bound:.0e}",
            str(r.grads_checked),
            status,
        )
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch", nargs="*", help="model_type(s), e.g. mistral")
    parser.add_argument("--all", action="store_true", help="every registered architecture")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="default: float64 on the CPU, float32 on CUDA"
    )
    args = parser.parse_args(argv)
    if not args.arch and not args.all:
        parser.error("give an architecture (see --all) or --all")
    dtype = DTYPES[args.dtype or ("float64" if args.device == "cpu" else "float32")]
    archs = lk_patch.supported_architectures() if args.all else args.arch
    absent = [arch for arch in archs if arch not in CONFIG_MAPPING]
    if absent and not args.all:
        parser.error(f"not in transformers {transformers.__version__}: {', '.join(absent)}")
    archs = [arch for arch in archs if arch not in absent]
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")  # deprecation and "lora_bias without base bias" noise
    results = []
    for arch in archs:
        start = time.perf_counter()
        results.extend(verify(arch, args.device, dtype))
        print(f"{arch}: {time.perf_counter() - start:.1f}s", file=sys.stderr)
    print_table(results, args.device, dtype)
    if args.all:
        print(
            f"Decoders in transformers {transformers.__version__} not registered: "
            f"{', '.join(uncovered_decoders())}"
        )
        if absent:
            print(f"Registered but not in this transformers (skipped): {', '.join(absent)}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"FAIL {r.arch} [{r.variant}]: {r.problem or 'error above bound'} {r.where}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
