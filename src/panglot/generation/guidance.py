"""Classifier-free guidance for autoregressive decoding (CM3Leon, Chameleon), batched in one forward.

Conditional and unconditional prompts run as one batch of 2B rows: rows [0, B) are conditional and row
B + i is the unconditional partner of row i. Each step, the pair's logits are combined into one row,
one token is sampled from it, and that token is appended to both rows of the pair.

Guidance acts on raw logits, as in CM3Leon: `guided = uncond + scale * (cond - uncond)`, computed as
`cond + (scale - 1) * (cond - uncond)`, the same value that is exactly `cond` at scale 1 (so scale 1
decodes token for token like conditional-only decoding). The training side of the same idea is
condition dropout: the model sees the unconditional layout (caption dropped) a fraction of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """Combines (2B, V) logits, conditional rows first, into guided (B, V) logits."""

    scale: float

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        rows = logits.shape[0]
        if rows % 2:
            raise ValueError(f"CFG needs conditional and unconditional rows in pairs (2B rows), got {rows}")
        cond, uncond = logits.chunk(2, dim=0)  # (B, V) each
        return cond + (self.scale - 1) * (cond - uncond)
