"""SEED's causal Q-Former image codec: 64 x 64 RGB <-> 32 causal ids, decoded by a diffusion detokenizer
(kind ``image_qformer``)."""

from panglot.codecs.image_qformer.model import (
    DetokenizerConfig,
    FrozenFeatures,
    QFormerCodec,
    QFormerCodecConfig,
    QFormerConfig,
    detokenizer_loss,
    qformer_loss,
)

__all__ = [
    "DetokenizerConfig",
    "FrozenFeatures",
    "QFormerCodec",
    "QFormerCodecConfig",
    "QFormerConfig",
    "detokenizer_loss",
    "qformer_loss",
]
