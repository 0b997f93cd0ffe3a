"""lk_transformers: Trainer runs match unpatched runs step by step, the saved adapter is the
same, merge_and_unload works, and enable/disable are idempotent and reversible."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from examples.train_transformers import counting_dataset, tiny_lora_model, train
from lk_patch import PatchError, is_patched
from lk_transformers import LoraKernelsCallback, disable_lora_kernels, enable_lora_kernels
from tests.helpers import causal_lm_loss_in_logits_dtype, fresh_seed, rel_err

STEPS = 6
# Plain SGD: Adam divides by sqrt(v), which turns float32 rounding differences in the tiny
# gradients of some coordinates into full-size update differences, so Adam runs drift apart
# by ~1e-4 within a few steps for any two implementations; SGD keeps them at rounding level.
SGD = {"optim": "sgd", "learning_rate": 0.5}
# float64: over several steps float32 rounding differences grow to ~1e-5 relative in the grad
# norm (seen once in CI at step 4), at the float32 bound; in float64 the runs agree to 1e-12,
# once the loss is float64 too (transformers' own rounds the logits to float32: seed 37426 gave
# 1.9e-8 at step 4 in CI).
DTYPE = torch.float64
TOL = 1e-9


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One unpatched and one patched Trainer run from the same weights, data and seed."""
    seed = fresh_seed()
    result = {}
    for kernels in (False, True):
        out = tmp_path_factory.mktemp("patched" if kernels else "peft")
        model = tiny_lora_model(seed, DTYPE)
        model.get_base_model().loss_function = causal_lm_loss_in_logits_dtype
        trainer, losses = train(
            str(out), kernels=kernels, steps=STEPS, seed=seed, model=model, **SGD
        )
        trainer.model.save_pretrained(out)
        grad_norms = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
        result[kernels] = {"trainer": trainer, "losses": losses, "norms": grad_norms, "dir": out}
    return result


def test_losses_match_unpatched_step_by_step(runs):
    reference, patched = runs[False], runs[True]
    assert len(patched["losses"]) == len(reference["losses"]) == STEPS
    for step, (loss, ref) in enumerate(zip(patched["losses"], reference["losses"], strict=True)):
        assert abs(loss - ref) / abs(ref) < TOL, f"step {step}: {loss} vs {ref}"
    for step, (norm, ref) in enumerate(zip(patched["norms"], reference["norms"], strict=True)):
        assert abs(norm - ref) / abs(ref) < TOL, f"grad norm at step {step}: {norm} vs {ref}"
    # the run changed the adapters, so the comparison covers real updates
    assert reference["losses"][-1] != reference["losses"][0]


def test_callback_patched_every_group(runs):
    trainer = runs[True]["trainer"]
    callback = next(
        c for c in trainer.callback_handler.callbacks if isinstance(c, LoraKernelsCallback)
    )
    report = callback.report
    assert report is not None and is_patched(trainer.model)
    assert {entry.group for entry in report.patched} == {"q/k/v", "o_proj", "mlp"}
    assert not report.skipped


def test_saved_adapter_has_same_keys_shapes_and_values(runs):
    reference = load_file(runs[False]["dir"] / "adapter_model.safetensors")
    patched = load_file(runs[True]["dir"] / "adapter_model.safetensors")
    assert sorted(patched) == sorted(reference)
    for key, tensor in reference.items():
        assert patched[key].shape == tensor.shape, key
        assert patched[key].dtype == tensor.dtype, key
        assert rel_err(patched[key], tensor) < TOL, key
    assert (runs[True]["dir"] / "adapter_config.json").read_text() == (
        runs[False]["dir"] / "adapter_config.json"
    ).read_text()


def test_merge_and_unload_after_patching():
    model = tiny_lora_model(seed=fresh_seed())
    reference = copy.deepcopy(model)
    enable_lora_kernels(model)
    tokens = torch.randint(0, 128, (3, 17))
    with torch.no_grad(), reference.disable_adapter():
        base = reference(tokens).logits
    with torch.no_grad():
        assert rel_err(model(tokens).logits, reference(tokens).logits) < 1e-5
        merged, merged_reference = model.merge_and_unload(), reference.merge_and_unload()
        assert not any("lora" in name for name, _ in merged.named_parameters())
        out, ref = merged(tokens).logits, merged_reference(tokens).logits
    assert rel_err(out, ref) < 1e-5
    # the merged weights are W + s B A, not W: the adapters were non-zero
    assert rel_err(out, base) > 1e-3


def test_enable_is_idempotent_and_disable_restores():
    model = tiny_lora_model(seed=3)
    tokens = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        before = model(tokens).logits
    first = enable_lora_kernels(model)
    assert enable_lora_kernels(model) is first
    with pytest.raises(PatchError):
        enable_lora_kernels(model, mlp=False)
    disable_lora_kernels(model)
    assert not is_patched(model)
    assert all("forward" not in module.__dict__ for module in model.modules())
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, before)
    assert enable_lora_kernels(model, mlp=False).patched


def test_sft_trainer_with_callback_matches_unpatched(tmp_path):
    """SFTTrainer's defaults include gradient checkpointing, which the patch must survive."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    seed = fresh_seed()
    rows = [{"input_ids": row["input_ids"].tolist()} for row in counting_dataset(32, 24, seed)]
    losses = {}
    for kernels in (False, True):
        config = trl.SFTConfig(
            output_dir=str(tmp_path / str(kernels)),
            max_steps=4,
            per_device_train_batch_size=4,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=seed,
            disable_tqdm=True,
            bf16=False,  # SFTConfig turns on bf16 autocast by default, even on the CPU
            **SGD,
        )
        trainer = trl.SFTTrainer(
            model=tiny_lora_model(seed, DTYPE),
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=_word_tokenizer(),
            callbacks=[LoraKernelsCallback()] if kernels else [],
        )
        trainer.train()
        assert is_patched(trainer.model) == kernels
        losses[kernels] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses[True]) == 4
    for loss, ref in zip(losses[True], losses[False], strict=True):
        assert abs(loss - ref) / abs(ref) < TOL


def _word_tokenizer():
    """A 128-token word-level tokenizer built in memory (SFTTrainer wants a processing class)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(128)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="t0", pad_token="t1", eos_token="t2"
    )
