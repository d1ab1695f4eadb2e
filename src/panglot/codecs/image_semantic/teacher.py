"""The frozen semantic teacher inside a semantic codec: the image side of a panglot
:class:`~panglot.encoders.DualEncoder` (patch embedding, position embedding, image tower), held by
:class:`~panglot.encoders.ImageTower` without the embedding projection.

The codec owns a copy of these weights (they are saved in its ``codec.safetensors`` and its config in
``codec.json``), so a codec directory is self-contained: encoding reads teacher features without any
reference to the encoder's directory. The text tower is not kept; the codec never reads text.
"""

from __future__ import annotations

import torch

from panglot.encoders import DualEncoderConfig, ImageTower


class ImageTeacher(ImageTower):
    """Frozen per-patch features of a dual encoder's image tower: ``(B, 3, S, S)`` in [-1, 1] ->
    ``(B, grid_size**2, grid_dim)``, row-major, equal to ``DualEncoder.image_grid``."""

    def __init__(self, config: DualEncoderConfig):
        super().__init__(config, projection=False)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> ImageTeacher:
        """Always in eval mode: the teacher is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_grid(x)  # (B, N, grid_dim)
