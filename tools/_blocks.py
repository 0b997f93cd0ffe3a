"""The bare module the block benchmarks wrap with PEFT: one decoder layer's seven projections."""

import torch
from torch import nn

PROJECTIONS = ("gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj")


class Block(nn.Module):
    """gate/up/down of a gated MLP and q/k/v/o of a GQA attention, without bias."""

    def __init__(self, hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)


def to_nf4(block: nn.Module, dtype: torch.dtype, device: str) -> None:
    """Replace every projection by a bitsandbytes NF4 (double-quant) ``Linear4bit``."""
    import bitsandbytes as bnb

    for name in PROJECTIONS:
        lin = getattr(block, name)
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=dtype,
                              quant_type="nf4", compress_statistics=True)  # fmt: skip
        q.weight = bnb.nn.Params4bit(lin.weight.data.to(dtype), requires_grad=False,
                                     quant_type="nf4", compress_statistics=True)  # fmt: skip
        q.weight = q.weight._quantize(device) if device == "cpu" else q.weight.to(device)
        setattr(block, name, q)
    block.is_loaded_in_4bit = True
