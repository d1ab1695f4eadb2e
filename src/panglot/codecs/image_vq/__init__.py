"""Pixel VQ image codec: 64 x 64 RGB <-> 64 discrete ids (kind ``image_vq``)."""

from panglot.codecs.image_vq.model import PixelVQ, PixelVQConfig, pixel_vq_loss

__all__ = ["PixelVQ", "PixelVQConfig", "pixel_vq_loss"]
