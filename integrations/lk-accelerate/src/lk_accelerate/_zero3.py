"""DeepSpeed ZeRO-3: make the parameters a fused Function reads be gathered when it runs.

ZeRO-3 keeps each parameter partitioned across ranks and gathers it in forward (and
backward) hooks that it registers on every module, one module at a time. A fused Function
reads ``proj.base_layer.weight`` and the LoRA weights of several projections directly, inside
its parent module's forward, so those children's hooks never run: it would see the empty
partitions. Marking an ancestor a ZeRO-3 *leaf* module (DeepSpeed's mechanism for modules
that use their children's parameters without calling them, such as MoE blocks) makes
DeepSpeed gather the ancestor's whole subtree in the ancestor's hooks and register no hooks
below it. That is also what lets the fused path run: lk-autograd keeps PEFT's path for a
projection that carries forward hooks, because it cannot know what they do.

Which ancestor: the decoder layer (the classes in the model's ``_no_split_modules``), not the
attention or MLP block. DeepSpeed reduces a leaf's gradients in a full backward hook on it,
which PyTorch fires once the gradients of the module's positional tensor inputs are computed,
or, when there is none requiring grad, as soon as the outputs' gradients arrive: before any
parameter gradient of the module exists, and DeepSpeed then fails on the zero gradients it
substitutes. Decoder layers call their attention with keyword arguments only, so the
attention block has no positional input; the decoder layer takes ``hidden_states``
positionally. For the same reason the first layer's input must require grad, which frozen
embeddings (LoRA) prevent: ``enable_input_require_grads`` fixes it, as gradient checkpointing
does. Both failures were reproduced on DeepSpeed 0.19.8 with and without the fused kernels.
"""

from __future__ import annotations

from torch import nn

_LEAF_FLAG = "_z3_leaf"  # deepspeed.utils.z3_leaf_module reads this attribute


def _lora_layer_type() -> type:
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def _block_classes(model: nn.Module) -> set[str]:
    """Class names transformers keeps whole when splitting a model (its decoder layers)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def mark_zero3_leaves(model: nn.Module) -> list[nn.Module]:
    """Flag each decoder layer that holds LoRA projections as a ZeRO-3 leaf module.

    A flagged layer's parameters are gathered in the layer's own hooks, before any fused
    Function inside it runs, and released after its backward; layers left on PEFT's path
    compute the same under the flag. Must run before ``deepspeed.initialize``
    (``accelerator.prepare`` or the Trainer's train), which registers the hooks. Also makes
    the input embeddings' output require grad (see the module docstring). Returns the flagged
    modules; without DeepSpeed nothing reads the flag.
    """
    lora_layer = _lora_layer_type()
    blocks = _block_classes(model)
    leaves = [
        module
        for module in model.modules()
        if type(module).__name__ in blocks
        and any(isinstance(child, lora_layer) for child in module.modules())
    ]
    for module in leaves:
        setattr(module, _LEAF_FLAG, True)
    if leaves:
        model.enable_input_require_grads()
    return leaves
