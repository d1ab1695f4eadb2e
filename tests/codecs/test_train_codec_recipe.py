"""The codec recipe end to end on a tiny budget: it trains, measures, saves, and what it saves loads.

The real quality figures come from the recipe at full budget (see docs/codecs.md), not from this test.
"""

from __future__ import annotations

import json

import pytest
import torch

from panglot.codecs import load_codec
from panglot.codecs.image_vq import PixelVQ
from recipes import train_codec

TINY = ["codec.patch=4", "codec.channels=[16,32]", "codec.latent_dim=16", "codec.codebook_size=64"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("codec_run")
    argv = [*TINY, f"out_dir={out}", "threads=1", "train.max_steps=250", "train.batch_size=16",
            "train.max_minutes=null", "train.edge_weight=1", "eval.n_images=200", "eval.splits=[val,test-unseen]"]  # fmt: skip
    return out, train_codec.main(argv)


def test_recipe_writes_a_loadable_codec_and_metrics(tiny_run):
    out, metrics = tiny_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["config"]["codec"]["channels"] == [16, 32]
    for split in ("val", "test-unseen"):
        m = on_disk[split]
        assert m["n_images"] == 200 and 0 <= m["codebook_usage"] <= 1 and 0 <= m["oracle_preserved"] <= 1
    assert (
        on_disk["train"]["steps"] == 250 and on_disk["train"]["final_loss"] < on_disk["train"]["first_loss"]
    )
    codec = load_codec(out)
    assert isinstance(codec, PixelVQ) and codec.metrics["val"] == metrics["val"]


def test_training_beats_an_untrained_codec(tiny_run):
    out, metrics = tiny_run
    torch.manual_seed(0)
    cfg = load_codec(out).config
    scenes = train_codec.split_scenes("val", 200, seed=0)
    untrained = train_codec.evaluate(PixelVQ(cfg), scenes)
    trained = metrics["val"]
    # 250 tiny steps: far from the recipe's figures, but clearly past an untrained codec.
    assert untrained["oracle_preserved"] == 0 and untrained["object_recall"] < 0.01
    assert trained["oracle_preserved"] > 0.005 and trained["object_recall"] > 0.03, (trained, untrained)
    assert trained["psnr_db"] > untrained["psnr_db"] + 10


def test_overrides_without_a_yaml_and_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'train\.max_stepz'"):
        train_codec.main([f"out_dir={tmp_path}", "train.max_stepz=3"])
