"""Classifier-free guidance for autoregressive decoding (CM3Leon, Chameleon), batched in one forward.

Conditional and unconditional prompts run as one batch of 2B rows: rows [0, B) are conditional and row
B + i is the unconditional partner of row i. Each step, the pair's logits are combined into one row,
one token is sampled from it, and that token is appended to both rows of the pair.

Guidance acts on raw logits, as in CM3Leon: `guided = uncond + scale * (cond - uncond)`, computed as
`cond + (scale - 1) * (cond - uncond)`, the same value that is exactly `cond` at scale 1 (so scale 1
decodes token for token like conditional-only decoding). The training side of the same idea is
condition dropout: the model sees the unconditional layout (caption dropped) a fraction of the time.

`plausibility` alpha > 0 adds the adaptive plausibility constraint of contrastive decoding (Li et al. 2023; CM3Leon's
CD-K keeps one branch's top-k tokens instead): guidance only re-ranks the tokens the conditional model
finds plausible, p_cond(token) >= alpha * max p_cond; every other token ranks below all of them (its conditional
logit less ``IMPLAUSIBLE``), so a token both branches find unlikely is never lifted by a large scale, and a later
processor that forbids every plausible token (the modality constraint) still leaves the rest in the conditional's
order rather than nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IMPLAUSIBLE = 1.0e4  # how far below the plausible tokens the others are put (exp(-1e4 / T) is 0 in float32)


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """Combines (2B, V) logits, conditional rows first, into guided (B, V) logits."""

    scale: float
    plausibility: float = 0.0  # alpha of the plausibility constraint (module docstring); 0: off

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")
        if not 0.0 <= self.plausibility < 1.0:
            raise ValueError(f"guidance plausibility must be in [0, 1), got {self.plausibility}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        rows = logits.shape[0]
        if rows % 2:
            raise ValueError(f"CFG needs conditional and unconditional rows in pairs (2B rows), got {rows}")
        cond, uncond = logits.chunk(2, dim=0)  # (B, V) each
        guided = cond + (self.scale - 1) * (cond - uncond)
        if self.plausibility > 0:  # log p_i - log p_max = logit_i - logit_max
            floor = cond.max(dim=-1, keepdim=True).values + math.log(self.plausibility)
            guided = torch.where(cond >= floor, guided, cond - IMPLAUSIBLE)
        return guided
