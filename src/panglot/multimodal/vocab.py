"""The unified vocabulary: text ids, then one contiguous block of ids per discrete codec.

LM id layout::

    [0, n_text)                      text tokenizer ids (special tokens first: <pad>, <bos>, ..., <boi>, <eoi>)
    [offset_k, offset_k + V_k)       codec k's ids (pixel VQ, semantic VQ, Q-Former, speech ...)

A continuous codec (MetaMorph-style embeddings) has no id block: its span holds ``tokens_per_item`` copies
of a placeholder id whose embeddings the model replaces. Every span is ``begin, item tokens..., end``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from panglot.codecs.text import TextTokenizer


class PlaceholderError(ValueError):
    """A modality span with the wrong number or kind of tokens."""


@dataclass(frozen=True)
class ModalitySlot:
    """Where one codec's tokens live in the LM vocabulary."""

    name: str  # "image", "speech", ...
    begin: str  # special token that opens a span, e.g. "<boi>"
    end: str  # special token that closes it, e.g. "<eoi>"
    tokens_per_item: int
    vocab_size: int  # 0 for a continuous codec
    offset: int  # first LM id of the block (or the placeholder id of a continuous codec)

    @property
    def continuous(self) -> bool:
        return self.vocab_size == 0

    @property
    def id_range(self) -> tuple[int, int]:
        """[lo, hi) of the LM ids that may appear inside a span."""
        return (self.offset, self.offset + max(self.vocab_size, 1))


class UnifiedVocab:
    """Maps codec ids <-> LM ids and checks modality spans."""

    def __init__(self, text: TextTokenizer, slots: Sequence[ModalitySlot]):
        self.text = text
        self.slots = {s.name: s for s in slots}
        self.size = max([text.vocab_size] + [s.id_range[1] for s in slots])
        self._begin = {text.token_to_id(s.begin): s for s in slots}
        self._end_ids = {s.name: text.token_to_id(s.end) for s in slots}

    @classmethod
    def build(cls, text: TextTokenizer, codecs: Sequence[tuple[str, object, str, str]]) -> UnifiedVocab:
        """``codecs``: (slot name, codec, begin token, end token); blocks are laid out after the text ids in order."""
        slots, offset = [], text.vocab_size
        for name, codec, begin, end in codecs:
            vocab_size = int(codec.vocab_size)
            slots.append(ModalitySlot(name, begin, end, int(codec.tokens_per_item), vocab_size, offset))
            offset += max(vocab_size, 1)
        return cls(text, slots)

    # ----- ids -----

    def special(self, name: str) -> int:
        return self.text.token_to_id(name)

    def slot(self, name: str) -> ModalitySlot:
        if name not in self.slots:
            raise KeyError(f"no modality slot {name!r}; this vocabulary has {list(self.slots)}")
        return self.slots[name]

    def to_lm(self, name: str, codes: torch.Tensor) -> torch.Tensor:
        """Codec ids ``(B, N)`` -> LM ids ``(B, N)``."""
        slot = self.slot(name)
        if codes.min() < 0 or codes.max() >= slot.vocab_size:
            raise ValueError(f"{name} codes must lie in [0, {slot.vocab_size}), got [{codes.min()}, {codes.max()}]")
        return codes.long() + slot.offset

    def from_lm(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """LM ids ``(B, N)`` -> codec ids ``(B, N)``; an id outside the codec's block is an error."""
        slot = self.slot(name)
        lo, hi = slot.id_range
        ids = torch.as_tensor(ids)
        bad = (ids < lo) | (ids >= hi)
        if bad.any():
            raise PlaceholderError(f"{name} span holds {int(bad.sum())} ids outside the {name} block [{lo}, {hi})")
        return ids.long() - slot.offset

    def span(self, name: str, codes: torch.Tensor | Sequence[int]) -> list[int]:
        """``begin, LM ids of one item's codes, end`` (a continuous slot repeats its placeholder)."""
        slot = self.slot(name)
        if slot.continuous:
            return [self.special(slot.begin), *[slot.offset] * slot.tokens_per_item, self._end_ids[name]]
        codes = torch.as_tensor(codes).reshape(-1)
        if codes.numel() != slot.tokens_per_item:
            raise PlaceholderError(
                f"{name} item: expected {slot.tokens_per_item} tokens, found {codes.numel()}"
            )
        return [self.special(slot.begin), *self.to_lm(name, codes[None])[0].tolist(), self._end_ids[name]]

    def check_spans(self, ids: Sequence[int]) -> list[tuple[str, int, int]]:
        """Validate every modality span of a sequence; return (slot, start, stop) of each span's tokens.

        Raises :class:`PlaceholderError` naming the expected and found counts for a short or long span, an
        unclosed span, or an LM id of a codec block found outside its span.
        """
        spans, i, ids = [], 0, list(ids)
        code_of = [(s, *s.id_range) for s in self.slots.values()]
        while i < len(ids):
            slot = self._begin.get(ids[i])
            if slot is None:
                stray = next((s.name for s, lo, hi in code_of if lo <= ids[i] < hi and not s.continuous), None)
                if stray:
                    raise PlaceholderError(f"{stray} token id {ids[i]} at position {i} is outside a {stray} span")
                i += 1
                continue
            end_id = self._end_ids[slot.name]
            try:
                stop = ids.index(end_id, i + 1)
            except ValueError:
                raise PlaceholderError(f"{slot.name} span opened at position {i} is never closed by {slot.end}") from None
            found = stop - i - 1
            if found != slot.tokens_per_item:
                raise PlaceholderError(
                    f"{slot.name} span at position {i}: expected {slot.tokens_per_item} tokens, found {found}"
                )
            lo, hi = slot.id_range
            if any(not lo <= t < hi for t in ids[i + 1 : stop]):
                raise PlaceholderError(f"{slot.name} span at position {i} holds ids outside [{lo}, {hi})")
            spans.append((slot.name, i + 1, stop))
            i = stop + 1
        return spans

    # ----- persistence -----

    def to_json(self) -> dict:
        return {"text_vocab_size": self.text.vocab_size, "slots": [asdict(s) for s in self.slots.values()]}

    @classmethod
    def from_json(cls, text: TextTokenizer, data: dict) -> UnifiedVocab:
        if data["text_vocab_size"] != text.vocab_size:
            raise ValueError(
                f"vocabulary was built for a text tokenizer of {data['text_vocab_size']} ids, "
                f"this tokenizer has {text.vocab_size}"
            )
        return cls(text, [ModalitySlot(**s) for s in data["slots"]])
