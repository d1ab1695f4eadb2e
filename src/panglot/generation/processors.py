"""Logits processors: small, composable functions `(logits, state) -> logits` applied before sampling.

Every processor receives the next-token logits of every row as float32 `(B, V)` and a read-only
:class:`DecodeState` (the tokens so far), and returns logits of the same shape. Processors that forbid
tokens set their logits to `-inf`; they never renormalise, so they compose in any order. The usual order
is: constraints (:class:`ModalityConstraint`, :class:`AllowOnly`, :class:`Forbid`) first, then
:class:`Temperature`, :class:`TopK`, :class:`TopP`, so that top-k/top-p choose among allowed tokens only.

Processors hold no state of their own: :class:`ModalityConstraint` rereads its position from
`state.tokens` each step with a few tensor ops, so one instance serves any number of `generate` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from panglot.multimodal import UnifiedVocab


@dataclass(frozen=True)
class DecodeState:
    """What processors may read at one decoding step.

    `tokens` (B, L) long holds each row's prompt (left-padded) followed by the tokens generated so far;
    `valid` (B, L) bool is False on the left padding; `step` counts generated tokens (0 before the first).
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    step: int


class LogitsProcessor(Protocol):
    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """logits (B, V) float32 -> logits (B, V) float32."""
        ...


class ProcessorList:
    """Applies processors in order; itself a :class:`LogitsProcessor`."""

    def __init__(self, processors: Sequence[LogitsProcessor] = ()) -> None:
        self.processors = tuple(processors)

    def __repr__(self) -> str:
        return f"ProcessorList({list(self.processors)})"

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        for processor in self.processors:
            logits = processor(logits, state)
        return logits


@dataclass(frozen=True)
class Temperature:
    """Divides logits by `temperature` (> 0); greedy decoding is the `Greedy` sampler, not temperature 0."""

    temperature: float

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature}; use the Greedy sampler for argmax decoding"
            )

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        return logits / self.temperature


@dataclass(frozen=True)
class TopK:
    """Keeps the `k` largest logits of each row (ties with the k-th are kept), sets the rest to -inf."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"top-k needs k >= 1, got {self.k}")

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, float("-inf"))


@dataclass(frozen=True)
class TopP:
    """Nucleus sampling: keeps the smallest set of most likely tokens whose probability reaches `p`.

    A token is kept when the probability of the tokens ranked above it is below `p`, so the most likely
    token is always kept and `p = 1` keeps everything.
    """

    p: float

    def __post_init__(self) -> None:
        if not 0 < self.p <= 1:
            raise ValueError(f"top-p needs 0 < p <= 1, got {self.p}")

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        if self.p == 1:
            return logits
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_above = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_above >= self.p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


@dataclass(frozen=True)
class AllowOnly:
    """Allows only ids in [lo, hi), e.g. one codec's block of the LM vocabulary."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 0 <= self.lo < self.hi:
            raise ValueError(f"AllowOnly needs 0 <= lo < hi, got lo={self.lo}, hi={self.hi}")

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        ids = torch.arange(logits.shape[-1], device=logits.device)
        return logits.masked_fill((ids < self.lo) | (ids >= self.hi), float("-inf"))


@dataclass(frozen=True)
class Forbid:
    """Never allows the given ids (e.g. `<pad>`, or task markers the model should not emit)."""

    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))
        if not self.ids or any(i < 0 for i in self.ids):
            raise ValueError(f"Forbid needs one or more non-negative ids, got {list(self.ids)}")

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        logits = logits.clone()
        logits[:, list(self.ids)] = float("-inf")
        return logits


