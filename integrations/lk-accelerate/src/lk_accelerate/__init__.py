"""lora-kernels under Accelerate: DDP, DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2.

``prepare_model(model)`` patches the model and flags the ZeRO-3 leaf modules; call it before
``accelerator.prepare``. With a Trainer, use ``DistributedLoraKernelsCallback``. Launch
configs for each backend are in the package's ``configs/`` folder (``config_path(name)``).
"""

from ._callback import DistributedLoraKernelsCallback
from ._configs import config_names, config_path
from ._prepare import prepare_model
from ._zero3 import mark_zero3_leaves

__all__ = [
    "DistributedLoraKernelsCallback",
    "config_names",
    "config_path",
    "mark_zero3_leaves",
    "prepare_model",
]
