"""Byte-level BPE text tokenizer (HF ``tokenizers``) with panglot's special-token registry.

Byte-level BPE (GPT-2 pre-tokenizer) with one space always put in front of the text before encoding and
taken off again when decoding (as SentencePiece does). So every word is seen with its leading space, also
the first word of a text or a one-word answer: ``"red"`` is the same token in ``"red"`` and ``"a red circle"``,
and every ShapesWorld word is a single token once the vocabulary is large enough (:data:`WORLD_VOCAB_SIZE`).
Every string encodes, and ``decode(encode(text)) == text`` byte for byte, spaces included. Decoding a
continuation on its own drops its first space; decode the whole sequence to keep it.

Special tokens get ids ``0 .. len(registry) - 1`` and are only ever inserted by id (:meth:`token_to_id`):
``encode`` treats a literal ``"<eos>"`` in user text as plain text, so prompts cannot forge structure.

Byte-level BPE never fails on a word, so the words of the training text are kept alongside the tokenizer
(``words.json``); :func:`check_words` names the words of a prompt that the model has never seen.

Saved layout of a tokenizer directory::

    tokenizer.json    the HF tokenizer (model, pre-tokenizer, decoder, special tokens)
    text_codec.json   {"kind": "text_bpe", "version": 1, "special": {name: id, ...}}
    words.json        sorted list of the words seen in training
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from panglot.codecs.text.special import DEFAULT_SPECIALS, SpecialTokens, UnknownSpecialToken

KIND = "text_bpe"
VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
CODEC_FILE = "text_codec.json"
WORDS_FILE = "words.json"

# An upper bound, not the size reached: merges never cross word boundaries, so BPE stops once every word
# seen at least twice is one token. The canonical language (52 words) stops at 433 = 256 bytes + 20 special
# tokens + 157 merges; the bound leaves room for paraphrase vocabulary.
WORLD_VOCAB_SIZE = 1024

_WORD = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    """The words of ``text`` in order (runs of letters, digits or ``_``; punctuation and spaces split)."""
    return _WORD.findall(text)


def unknown_words(text: str, known_words: Iterable[str]) -> list[str]:
    """Words of ``text`` not in ``known_words``, each once, in order of first appearance (case-sensitive)."""
    known = set(known_words)
    return list(dict.fromkeys(w for w in words_of(text) if w not in known))


def check_words(text: str, known_words: Iterable[str]) -> None:
    """Raise ``ValueError`` naming every word of ``text`` never seen in training, with close known words."""
    known = sorted(set(known_words))
    unknown = unknown_words(text, known)
    if not unknown:
        return
    described = []
    for word in unknown:
        close = difflib.get_close_matches(word, known, n=3)
        described.append(f"{word!r} (did you mean {' or '.join(map(repr, close))}?)" if close else repr(word))
    raise ValueError(
        f"unknown words in {text!r}: {', '.join(described)}; the model only knows the {len(known)} words"
        " of its training text (case-sensitive)"
    )


def _require_text(text: str, where: str = "") -> None:
    if not isinstance(text, str):
        raise TypeError(f"expected a str prompt{where}, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"empty prompt{where}: expected some text, got {text!r}")


class TextTokenizer:
    """A trained byte-level BPE tokenizer, its special-token registry and the words it was trained on.

    Build one with :meth:`train` or :meth:`load`; the constructor wraps parts that already agree.
    """

    def __init__(self, tokenizer: Tokenizer, special: SpecialTokens, words: Iterable[str]) -> None:
        self._tok = tokenizer
        self._tok.encode_special_tokens = True  # a literal "<eos>" in user text stays text
        self.special = special
        self.words = frozenset(words)
        self._special_ids = {name: self._tok.token_to_id(name) for name in special}
        missing = [name for name, i in self._special_ids.items() if i is None]
        if missing:
            raise ValueError(
                f"special tokens {missing} of the registry are not in the tokenizer's vocabulary"
            )

    # ----- construction -----

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = WORLD_VOCAB_SIZE,
        special: SpecialTokens = DEFAULT_SPECIALS,
        min_frequency: int = 2,
    ) -> TextTokenizer:
        """Train byte-level BPE on ``texts``; merges stop at ``vocab_size`` or when no pair is frequent enough."""
        minimum = 256 + len(special)
        if vocab_size < minimum:
            raise ValueError(
                f"vocab_size {vocab_size} too small: need at least {minimum} "
                f"(256 bytes + {len(special)} special tokens)"
            )
        words: set[str] = set()

        def counted(items: Iterable[str]):
            for text in items:
                words.update(words_of(text))
                yield text

        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Prepend(" ")
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(counted(texts), trainer=trainer)
        if not words:
            raise ValueError("no training text: expected an iterable of non-empty strings")
        return cls(tok, special, words)

    def add_special(self, special: SpecialTokens) -> TextTokenizer:
        """A tokenizer that also knows the names ``special`` adds to this one's registry (ids appended, so
        every existing id stays the same). ``special`` must extend the current registry."""
        if not special.starts_with(self.special):
            raise ValueError(
                f"registry {list(special)} does not extend the tokenizer's registry {list(self.special)}: "
                "existing special tokens must keep their order"
            )
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.add_special_tokens(list(special.names[len(self.special) :]))
        return TextTokenizer(tok, special, self.words)

    # ----- encoding -----

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are ``0 .. vocab_size - 1``)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens are added; ``ValueError`` for an empty prompt)."""
        _require_text(text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for each text, in one parallel call."""
        for i, text in enumerate(texts):
            _require_text(text, where=f" at index {i}")
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless ``skip_special`` is False."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} outside the text vocabulary [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, name: str) -> int:
        """Id of a special token, e.g. ``token_to_id("<boi>")``; :class:`UnknownSpecialToken` otherwise."""
        if name not in self._special_ids:
            raise UnknownSpecialToken(name, self.special.names)
        return self._special_ids[name]

    @property
    def special_ids(self) -> dict[str, int]:
        """Every special token's id, in registry order."""
        return dict(self._special_ids)

    # ----- vocabulary checks -----

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` never seen in the training text."""
        return unknown_words(text, self.words)

    def check_words(self, text: str) -> None:
        """Raise ``ValueError`` naming the words of ``text`` never seen in the training text."""
        check_words(text, self.words)

    # ----- persistence -----

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json``, ``text_codec.json`` and ``words.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / TOKENIZER_FILE))
        meta = {"kind": KIND, "version": VERSION, "special": self._special_ids}
        (directory / CODEC_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (directory / WORDS_FILE).write_text(json.dumps(sorted(self.words), indent=0) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TextTokenizer:
        """Load a tokenizer saved by :meth:`save`; errors name the directory and what was expected."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no text tokenizer at {directory}: not a directory")
        expected = (TOKENIZER_FILE, CODEC_FILE, WORDS_FILE)
        missing = [name for name in expected if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory} is not a text tokenizer directory: missing {missing} (expected {list(expected)})"
            )
        meta = _read_json(directory / CODEC_FILE, dict)
        if meta.get("kind") != KIND:
            raise ValueError(f"{directory / CODEC_FILE} has kind {meta.get('kind')!r}, expected {KIND!r}")
        if meta.get("version") != VERSION:
            raise ValueError(
                f"{directory / CODEC_FILE} has version {meta.get('version')!r}; this panglot reads {VERSION}"
            )
        special_ids = meta.get("special")
        if not isinstance(special_ids, dict):
            raise ValueError(f"{directory / CODEC_FILE} has no 'special' mapping of name -> id")
        words = _read_json(directory / WORDS_FILE, list)
        try:
            tok = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise ValueError(f"cannot read {directory / TOKENIZER_FILE}: {e}") from e
        loaded = cls(tok, SpecialTokens(tuple(special_ids)), words)
        if loaded.special_ids != special_ids:
            raise ValueError(
                f"special-token ids in {directory / TOKENIZER_FILE} {loaded.special_ids} do not match "
                f"{directory / CODEC_FILE} {special_ids}"
            )
        return loaded


def _read_json(path: Path, expected_type: type):
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, expected_type):
        raise ValueError(f"{path} should hold a JSON {expected_type.__name__}, got {type(value).__name__}")
    return value


def train_world_tokenizer(
    texts: Iterable[str], vocab_size: int = WORLD_VOCAB_SIZE, special: SpecialTokens = DEFAULT_SPECIALS
) -> TextTokenizer:
    """The ShapesWorld text tokenizer: byte-level BPE trained on the world's text (captions, questions,
    answers, edits, paraphrases), sized so each world word is a single token."""
    return TextTokenizer.train(texts, vocab_size=vocab_size, special=special)
