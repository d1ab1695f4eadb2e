"""Shared fixtures for codec tests: ShapesWorld renders as user-facing items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panglot.world.render import render
from panglot.world.splits import sample_scene


def _world_images(n: int, split: str = "train", seed: int = 0) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, split) for _ in range(n)]
    return scenes, np.stack([render(s) for s in scenes])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small convs gain nothing from threads, and spinning threads cost a lot on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def world_images():
    """``world_images(n, split="train", seed=0) -> (scenes, renders (n, 64, 64, 3) uint8)``."""
    return _world_images
