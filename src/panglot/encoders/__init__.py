"""Encoders that map images and texts into one embedding space: panglot's own CLIP-style dual encoder
(``dual``), trained on ShapesWorld, and pretrained CLIP / SigLIP checkpoints behind the same methods (``hf``).

Both offer ``image_grid(x)`` (per-patch features, the semantic teacher's), ``embed_images(x)`` and
``embed_texts(texts)`` (L2-normalised), with images as (B, 3, 64, 64) float tensors in [-1, 1].
"""

from panglot.encoders.dual import (
    DualEncoder,
    DualEncoderConfig,
    EncoderLoadError,
    ImageFeatures,
    ImageTower,
    PairBatch,
    TowerConfig,
    contrastive_loss,
    dual_encoder_loss,
    load_dual_encoder,
    positives,
)
from panglot.encoders.hf import HFDualEncoder, load_pretrained_dual_encoder

__all__ = [
    "DualEncoder",
    "DualEncoderConfig",
    "EncoderLoadError",
    "HFDualEncoder",
    "ImageFeatures",
    "ImageTower",
    "PairBatch",
    "TowerConfig",
    "contrastive_loss",
    "dual_encoder_loss",
    "load_dual_encoder",
    "load_pretrained_dual_encoder",
    "positives",
]
