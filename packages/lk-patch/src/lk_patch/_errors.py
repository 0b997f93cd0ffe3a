"""Errors raised by lk_patch. Each message says what to do about it."""


class PatchError(RuntimeError):
    """Base class: patching could not be done, and the model was left untouched."""


class UnsupportedArchitectureError(PatchError):
    """The model's ``model_type`` has no entry in the registry."""


class SourceMismatchError(PatchError):
    """A registered class's source no longer has the statements the rewrite looks for."""


class NoLoraError(PatchError):
    """The model has no PEFT LoRA layers, so there is nothing to fuse."""


class RemoteCodeError(PatchError):
    """The model's classes come from ``trust_remote_code``, whose source we never verified."""
