"""Fused LoRA autograd Functions (in progress: see the lk-autograd issue)."""

__all__: list[str] = []
