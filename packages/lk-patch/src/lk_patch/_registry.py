"""The architecture registry: one ArchSpec per transformers ``model_type``.

An entry names the decoder's attention and MLP classes (by class name inside the model
type's own modeling module, where transformers also re-exports the classes it borrows, e.g.
``Qwen2MLP`` in ``modeling_qwen2_vl``) and the attention projections. The MLP's projection
and activation attribute names are not listed: they are read from the MLP forward's source
(``_source.gated_mlp_form``), which also proves the class computes ``down(act(gate) * up)``.
Every entry is checked by ``tools/verify_arch.py`` and ``tests/patch``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ._errors import UnsupportedArchitectureError

_SEPARATE_QKV = ("q_proj", "k_proj", "v_proj")
MOE_NOTE = "MoE experts are not a gated-MLP module (attention only)"
NON_GATED_NOTE = "MLP is not a plain gated MLP down(act(gate) * up) (attention only)"
# transformers 5 fused these models' experts; PEFT's conversion of v4 adapters moves every
# gate_proj / up_proj / down_proj target onto them, so the dense and shared MLPs get no LoRA.
PEFT_EXPERTS_NOTE = "PEFT moves MLP projection targets onto the fused MoE experts (attention only)"
SILU_CALL_NOTE = "MLP calls F.silu, not an activation module (attention only)"


@dataclass(frozen=True)
class ArchSpec:
    """How to patch one ``model_type``.

    ``attention`` and ``mlp`` are class names in the modeling module of ``model_type``.
    ``qkv`` names separate projections; ``fused_qkv`` a single one the forward splits
    (Phi-3). ``mlp_note`` says why the MLP is left alone when ``mlp`` is empty.
    ``text_config`` marks a multimodal wrapper whose decoder is described by the entry of
    its ``text_config.model_type`` (Mistral3 wraps any text model).
    """

    model_type: str
    attention: tuple[str, ...] = ()
    mlp: tuple[str, ...] = ()
    qkv: tuple[str, str, str] | None = _SEPARATE_QKV
    fused_qkv: str | None = None
    o: str = "o_proj"
    mlp_note: str | None = None
    text_config: bool = False

    def modeling_module(self) -> ModuleType:
        """``transformers.models.<family>.modeling_<family>`` for this model type."""
        from transformers import CONFIG_MAPPING

        config_module = CONFIG_MAPPING[self.model_type].__module__
        return importlib.import_module(config_module.replace(".configuration_", ".modeling_"))

    def class_keys(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """``(module, qualname)`` of the attention and of the MLP classes.

        Matching on these rather than on the module's current attributes keeps working after
        another library rebinds the names (Liger sets ``modeling_llama.LlamaMLP`` to its own
        class): modules built before that are still of the original class.
        """
        module = self.modeling_module().__name__
        return {(module, n) for n in self.attention}, {(module, n) for n in self.mlp}


def _gated(model_type: str, prefix: str, **fields) -> ArchSpec:
    """The common case: ``<prefix>Attention`` with q/k/v/o and a gated ``<prefix>MLP``."""
    return ArchSpec(model_type, attention=(f"{prefix}Attention",), mlp=(f"{prefix}MLP",), **fields)


def _attention_only(model_type: str, prefix: str, note: str) -> ArchSpec:
    return ArchSpec(model_type, attention=(f"{prefix}Attention",), mlp_note=note)


def _fused_attention_only(model_type: str, attention: str, fused_qkv: str, o: str) -> ArchSpec:
    """GPT-style attention: one fused q/k/v projection, a non-gated MLP."""
    return ArchSpec(
        model_type,
        attention=(attention,),
        qkv=None,
        fused_qkv=fused_qkv,
        o=o,
        mlp_note=NON_GATED_NOTE,
    )


_SPECS = [
    _gated("llama", "Llama"),
    _gated("mistral", "Mistral"),
    _gated("qwen2", "Qwen2"),
    _gated("qwen3", "Qwen3"),
    _gated("gemma", "Gemma"),
    _gated("gemma2", "Gemma2"),
    _gated("gemma3", "Gemma3"),
    _gated("gemma3_text", "Gemma3"),
    _gated("granite", "Granite"),
    _gated("glm4", "Glm4"),
    _gated("smollm3", "SmolLM3"),
    _gated("cohere2", "Cohere2"),
    _gated("olmo2", "Olmo2"),
    _gated("llama4", "Llama4Text"),
    _gated("llama4_text", "Llama4Text"),
    ArchSpec("mistral3", text_config=True),
    ArchSpec("qwen2_vl", attention=("Qwen2VLAttention",), mlp=("Qwen2MLP",)),
    _attention_only("mixtral", "Mixtral", MOE_NOTE),
    _attention_only("qwen2_moe", "Qwen2Moe", MOE_NOTE),
    _attention_only("qwen3_moe", "Qwen3Moe", MOE_NOTE),
    _attention_only("starcoder2", "Starcoder2", NON_GATED_NOTE),
    ArchSpec(
        "phi3", attention=("Phi3Attention",), mlp=("Phi3MLP",), qkv=None, fused_qkv="qkv_proj"
    ),
    # Found by scanning transformers 5.24's causal LMs for one attention class the rewrite
    # accepts and MLP classes of the gated form; each verified by tools/verify_arch.py.
    _attention_only("apertus", "Apertus", NON_GATED_NOTE),
    _attention_only("apertus1p5_text", "Apertus1p5Text", NON_GATED_NOTE),
    _attention_only("arcee", "Arcee", NON_GATED_NOTE),
    ArchSpec("aria_text", attention=("AriaTextAttention",), mlp=("AriaSharedExpertsMLP",)),
    _attention_only("beam", "Beam", MOE_NOTE),
    _attention_only("bitnet", "BitNet", NON_GATED_NOTE),
    _gated("cohere", "Cohere"),
    _gated("cohere2_moe", "Cohere2Moe"),
    _gated("cwm", "Cwm"),
    _gated("diffllama", "DiffLlama"),
    _gated("doge", "Doge"),
    _gated("ernie4_5", "Ernie4_5"),
    _gated("exaone4", "Exaone4"),
    _attention_only("falcon_h1", "FalconH1", NON_GATED_NOTE),
    _gated("flex_olmo", "FlexOlmo"),
    _gated("flint", "Flint"),
    _gated("glm", "Glm"),
    # Added from the same scan; hybrid models are verified with an attention layer in the tiny
    # model (OVERRIDES in tools/verify_arch.py).
    _attention_only("afmoe", "Afmoe", PEFT_EXPERTS_NOTE),
    _gated("bamba", "Bamba"),
    _attention_only("dory", "Dory", NON_GATED_NOTE),
    _attention_only("dots1", "Dots1", PEFT_EXPERTS_NOTE),
    ArchSpec("emu3", text_config=True),
    _gated("emu3_text_model", "Emu3"),
    _attention_only("ernie4_5_moe", "Ernie4_5_Moe", PEFT_EXPERTS_NOTE),
    _attention_only("exaone_moe", "ExaoneMoe", PEFT_EXPERTS_NOTE),
    _attention_only("glm4_moe", "Glm4Moe", PEFT_EXPERTS_NOTE),
    _attention_only("gpt_oss", "GptOss", MOE_NOTE),
    _gated("granite_swa", "GraniteSWA"),
    _attention_only("granitemoe", "GraniteMoe", MOE_NOTE),
    # The shared expert is a gated MLP with a fused input_linear (gate and up halves).
    ArchSpec("granitemoe_swa", attention=("GraniteMoeSWAAttention",), mlp=("GraniteMoeSWAMLP",)),
    ArchSpec(
        "granitemoeshared", attention=("GraniteMoeSharedAttention",), mlp=("GraniteMoeSharedMLP",)
    ),
    _gated("helium", "Helium"),
    _gated("hrm_text", "HrmText"),
    _gated("hunyuan_v1_dense", "HunYuanDenseV1"),
    _attention_only("hunyuan_v1_moe", "HunYuanMoEV1", PEFT_EXPERTS_NOTE),
    _gated("hy_v3", "HYV3"),
    _gated("hyperclovax", "HyperCLOVAX"),
    _attention_only("inkling_text", "Inkling", NON_GATED_NOTE),
    _attention_only("jais2", "Jais2", NON_GATED_NOTE),
    _gated("kolibri1", "Kolibri1"),
    _gated("laguna", "Laguna"),
    _gated("lara_mini", "LaraMini"),
    ArchSpec("lfm2", attention=("Lfm2Attention",), o="out_proj", mlp_note=SILU_CALL_NOTE),
    ArchSpec("lfm2_moe", attention=("Lfm2MoeAttention",), o="out_proj", mlp_note=SILU_CALL_NOTE),
    ArchSpec("lfm3", attention=("Lfm3Attention",), mlp_note=SILU_CALL_NOTE),
    _attention_only("mellum", "Mellum", PEFT_EXPERTS_NOTE),
    _gated("mimo_v2_flash", "MiMoV2Flash"),
    _attention_only("minimax", "MiniMax", MOE_NOTE),
    _attention_only("minimax_m2", "MiniMaxM2", MOE_NOTE),
    _attention_only("minimax_m3_vl_text", "MiniMaxM3VL", NON_GATED_NOTE),
    _gated("ministral", "Ministral"),
    _gated("ministral3", "Ministral3"),
    ArchSpec("mllama", text_config=True),
    ArchSpec("mllama_text_model", attention=("MllamaTextSelfAttention",), mlp=("MllamaTextMLP",)),
    _attention_only("nanochat", "NanoChat", NON_GATED_NOTE),
    _attention_only("nemotron", "Nemotron", NON_GATED_NOTE),
    _gated("olmo", "Olmo"),
    _gated("olmo3", "Olmo3"),
    _gated("olmo_hybrid", "OlmoHybrid"),
    _attention_only("olmoe", "Olmoe", MOE_NOTE),
    ArchSpec("phi", attention=("PhiAttention",), o="dense", mlp_note=NON_GATED_NOTE),
    ArchSpec(
        "phi4_multimodal",
        attention=("Phi4MultimodalAttention",),
        mlp=("Phi4MultimodalMLP",),
        qkv=None,
        fused_qkv="qkv_proj",
    ),
    _attention_only("phimoe", "Phimoe", MOE_NOTE),
    ArchSpec("qwen3_5", text_config=True),
    _gated("qwen3_5_text", "Qwen3_5"),
    ArchSpec("qwen3_5_moe", text_config=True),
    _gated("qwen3_5_moe_text", "Qwen3_5Moe"),
    _attention_only("qwen3_next", "Qwen3Next", PEFT_EXPERTS_NOTE),
    ArchSpec("recurrent_gemma", attention=("RecurrentGemmaAttention",), mlp=("RecurrentGemmaMlp",)),
    ArchSpec(
        "seed_oss",
        attention=("SeedOssAttention",),
        mlp_note="MLP applies residual dropout after down_proj (attention only)",
    ),
    _attention_only("solar_open", "SolarOpen", PEFT_EXPERTS_NOTE),
    _gated("stablelm", "StableLm"),
    _gated("vaultgemma", "VaultGemma"),
    # GPT-style decoders; fused projections take LoRA_O as in phi3.
    _fused_attention_only("bloom", "BloomAttention", "query_key_value", "dense"),
    _fused_attention_only("codegen", "CodeGenAttention", "qkv_proj", "out_proj"),
    _fused_attention_only("gpt_neox", "GPTNeoXAttention", "query_key_value", "dense"),
    _fused_attention_only(
        "gpt_neox_japanese", "GPTNeoXJapaneseAttention", "query_key_value", "dense"
    ),
    ArchSpec("gptj", attention=("GPTJAttention",), o="out_proj", mlp_note=NON_GATED_NOTE),
    _fused_attention_only("mpt", "MptAttention", "Wqkv", "out_proj"),
    _fused_attention_only("persimmon", "PersimmonAttention", "query_key_value", "dense"),
    # Attention without RoPE. In the hybrids the Mamba mixers keep PEFT's path (PEFT refuses
    # LoRA on their out_proj); the tiny verify models have attention layers (OVERRIDES).
    # Jamba: the dense layers' gated JambaMLP too; its experts are not in PEFT's conversion.
    _gated("jamba", "Jamba"),
    _gated("zamba", "Zamba"),  # one attention + MLP block, shared by every hybrid layer
    ArchSpec(
        "zamba2",
        attention=("Zamba2Attention",),
        mlp_note="MLP adds a per-layer adapter to gate_up_proj's output (attention only)",
    ),
    # The shared expert, a gated MLP with a fused input_linear as in granitemoeshared.
    ArchSpec(
        "granitemoehybrid",
        attention=("GraniteMoeHybridAttention",),
        mlp=("GraniteMoeHybridMLP",),
    ),
    _attention_only("nemotron_h", "NemotronH", NON_GATED_NOTE),  # relu2(up), no gate
    ArchSpec("opt", attention=("OPTAttention",), o="out_proj", mlp_note=NON_GATED_NOTE),
]

REGISTRY: dict[str, ArchSpec] = {spec.model_type: spec for spec in _SPECS}


def supported_architectures() -> list[str]:
    """The registered ``model_type`` names, sorted."""
    return sorted(REGISTRY)


def get_spec(model_type: str) -> ArchSpec:
    """The entry for ``model_type``, or UnsupportedArchitectureError saying what to do."""
    try:
        return REGISTRY[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not registered in lk_patch "
            f"(supported: {', '.join(supported_architectures())}). Use PEFT's own forward "
            "for this model, or add an ArchSpec in lk_patch/_registry.py and check it with "
            f"`uv run tools/verify_arch.py {model_type}`."
        ) from None
