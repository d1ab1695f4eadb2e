"""The one registry of special tokens shared by every part of panglot.

A :class:`SpecialTokens` registry is a frozen, ordered tuple of names such as ``<boi>``. A tokenizer trained
with a registry gives its tokens the ids ``0 .. len(registry) - 1`` in registry order, so ids are stable
as long as registries only grow at the end: :meth:`SpecialTokens.extend` returns a new, longer registry and
never reorders or renames what is already there.

There is no ``<unk>``: byte-level BPE covers every byte, so every string has an encoding. Words the world
never taught are caught before encoding instead (``panglot.codecs.text.tokenizer.check_words``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Sequence structure.
PAD = "<pad>"
BOS = "<bos>"
EOS = "<eos>"
# Modality spans: begin / end of an image, a video, a speech segment.
BOI = "<boi>"
EOI = "<eoi>"
BOV = "<bov>"
EOV = "<eov>"
BOS_SPEECH = "<bos_speech>"
EOS_SPEECH = "<eos_speech>"
# Task markers.
CAPTION = "<caption>"
VQA = "<vqa>"
T2I = "<t2i>"
EDIT = "<edit>"
# Chat roles.
USER = "<user>"
ASSISTANT = "<assistant>"
# CM3 causal masking: a span is replaced by <mask> and reproduced after <infill> at the end of the document.
MASK = "<mask>"
INFILL = "<infill>"
# Retrieval augmentation: retrieved documents come first, each closed by <doc_sep>.
RETRIEVED = "<retrieved>"
DOC_SEP = "<doc_sep>"
# Stands in for a dropped condition (classifier-free guidance: training dropout and the unconditional pass).
UNCOND = "<uncond>"

_NAME = re.compile(r"<[a-z][a-z0-9_]*>")


class UnknownSpecialToken(KeyError):
    """A special-token name that the registry does not hold."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown special token {self.name!r}; the registry holds {list(self.known)}"


def validate_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` looks like ``<lower_snake>``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid special-token name {name!r}: expected '<' + lowercase letters, digits or '_' + '>',"
            " starting with a letter, e.g. '<boi>'"
        )


@dataclass(frozen=True)
class SpecialTokens:
    """An ordered, duplicate-free set of special-token names; position = id in a tokenizer trained with it."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in self.names:
            validate_name(name)
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate special tokens {duplicates}")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def index(self, name: str) -> int:
        """Position of ``name`` in the registry; :class:`UnknownSpecialToken` if it is not there."""
        if name not in self.names:
            raise UnknownSpecialToken(name, self.names)
        return self.names.index(name)

    def extend(self, names: Iterable[str]) -> SpecialTokens:
        """A new registry with ``names`` appended; the existing names keep their positions."""
        names = tuple(names)
        clashes = [n for n in names if n in self.names]
        if clashes:
            raise ValueError(f"special tokens {clashes} are already registered")
        return SpecialTokens(self.names + names)

    def starts_with(self, other: SpecialTokens) -> bool:
        """True when ``other`` is this registry or an earlier version of it (a prefix)."""
        return self.names[: len(other)] == other.names


DEFAULT_SPECIALS = SpecialTokens(
    (
        PAD, BOS, EOS,
        BOI, EOI, BOV, EOV, BOS_SPEECH, EOS_SPEECH,
        CAPTION, VQA, T2I, EDIT,
        USER, ASSISTANT,
        MASK, INFILL,
        RETRIEVED, DOC_SEP,
        UNCOND,
    )
)  # fmt: skip
