"""lk_accelerate without a distributed backend: the shipped configs, the ZeRO-3 leaf flags and
the Trainer callback that sets them before DeepSpeed would be initialized."""

import pytest
import yaml

from examples.train_transformers import tiny_lora_model, train
from lk_accelerate import (
    DistributedLoraKernelsCallback,
    config_names,
    config_path,
    mark_zero3_leaves,
    prepare_model,
)
from lk_patch import is_patched


def test_shipped_configs():
    assert config_names() == ["ddp", "fsdp2", "zero2", "zero3"]
    zero3 = yaml.safe_load(config_path("zero3").read_text())
    assert zero3["distributed_type"] == "DEEPSPEED"
    assert zero3["deepspeed_config"]["zero_stage"] == 3
    fsdp2 = yaml.safe_load(config_path("fsdp2").read_text())
    assert fsdp2["fsdp_config"]["fsdp_version"] == 2
    assert fsdp2["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    with pytest.raises(ValueError, match="zero3"):
        config_path("zero4")


def test_leaves_are_the_decoder_layers():
    model = tiny_lora_model(seed=11)
    report = prepare_model(model)
    assert report.patched
    leaves = mark_zero3_leaves(model)
    assert [type(m).__name__ for m in leaves] == ["LlamaDecoderLayer"] * 2
    assert all(m._z3_leaf for m in leaves)


def test_trainer_callback_flags_leaves_at_init_and_patches_at_train_begin(tmp_path):
    callback = DistributedLoraKernelsCallback()
    trainer, losses = train(str(tmp_path), kernels=False, steps=1, callbacks=[callback])
    layers = trainer.model.get_base_model().model.layers
    assert all(getattr(layer, "_z3_leaf", False) for layer in layers)
    assert is_patched(trainer.model) and callback.report.patched
    assert len(losses) == 1
