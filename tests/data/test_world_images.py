"""World image batches resume exactly where they stopped and refuse a state of another stream."""

from __future__ import annotations

import json

import pytest
import torch

from panglot.codecs import images_to_tensor
from panglot.data.world_images import WorldImages
from panglot.world import make_example, render_batch, split_scenes


def test_split_scenes_are_the_examples_scenes():
    scenes = split_scenes("val", 5, seed=3, start=10)
    assert scenes == [make_example("val", 3, i).scene for i in range(10, 15)]


def test_world_images_resume_where_they_stopped():
    data = WorldImages(batch_size=3, seed=1)
    first = next(data)
    assert torch.equal(first, images_to_tensor(render_batch(split_scenes("train", 3, 1))))
    state = json.loads(json.dumps(data.state_dict()))
    expected = next(data)
    restored = WorldImages(batch_size=3, seed=1)
    restored.load_state_dict(state)
    assert torch.equal(next(restored), expected)
    assert not torch.equal(next(WorldImages(batch_size=3, seed=2)), expected)
    with pytest.raises(ValueError, match=r"\(batch_size, seed, split\) = \(3, 1, 'train'\).*\(4, 1, 'train'\)"):
        WorldImages(batch_size=4, seed=1).load_state_dict(state)
    assert first.shape == (3, 3, 64, 64) and float(first.min()) >= -1.0 and float(first.max()) == 1.0
