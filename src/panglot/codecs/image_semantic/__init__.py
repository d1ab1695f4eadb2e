"""Semantic VQ image codec (ILLUME): 64 x 64 RGB <-> 64 discrete ids whose codes reconstruct a frozen
semantic teacher's per-patch features (kind ``image_semantic_vq``)."""

from panglot.codecs.image_semantic.model import (
    SemanticVQ,
    SemanticVQConfig,
    SemanticVQOutput,
    feature_cosine,
    semantic_vq_loss,
)
from panglot.codecs.image_semantic.teacher import ImageTeacher

__all__ = [
    "ImageTeacher",
    "SemanticVQ",
    "SemanticVQConfig",
    "SemanticVQOutput",
    "feature_cosine",
    "semantic_vq_loss",
]
