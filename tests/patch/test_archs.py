"""Every registered architecture, patched, matches PEFT on a tiny float64 model (CPU)."""

import pytest
import torch
from conftest import verify_arch
from transformers import CONFIG_MAPPING

import lk_patch


@pytest.mark.parametrize("arch", lk_patch.supported_architectures())
def test_architecture_matches_peft(arch):
    if arch not in CONFIG_MAPPING:  # registered for a newer transformers than the installed one
        pytest.skip(f"{arch} is not in this transformers")
    results = verify_arch.verify(arch, "cpu", torch.float64)
    failures = [
        f"{r.variant}: {r.problem or (r.logits, r.grads, r.where)}" for r in results if not r.ok
    ]
    assert not failures, failures
    assert all(r.grads_checked > 0 for r in results)
