"""Load peers' kernels from wheels carried to the GPU machine, for benchmarks only.

Each loader returns None when the peer is not installed, so benchmarks list it as skipped.
"""

import importlib
import importlib.util
import logging
import sys
import types


def axolotl_lora():
    """Axolotl's ``axolotl.kernels.lora`` module, or None.

    Its kernels folder imports standalone except for the package's logging helper, which
    pulls in Axolotl's distributed utilities; a stub that returns stdlib loggers stands in.
    """
    try:
        import axolotl  # noqa: F401
    except ImportError:
        return None
    if "axolotl.utils.logging" not in sys.modules:
        stub = types.ModuleType("axolotl.utils.logging")
        stub.get_logger = logging.getLogger
        sys.modules["axolotl.utils.logging"] = stub
    try:
        from axolotl.kernels import lora
    except ImportError as err:  # e.g. bitsandbytes missing: it imports QuantState
        print(f"axolotl kernels not importable: {err}")
        return None
    return lora


def _bare_package(name: str) -> None:
    """Register package ``name`` without running its ``__init__``: its submodules import
    from their files as usual."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"no package {name}")
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = package


def unsloth_lora():
    """Unsloth's ``unsloth.kernels.fast_lora`` module, or None.

    ``import unsloth`` patches transformers, peft and TRL process-wide and probes the GPU and
    its package set; it would change what the other implementations run. So ``unsloth``,
    ``unsloth.kernels`` and ``unsloth_zoo`` are registered bare (their ``__init__`` skipped)
    and only ``fast_lora`` and the modules it imports are loaded. Those still probe the device
    at import and raise more than ImportError where they cannot run (no GPU), so any failure
    counts as absent.
    """
    try:
        for name in ("unsloth", "unsloth.kernels", "unsloth_zoo"):
            _bare_package(name)
        fast_lora = importlib.import_module("unsloth.kernels.fast_lora")
    except Exception as err:
        print(f"unsloth kernels not importable: {err!r}")
        return None
    return fast_lora


def liger_silu_mul():
    """Liger-Kernel's ``LigerSiLUMulFunction`` (autograd silu(gate) * up), or None."""
    try:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError:
        return None
    return LigerSiLUMulFunction


def liger_swiglu():
    """Liger-Kernel's ``(swiglu_forward, swiglu_backward)`` raw ops, or None."""
    try:
        from liger_kernel.ops.swiglu import swiglu_backward, swiglu_forward
    except ImportError:
        return None
    return swiglu_forward, swiglu_backward
