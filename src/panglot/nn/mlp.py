"""Feed-forward blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from panglot.nn.linear import stack_linears


class SwiGLU(nn.Module):
    """`w2(silu(w1 x) * w3 x)` (Shazeer 2020), the Llama feed-forward block.

    `fuse_gate_up()` turns an inference copy's w1 and w3 into one matmul.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w13: nn.Linear | None = None  # set by fuse_gate_up

    def fuse_gate_up(self) -> None:
        """Replace w1 and w3 by one Linear `w13` over their stacked weights (one matmul instead of two).
        For inference copies: the state_dict keys change (see `Transformer.for_decoding`).
        """
        if self.w13 is not None:
            return
        self.w13 = stack_linears(self.w1, self.w3)
        self.w1 = self.w3 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if self.w13 is None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)
