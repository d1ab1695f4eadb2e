"""Text codec: byte-level BPE (HF ``tokenizers``) and the special-token registry shared by all codecs."""

from panglot.codecs.text.special import DEFAULT_SPECIALS, SpecialTokens, UnknownSpecialToken
from panglot.codecs.text.tokenizer import (
    WORLD_VOCAB_SIZE,
    TextTokenizer,
    check_words,
    train_world_tokenizer,
    unknown_words,
    words_of,
)

__all__ = [
    "DEFAULT_SPECIALS",
    "WORLD_VOCAB_SIZE",
    "SpecialTokens",
    "TextTokenizer",
    "UnknownSpecialToken",
    "check_words",
    "train_world_tokenizer",
    "unknown_words",
    "words_of",
]
