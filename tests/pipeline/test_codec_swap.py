"""The image codec is a config choice: the same unified recipe trains on every registered image codec
(pixel VQ, semantic VQ, causal Q-Former, ...) and ``panglot.load`` -> draw / caption / ask works for each,
with no code path that names a codec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import panglot
from panglot.codecs import codec_class, codec_kinds
from panglot.config import load_config
from panglot.world import render, split_scenes
from recipes import train_unified

IMAGE_KINDS = [k for k in codec_kinds() if codec_class(k).modality == "image"]


def debug_codec(kind: str):
    """An untrained debug codec of ``kind``, after one training-mode forward (data-initialised state)."""
    torch.manual_seed(0)
    cls = codec_class(kind)
    codec = cls(cls.debug_config())
    codec.train()
    images = [render(s) for s in split_scenes("train", 8, seed=0)]
    codec(codec.items_to_tensor(images))
    return codec.eval()


def test_every_image_codec_kind_is_covered():
    assert {"image_vq"} <= set(IMAGE_KINDS)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_the_unified_recipe_trains_and_serves_on_each_codec(kind, tmp_path):
    codec = debug_codec(kind)
    codec.save(tmp_path / "codec")
    cfg = load_config(
        train_unified.UnifiedRecipe,
        "configs/unified_quickstart.yaml",
        [f"out_dir={tmp_path / 'run'}", f"codec_dir={tmp_path / 'codec'}", "model.size=debug",
         "data.n_scenes=32", "tokenizer_scenes=100", "batch_size=4", "train.max_steps=8",
         "train.log_every=2", "train.ckpt_every=0", "threads=1", "compile=false"],
    )  # fmt: skip
    train_unified.run(cfg)
    assert json.loads((tmp_path / "run" / "model" / "codec" / "codec.json").read_text())["kind"] == kind
    m = panglot.load(tmp_path / "run", batch_size=2)
    assert m.codec.kind == kind and m.codec.tokens_per_item == codec.tokens_per_item
    images = m.draw(["a large red circle at the top left"], seed=0, cfg=2.0, n=2)
    assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in images)
    scene_image = render(split_scenes("val", 1, seed=0)[0])
    assert isinstance(m.caption([scene_image])[0], str)
    assert isinstance(m.ask([np.asarray(images[0])], ["how many objects are there?"])[0], str)
    ids = m.codec.encode([scene_image])
    assert ids.shape == (1, codec.tokens_per_item)
    torch.testing.assert_close(ids, codec.encode([scene_image]))  # the run carries the same codec
