"""Endless ShapesWorld images with their canonical captions, for training against a text teacher."""

from __future__ import annotations

from typing import NamedTuple

import torch

from panglot.codecs.base import images_to_tensor
from panglot.data.world_images import WorldImages
from panglot.world.dataset import split_scenes
from panglot.world.language import caption
from panglot.world.render import render_batch


class CaptionedImages(NamedTuple):
    images: torch.Tensor  # (B, 3, 64, 64) float in [-1, 1]
    captions: list[str]  # the canonical caption of each image


class WorldCaptionedImages(WorldImages):
    """:class:`WorldImages` that also yields each scene's canonical caption: batch ``k`` holds scenes
    ``k * batch_size ..`` of ``split_scenes(split, .., seed)``; same resumable state (next scene index)."""

    def __next__(self) -> CaptionedImages:
        scenes = split_scenes(self.split, self.batch_size, self.seed, self.start)
        self.start += self.batch_size
        return CaptionedImages(images_to_tensor(render_batch(scenes)), [caption(s) for s in scenes])