@dataclass(frozen=True)
class ModalityConstraint:
    """Per-row state machine for spans of one modality: `begin_id [tokens_per_item codes] end_id`.

    Inside a span (the row's last `begin_id` comes after its last `end_id`; the prompt may end inside
    one, as in text-to-image prompts that end with `<boi>`): only codes in [code_lo, code_hi) are
    allowed until the span holds `tokens_per_item` of them, and then only `end_id`.
    Outside a span: codes and `end_id` are never allowed; `begin_id` is allowed to open a span when
    `allow_begin` (interleaved generation) and forbidden otherwise (text-only answers).

    Several modalities compose as several instances (each forbids its own codes outside its spans).
    The state is recomputed from `state.tokens` each step: O(B * L) tensor work, no Python per row.
    """

    code_lo: int
    code_hi: int
    begin_id: int
    end_id: int
    tokens_per_item: int
    allow_begin: bool = True

    def __post_init__(self) -> None:
        errors = []
        if not 0 <= self.code_lo < self.code_hi:
            errors.append(f"code range needs 0 <= code_lo < code_hi, got [{self.code_lo}, {self.code_hi})")
        if self.tokens_per_item < 1:
            errors.append(f"tokens_per_item must be >= 1, got {self.tokens_per_item}")
        if self.begin_id == self.end_id:
            errors.append(f"begin_id and end_id must differ, both are {self.begin_id}")
        for name in ("begin_id", "end_id"):
            if self.code_lo <= getattr(self, name) < self.code_hi:
                errors.append(
                    f"{name} {getattr(self, name)} lies in the code range [{self.code_lo}, {self.code_hi})"
                )
        if errors:
            raise ValueError("invalid ModalityConstraint: " + "; ".join(errors))

    @classmethod
    def for_slot(cls, vocab: UnifiedVocab, name: str, *, allow_begin: bool = True) -> ModalityConstraint:
        """The constraint for one discrete modality slot of a unified vocabulary (e.g. "image")."""
        slot = vocab.slot(name)
        if slot.continuous:
            raise ValueError(f"slot {name!r} is continuous (no code ids to sample); expected a discrete slot")
        return cls(
            *slot.id_range,
            begin_id=vocab.special(slot.begin),
            end_id=vocab.special(slot.end),
            tokens_per_item=slot.tokens_per_item,
            allow_begin=allow_begin,
        )

    def span_state(self, tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens, valid (B, L) -> in_span (B,) bool, codes emitted in the open span so far (B,) long."""
        slots = torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
        last_begin = torch.where((tokens == self.begin_id) & valid, slots, -1).amax(dim=1)  # (B,)
        last_end = torch.where((tokens == self.end_id) & valid, slots, -1).amax(dim=1)
        in_span = last_begin > last_end
        n_codes = ((slots > last_begin[:, None]) & valid).sum(dim=1)
        return in_span, n_codes

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        in_span, n_codes = self.span_state(state.tokens, state.valid)
        ids = torch.arange(logits.shape[-1], device=logits.device)  # (V,)
        is_code = (ids >= self.code_lo) & (ids < self.code_hi)
        is_end = ids == self.end_id
        allowed_inside = torch.where((n_codes < self.tokens_per_item)[:, None], is_code, is_end)  # (B, V)
        forbidden_outside = is_code | is_end
        if not self.allow_begin:
            forbidden_outside = forbidden_outside | (ids == self.begin_id)
        allowed = torch.where(in_span[:, None], allowed_inside, ~forbidden_outside)
        return logits.masked_fill(~allowed, float("-inf"))


class FollowText:
    """Each row writes a given text token by token, where the text holds ``SLOT`` one of the ``free`` ids (its
    choice), then ``end_id``; after that the row is unconstrained.

    A describing run answers after a description it writes itself; with this the description is one given to it
    (its own best caption, say) with slots where its marks go, so the model writes only the marks' values and then
    its answer. ``texts`` are one list per row of the ``generate`` call; every row starts at step 0.
    """

    SLOT = -1

    def __init__(self, texts: Sequence[Sequence[int]], free: Sequence[int], end_id: int) -> None:
        if not texts:
            raise ValueError("FollowText needs one text per row, got none")
        if not free:
            raise ValueError("FollowText needs at least one free id for its slots")
        longest = max(len(t) for t in texts)
        self.texts = torch.full((len(texts), longest + 1), end_id, dtype=torch.long)
        for row, text in enumerate(texts):
            self.texts[row, : len(text)] = torch.tensor(list(text), dtype=torch.long)
        self.free = torch.tensor(sorted({int(i) for i in free}), dtype=torch.long)
        self.end_id = end_id

    def __repr__(self) -> str:
        return f"FollowText({len(self.texts)} rows, free={self.free.tolist()}, end_id={self.end_id})"

    def __call__(self, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        if len(self.texts) != len(logits):
            raise ValueError(f"FollowText holds {len(self.texts)} texts for a batch of {len(logits)} rows")
        if state.step >= self.texts.shape[1]:
            return logits
        texts, free = self.texts.to(logits.device), self.free.to(logits.device)
        generated = state.tokens[:, state.tokens.shape[1] - state.step :]  # (B, step)
        ended = (generated == self.end_id).any(dim=1)
        wanted = texts[:, state.step]  # (B,)
        slot = wanted == self.SLOT
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        allowed[:, free] = slot[:, None]  # a slot allows the free ids
        rows = (~slot).nonzero().squeeze(1)
        allowed[rows, wanted[rows]] = True  # elsewhere the text's next id
        return logits.masked_fill(~allowed & ~ended[:, None], float("-inf"))


def modality_constraints(vocab: UnifiedVocab, *, allow_begin: bool = True) -> list[ModalityConstraint]:
    """One :class:`ModalityConstraint` per discrete slot of `vocab`.

    `allow_begin=False` gives text-only answers (captions, VQA): no span may be opened, and a span the
    prompt left open is still completed.
    """
    return [
        ModalityConstraint.for_slot(vocab, name, allow_begin=allow_begin)
        for name, slot in vocab.slots.items()
        if not slot.continuous
    ]
