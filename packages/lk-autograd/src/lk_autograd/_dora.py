"""DoRA's column scale, as PEFT's ``DoraLinearLayer`` computes it.

``n = ||W + s B A||`` per output row (``W`` ``[o, k]``, in the adapter dtype), treated as a
constant (PEFT detaches it, following section 4.3 of the DoRA paper), and ``c = m / n``.
"""

import torch
from torch import Tensor


@torch.no_grad()
def magnitude_scale(
    W: Tensor, A: Tensor, B: Tensor, m: Tensor, s: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Return ``(c, n)``, both ``[o]``: the DoRA scale ``m / n`` and the detached weight norm."""
    V = torch.addmm(W.to(dtype), B.to(dtype), A.to(dtype), alpha=s)
    n = torch.linalg.vector_norm(V, dim=1)
    del V
    return m / n, n
