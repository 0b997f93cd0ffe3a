"""lk_axolotl: the config keys, the hooks, and (with LK_AXOLOTL_PYTHON set to the python of a
virtual environment holding axolotl, as integrations/lk-axolotl/test_with_axolotl.sh builds)
the plugin inside real Axolotl: PluginManager, config loading and ModelLoader."""

import logging
import os
import subprocess
from pathlib import Path

import pydantic
import pytest

from examples.train_transformers import tiny_lora_model
from lk_axolotl._hooks import on_model_loaded, on_register
from lk_axolotl.args import LoraKernelsArgs
from lk_patch import is_patched

ROOT = Path(__file__).resolve().parents[2]


def test_args_defaults_and_conflict_with_axolotl_kernels():
    args = LoraKernelsArgs()
    assert (args.lk_lora_mlp, args.lk_lora_qkv, args.lk_lora_o, args.lk_liger) == (
        True,
        True,
        True,
        False,
    )
    with pytest.raises(pydantic.ValidationError, match="lora_qkv_kernel"):
        LoraKernelsArgs.model_validate({"lora_qkv_kernel": True})
    # with all of ours off, Axolotl's own kernels may run
    LoraKernelsArgs.model_validate(
        {"lk_lora_mlp": False, "lk_lora_qkv": False, "lk_lora_o": False, "lora_o_kernel": True}
    )


def test_register_turns_off_axolotl_auto_kernels_unless_set():
    cfg = {"lora_o_kernel": True}
    on_register(cfg)
    assert cfg == {"lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": True}


def test_post_model_load_patches_selected_groups_and_logs(caplog):
    model = tiny_lora_model(seed=7)
    cfg = {"adapter": "lora", "lk_lora_mlp": True, "lk_lora_qkv": False, "lk_lora_o": True}
    with caplog.at_level(logging.INFO, logger="lk_axolotl"):
        report = on_model_loaded(cfg, model)
    assert is_patched(model)
    assert {entry.group for entry in report.patched} == {"mlp", "o_proj"}
    assert report.title() in caplog.text


def test_post_model_load_leaves_full_finetunes_alone():
    model = tiny_lora_model(seed=7)
    assert on_model_loaded({"adapter": None}, model) is None
    assert not is_patched(model)


@pytest.mark.skipif(
    not os.environ.get("LK_AXOLOTL_PYTHON"),
    reason="set LK_AXOLOTL_PYTHON to a python with axolotl (integrations/lk-axolotl/"
    "test_with_axolotl.sh builds one)",
)
def test_plugin_inside_real_axolotl():
    script = ROOT / "integrations" / "lk-axolotl" / "check_with_axolotl.py"
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1"}
    result = subprocess.run(
        [os.environ["LK_AXOLOTL_PYTHON"], str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-10000:] + result.stderr[-10000:]
    assert "lk_axolotl: OK" in result.stdout
