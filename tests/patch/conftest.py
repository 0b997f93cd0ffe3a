"""Shared fixtures: tools/verify_arch.py as a module, and tiny PEFT models built with it."""

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import transformers

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "verify_arch.py"


def _load_verify_arch():
    spec = importlib.util.spec_from_file_location("verify_arch", _TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["verify_arch"] = module
    spec.loader.exec_module(module)
    return module


verify_arch = _load_verify_arch()
transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
