"""The frozen semantic teacher inside a semantic codec: the image side of a panglot
:class:`~panglot.encoders.DualEncoder` (patch embedding, position embedding, image tower).

The codec owns a copy of these weights (they are saved in its ``codec.safetensors`` and its config in
``codec.json``), so a codec directory is self-contained: encoding reads teacher features without any
reference to the encoder's directory. The text tower is not kept; the codec never reads text.
"""

from __future__ import annotations

import torch
from torch import nn

from panglot.encoders import DualEncoder, DualEncoderConfig
from panglot.encoders.dual import Tower

# The DualEncoder parameters of the image side; their names are kept so the copy is a plain state-dict load.
IMAGE_SIDE = ("patch_embed.", "image_pos", "image_tower.")


class ImageTeacher(nn.Module):
    """Frozen per-patch features of a dual encoder's image tower: ``(B, 3, S, S)`` in [-1, 1] ->
    ``(B, grid_size**2, grid_dim)``, row-major, equal to ``DualEncoder.image_grid``."""

    def __init__(self, config: DualEncoderConfig):
        super().__init__()
        self.config = config
        n_patches = config.grid_size**2
        self.patch_embed = nn.Linear(3 * config.patch**2, config.image.dim)
        self.image_pos = nn.Parameter(torch.zeros(n_patches, config.image.dim))
        self.image_tower = Tower(config.image, n_patches, config.norm_eps)
        self.requires_grad_(False)

    @property
    def grid_dim(self) -> int:
        return self.config.image.dim

    def load_from(self, encoder: DualEncoder) -> None:
        """Copy the image-side weights of ``encoder`` (whose config must be this teacher's)."""
        if encoder.config != self.config:
            raise ValueError(
                f"teacher config differs from the encoder's: expected {self.config}, got {encoder.config}"
            )
        state = {k: v for k, v in encoder.state_dict().items() if k.startswith(IMAGE_SIDE)}
        self.load_state_dict(state, strict=True)

    def train(self, mode: bool = True) -> ImageTeacher:
        """Always in eval mode: the teacher is frozen."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.image_pos.device

    # The encoder's own image path, run on the image-side weights held here (same names, same config), so
    # the features are ``DualEncoder.image_grid``'s whatever its preprocessing.
    check_images = DualEncoder.check_images
    patches = DualEncoder.patches
    image_grid = DualEncoder.image_grid

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_grid(x)  # (B, N, grid_dim)
