"""tools/verify_arch.py's gradient comparison: the floor forgives rounding noise, not bugs.

Numbers as seen on OPT's bias+dropout variant (float64): the largest reference gradient has
norm ~40; the k_proj lora_B bias gradient, zero in theory without RoPE, holds ~2e-7 of noise
from transformers' float32 softmax; lk_patch and PEFT differ on it by ~2e-16.
"""

import importlib.util
import sys
from pathlib import Path

import torch
import transformers

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "verify_arch.py"
_spec = importlib.util.spec_from_file_location("verify_arch", _TOOL)
verify_arch = importlib.util.module_from_spec(_spec)
sys.modules["verify_arch"] = verify_arch  # dataclasses look their module up
_spec.loader.exec_module(verify_arch)

BOUND = verify_arch.BOUNDS[torch.float64]


def _gradients() -> dict[str, torch.Tensor]:
    """A reference: logits, gradients of realistic sizes, and a k bias gradient of noise."""
    generator = torch.Generator().manual_seed(0)

    def of_norm(shape: tuple[int, ...], norm: float) -> torch.Tensor:
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        return x * (norm / x.norm())

    return {
        "logits": of_norm((2, 8, 128), 300.0),
        "q_proj.lora_A.weight": of_norm((4, 64), 40.0),
        "k_proj.lora_B.weight": of_norm((32, 4), 2.0),
        "v_proj.lora_B.bias": of_norm((32,), 1.0),
        "k_proj.lora_B.bias": of_norm((32,), 2e-7),
    }


def _with(ref: dict, name: str, delta: torch.Tensor) -> dict:
    out = {key: value.clone() for key, value in ref.items()}
    out[name] = out[name] + delta
    return out


def test_rounding_noise_on_a_zero_gradient_passes():
    ref = _gradients()
    noise = torch.full((32,), 2e-16 / 32**0.5, dtype=torch.float64)  # norm 2e-16
    out = _with(ref, "k_proj.lora_B.bias", noise)
    # against its own norm this would fail (1e-9 > 1e-10): the reason for the floor
    assert verify_arch.rel_error(out["k_proj.lora_B.bias"], ref["k_proj.lora_B.bias"]) > BOUND
    logits, grads, _ = verify_arch.max_error(out, ref)
    assert logits == 0.0
    assert grads < BOUND / 10  # 2e-16 / (1e-6 * 40) = 5e-12


def test_a_wrong_gradient_still_fails():
    ref = _gradients()
    # a realistic bug in the zero gradient: a sliver of another bias's gradient leaks in
    out = _with(ref, "k_proj.lora_B.bias", 1e-6 * ref["v_proj.lora_B.bias"])
    _, grads, where = verify_arch.max_error(out, ref)
    assert grads > BOUND and where == "k_proj.lora_B.bias"
    # anything above the largest gradient's roundoff (1e-16 * 40) in it fails too
    out = _with(ref, "k_proj.lora_B.bias", torch.full((32,), 1e-13, dtype=torch.float64))
    assert verify_arch.max_error(out, ref)[1] > BOUND
    # gradients above the floor keep their plain relative error
    out = _with(ref, "k_proj.lora_B.weight", 1e-9 * ref["k_proj.lora_B.weight"])
    _, grads, where = verify_arch.max_error(out, ref)
    assert abs(grads - 1e-9) < 1e-12 and where == "k_proj.lora_B.weight"


def test_missing_gradient_fails():
    ref = _gradients()
    out = {key: value for key, value in ref.items() if key != "k_proj.lora_B.bias"}
    assert verify_arch.max_error(out, ref)[1] == float("inf")


def test_opt_k_bias_gradient_is_noise_and_a_bug_in_it_fails():
    """The real case: OPT (no RoPE), LoRA with a bias on B, float64, patched vs PEFT."""
    import lk_patch

    transformers.logging.set_verbosity_error()
    model, config = verify_arch.build_model("opt", torch.float64, "cpu", 0.1, True)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, config.vocab_size, (2, 8), generator=generator)
    weight = torch.randn(2, 8, config.vocab_size, generator=generator)
    ref = verify_arch.run(model, input_ids, weight, seed=2)
    lk_patch.patch_model(model)
    out = verify_arch.run(model, input_ids, weight, seed=2)

    largest = max(value.norm() for key, value in ref.items() if key != "logits")
    k_bias = next(key for key in ref if "k_proj.lora_B" in key and key.endswith(".bias"))
    v_bias = k_bias.replace("k_proj", "v_proj")
    assert ref[k_bias].norm() < 1e-7 * largest  # noise, below the floor
    assert max(verify_arch.max_error(out, ref)[:2]) < BOUND / 10

    wrong = _with(out, k_bias, 1e-6 * ref[v_bias])
    _, grads, where = verify_arch.max_error(wrong, ref)
    assert grads > BOUND and where == k_bias
