"""Named model sizes as plain builder functions, from a `debug` size for tests upwards."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from panglot.backbone.config import TransformerConfig
from panglot.backbone.transformer import Transformer


def debug(vocab_size: int) -> TransformerConfig:
    """~0.07 M parameters + embeddings: unit tests."""
    return TransformerConfig(
        vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=512
    )


def tiny(vocab_size: int) -> TransformerConfig:
    """~3 M parameters + embeddings: CPU quickstart and smoke runs."""
    return TransformerConfig(
        vocab_size=vocab_size, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=704, max_seq_len=1024
    )


def small(vocab_size: int) -> TransformerConfig:
    """~24 M parameters + embeddings: ShapesWorld recipes on CPU or one GPU."""
    return TransformerConfig(
        vocab_size=vocab_size, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1408, max_seq_len=2048
    )


def base(vocab_size: int) -> TransformerConfig:
    """~75 M parameters + embeddings."""
    return TransformerConfig(
        vocab_size=vocab_size, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048, max_seq_len=2048
    )


def large(vocab_size: int) -> TransformerConfig:
    """~280 M parameters + embeddings."""
    return TransformerConfig(
        vocab_size=vocab_size, dim=1024, n_layers=24, n_heads=16, n_kv_heads=8, ffn_dim=2816, max_seq_len=4096
    )


SIZES: dict[str, Callable[[int], TransformerConfig]] = {
    "debug": debug,
    "tiny": tiny,
    "small": small,
    "base": base,
    "large": large,
}


def transformer_config(size: str, vocab_size: int, **overrides: object) -> TransformerConfig:
    """The config of a named size, with any TransformerConfig field overridden."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {list(SIZES)}")
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown TransformerConfig field(s) {unknown}; valid fields: {sorted(fields)}")
    return dataclasses.replace(SIZES[size](vocab_size), **overrides)


def build_transformer(size: str, vocab_size: int, **overrides: object) -> Transformer:
    """A freshly initialised Transformer of a named size (see `SIZES`)."""
    return Transformer(transformer_config(size, vocab_size, **overrides))
