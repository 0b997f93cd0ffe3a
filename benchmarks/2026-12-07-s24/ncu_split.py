"""ncu's target for call2.sh: cuBLAS dY W, then down_backward (the kernel, then cuBLAS dA),
twice each, at 8192 tokens, SiLU, r = 16."""

import torch
from epilogue_variants import data

from lk_autograd import _down_backward as db

dY, W, dXA, A, e, g = data(8192)
for _ in range(2):
    dY @ W
    db.down_backward(dY, W, dXA, A, e, g, "silu", False)
torch.cuda.synchronize()
