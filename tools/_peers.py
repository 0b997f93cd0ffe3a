"""Load peers' kernels from wheels carried to the GPU machine, for benchmarks only.

Each loader returns None when the peer is not installed, so benchmarks list it as skipped.
"""

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


def unsloth_lora():
    """Unsloth's ``unsloth.kernels.fast_lora`` module, or None.

    Importing Unsloth runs its package ``__init__``, which raises more than ImportError where
    it cannot run (no supported GPU, an unsupported torch), so any failure counts as absent.
    """
    try:
        from unsloth.kernels import fast_lora
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
