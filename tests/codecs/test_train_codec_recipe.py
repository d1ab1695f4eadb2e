"""The codec recipe on the shared trainer, on a tiny budget: it trains, measures, saves, and what it saves
loads; a resumed run equals an uninterrupted one; a minutes budget becomes a step count.

The real quality figures come from the recipe at full budget (see docs/codecs.md), not from this test.
"""

from __future__ import annotations

import json

import pytest
import torch

from panglot.codecs import load_codec
from panglot.codecs.image_vq import PixelVQ
from panglot.config import load_config
from panglot.evaluation.codec import evaluate_image_codec
from panglot.training import latest_checkpoint
from panglot.training.budget import WALL_GUARD
from panglot.world.dataset import split_scenes
from recipes import train_codec

TINY = ["codec.patch=4", "codec.channels=[16,32]", "codec.latent_dim=16", "codec.codebook_size=64"]
MICRO = ["codec.patch=8", "codec.channels=[8,8]", "codec.latent_dim=8", "codec.fsq_levels=[4,4]"]


def micro_recipe(*overrides: str) -> train_codec.CodecRecipe:
    return load_config(train_codec.CodecRecipe, None, [*MICRO, "train.batch_size=4", *overrides])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("codec_run")
    argv = [*TINY, f"out_dir={out}", "threads=1", "train.max_steps=250", "train.batch_size=16",
            "train.max_minutes=null", "train.edge_weight=1", "eval.n_images=200", "eval.splits=[val,test-unseen]"]  # fmt: skip
    return out, train_codec.main(argv)


def test_recipe_writes_a_loadable_codec_checkpoints_and_metrics(tiny_run):
    out, metrics = tiny_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["config"]["codec"]["channels"] == [16, 32]
    for split in ("val", "test-unseen"):
        m = on_disk[split]
        assert m["n_images"] == 200 and 0 <= m["codebook_usage"] <= 1 and 0 <= m["oracle_preserved"] <= 1
    summary = on_disk["train"]
    assert summary["steps"] == summary["max_steps"] == 250 and summary["resumed_from"] is None
    assert summary["final_loss"] < summary["first_loss"]
    assert latest_checkpoint(out / "train").name == "step_00000250"
    codec = load_codec(out)
    assert isinstance(codec, PixelVQ) and codec.metrics["val"] == metrics["val"]


def test_training_beats_an_untrained_codec(tiny_run):
    out, metrics = tiny_run
    torch.manual_seed(0)
    cfg = load_codec(out).config
    scenes = split_scenes("val", 200, seed=0)
    untrained = evaluate_image_codec(PixelVQ(cfg), scenes)
    trained = metrics["val"]
    # 250 tiny steps: far from the recipe's figures, but clearly past an untrained codec.
    assert untrained["oracle_preserved"] == 0 and untrained["object_recall"] < 0.01
    assert trained["oracle_preserved"] > 0.005 and trained["object_recall"] > 0.03, (trained, untrained)
    # which attributes the reconstructions keep (the text-to-image figures): shares, and past the untrained codec
    attrs = trained["attributes"]
    assert set(attrs) == {"shape", "color", "size", "position", "object", "count"}
    assert all(0.0 <= v <= 1.0 for v in attrs.values())
    assert attrs["object"] > untrained["attributes"]["object"] and attrs["color"] > untrained["attributes"]["color"]
    # an untrained mask head decodes almost all background (~18 dB on these images): 3 dB over it is real
    assert trained["psnr_db"] > untrained["psnr_db"] + 3


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    cfg = micro_recipe("train.max_steps=6", "train.ckpt_every=3", "train.log_every=1")

    def fresh_codec(seed: int) -> PixelVQ:
        torch.manual_seed(seed)
        return PixelVQ(cfg.codec)

    reference = fresh_codec(0)
    train_codec.train(reference, cfg.train, cfg.data_seed, tmp_path / "ref")

    def crash(trainer, metrics):
        if trainer.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_codec.train(fresh_codec(0), cfg.train, cfg.data_seed, tmp_path / "run", callbacks=[crash])
    resumed = fresh_codec(1)  # other initial weights: everything must come from the checkpoint
    summary = train_codec.train(resumed, cfg.train, cfg.data_seed, tmp_path / "run", resume=True)
    assert summary["resumed_from"] == 3 and summary["steps"] == 6
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("ref", "run")]  # fmt: skip
    assert len(losses[0]) == 6 and losses[0] == losses[1]


def test_a_minutes_budget_is_timed_into_steps_and_kept_on_resume(tmp_path):
    cfg = micro_recipe("train.max_minutes=0.05", "train.max_steps=1000000", f"out_dir={tmp_path / 'a'}")
    planned = train_codec.planned_train(cfg)
    steps = planned.max_steps
    per_step = train_codec.seconds_per_step(cfg.codec, cfg.train, cfg.data_seed)
    assert 1 <= steps < 1_000_000 and 0 < per_step < 3  # 3 s = 0.05 min: at least one step fits
    assert planned.max_wall_minutes == pytest.approx(0.05 * WALL_GUARD)  # the guard, as every budgeted recipe
    assert json.loads((tmp_path / "a" / "train_budget.json").read_text())["max_steps"] == steps
    capped = micro_recipe("train.max_minutes=0.05", "train.max_steps=2", f"out_dir={tmp_path / 'b'}")
    assert train_codec.planned_train(capped).max_steps == 2
    steps_only = micro_recipe("train.max_minutes=null", "train.max_steps=7", f"out_dir={tmp_path / 'c'}")
    unbudgeted = train_codec.planned_train(steps_only)
    assert unbudgeted.max_steps == 7 and unbudgeted.max_wall_minutes is None and not (tmp_path / "c").exists()
    (tmp_path / "a" / "train_budget.json").write_text(json.dumps({"max_steps": 3}))
    assert train_codec.planned_train(cfg).max_steps == 3  # the recorded count, not re-timed


def test_overrides_without_a_yaml_and_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'train\.max_stepz'"):
        train_codec.main([f"out_dir={tmp_path}", "train.max_stepz=3"])


def test_the_shipped_config_loads_with_the_quickstart_overrides():
    cfg = load_config(train_codec.CodecRecipe, "configs/codec_pixel_vq.yaml", ["train.max_minutes=1", "eval.n_images=10"])  # fmt: skip
    assert cfg.train.max_minutes == 1 and cfg.train.optim.lr == 8e-3 and cfg.train.optim.betas == (0.9, 0.99)
    assert cfg.codec.code_split == "shape_colour" and train_codec.PixelVQ(cfg.codec).vocab_size == 240 * 8
    assert (
        load_config(train_codec.CodecRecipe).train
        == load_config(
            train_codec.CodecRecipe, "configs/codec_pixel_vq.yaml", ["train.max_minutes=3.0"]
        ).train
    )
