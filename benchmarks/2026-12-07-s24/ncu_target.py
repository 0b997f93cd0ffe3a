"""down_backward at 8192 tokens, SiLU, r = 16, launched 4 times: ncu's target (call1.sh)."""

import torch

from lk_autograd import _down_backward as db

torch.manual_seed(0)
bf16 = {"device": "cuda", "dtype": torch.bfloat16}
dY, dXA = torch.randn(8192, 4096, **bf16), torch.randn(8192, 16, **bf16)
W, A = torch.randn(4096, 14336, **bf16) * 0.02, torch.randn(16, 14336, **bf16) * 0.02
e, g = torch.randn(8192, 14336, **bf16), torch.randn(8192, 14336, **bf16)
for _ in range(4):
    db.down_backward(dY, W, dXA, A, e, g, "silu", False)
torch.cuda.synchronize()
