"""Endless ShapesWorld images for training image codecs and encoders, resumable by position."""

from __future__ import annotations

import torch

from panglot.codecs.base import images_to_tensor
from panglot.world.dataset import split_scenes
from panglot.world.render import render_batch


class WorldImages:
    """Fresh renders of a split as ``(B, 3, 64, 64)`` float tensors in [-1, 1]: batch ``k`` holds scenes
    ``k * batch_size ..`` of ``split_scenes(split, .., seed)``. The state is the index of the next scene, so a
    resumed run sees exactly the images it would have seen."""

    def __init__(self, batch_size: int, seed: int, split: str = "train"):
        self.batch_size = batch_size
        self.seed = seed
        self.split = split
        self.start = 0

    def __iter__(self) -> WorldImages:
        return self

    def __next__(self) -> torch.Tensor:
        scenes = split_scenes(self.split, self.batch_size, self.seed, self.start)
        self.start += self.batch_size
        return images_to_tensor(render_batch(scenes))

    def state_dict(self) -> dict:
        return {"start": self.start, "batch_size": self.batch_size, "seed": self.seed, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        saved = (state.get("batch_size"), state.get("seed"), state.get("split", "train"))
        mine = (self.batch_size, self.seed, self.split)
        if saved != mine:
            raise ValueError(f"WorldImages state is for (batch_size, seed, split) = {saved}, this iterator has {mine}")
        self.start = int(state["start"])
