"""Samplers: turn processed logits (B, V) into one token id per row.

A sampler is started once per `generate` call (`start(n_rows, n_steps, device)`) and returns a function
`(logits (B, V), step) -> ids (B,)`; the built-in ones return a :class:`SampleRun`, which splits that into the
step's noise (drawn up front) and a pure tensor function of logits and noise, so that compiled decoding can fuse
the pick into the step's graph. :class:`Multinomial` gives every row its own seeded
`torch.Generator`, draws that row's uniforms for all steps up front (on CPU, so the result does not
depend on the device) and samples by inverse CDF: a row's tokens depend only on its prompt and its seed,
not on which other rows share the batch (up to float rounding in the forward), and the hot loop has no
per-row Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

SampleFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class SampleRun:
    """One decoding run's sampling: ``ids = pick(logits, noise(step))``; callable as a `SampleFn`.

    ``pick(logits (B, V), noise (B,) or None) -> ids (B,)`` is a plain tensor function (no step, no state),
    ``draws`` (B, n_steps) the noise of every step, or None."""

    pick: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    draws: torch.Tensor | None = None

    def noise(self, step: int) -> torch.Tensor | None:
        return None if self.draws is None else self.draws[:, step]

    def __call__(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        return self.pick(logits, self.noise(step))


def pick_argmax(logits: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    return logits.argmax(dim=-1)


class Sampler(Protocol):
    def start(self, n_rows: int, n_steps: int, device: torch.device) -> SampleFn:
        """A function `(logits (n_rows, V) float, step) -> ids (n_rows,) long` for one decoding run."""
        ...


@dataclass(frozen=True)
class Greedy:
    """Argmax decoding (the first id among equal maxima)."""

    def start(self, n_rows: int, n_steps: int, device: torch.device) -> SampleRun:
        return SampleRun(pick_argmax)


@dataclass(frozen=True)
class Multinomial:
    """Samples from softmax(logits); `seed` is an int (row i gets seed + i) or one seed per row."""

    seed: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, Sequence):
            object.__setattr__(self, "seed", tuple(int(s) for s in self.seed))

    def row_seeds(self, n_rows: int) -> tuple[int, ...]:
        if isinstance(self.seed, int):
            return tuple(self.seed + i for i in range(n_rows))
        if len(self.seed) != n_rows:
            raise ValueError(f"Multinomial has {len(self.seed)} row seeds for a batch of {n_rows} prompts")
        return self.seed

    def start(self, n_rows: int, n_steps: int, device: torch.device) -> SampleRun:
        uniforms = torch.stack(
            [
                torch.rand(n_steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
                for seed in self.row_seeds(n_rows)
            ]
        ).to(device)  # (B, n_steps) in [0, 1)
        return SampleRun(sample_inverse_cdf, uniforms)


def sample_inverse_cdf(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """logits (B, V), uniforms (B,) in [0, 1) -> ids (B,) distributed as softmax(logits).

    Picks the first id whose cumulative probability exceeds `u * total`; never an id of probability 0
    (a -inf logit), even when rounding puts `u * total` at the very top of the CDF.
    """
    probs = logits.double().softmax(dim=-1)  # (B, V)
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)  # (B, 1)
    ids = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    last_possible = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(ids, last_possible)
