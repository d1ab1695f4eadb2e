"""The dual encoder recipe on a tiny budget: it trains, retrieves well above chance on seen and unseen
scenes, saves what it measured, and what it saves loads; the pair stream resumes exactly.

The real figures come from the recipe at full budget (docs/encoders.md), not from this test.
"""

from __future__ import annotations

import json

import pytest
import torch

from panglot.config import load_config
from panglot.encoders import DualEncoder, load_dual_encoder
from panglot.training import latest_checkpoint
from panglot.world import make_example
from recipes import train_dual_encoder

DEBUG = [f"encoder.{tower}.{key}={value}" for tower in ("image", "text")
         for key, value in (("dim", 32), ("n_layers", 1), ("n_heads", 2), ("ffn_dim", 64))]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dual_run")
    argv = [*DEBUG, "encoder.embed_dim=32", f"out_dir={out}", "threads=1", "tokenizer_examples=300",
            "train.max_minutes=null", "train.max_steps=30", "train.batch_size=32", "train.optim.warmup_steps=5",
            "train.ckpt_every=0", "eval.n_pairs=100"]  # fmt: skip
    torch.manual_seed(0)
    return out, train_dual_encoder.main(argv)


def test_recipe_trains_an_encoder_that_retrieves_above_chance(tiny_run):
    _, metrics = tiny_run
    summary = metrics["train"]
    assert summary["steps"] == 30 and summary["final_loss"] < summary["first_loss"]
    for split in ("test-seen", "test-unseen"):
        m = metrics[split]
        assert m["n"] == 100
        for direction in ("image_to_text", "text_to_image", "paraphrase_to_image"):
            # 30 tiny steps: far from the recipe's figures, but clearly above a random ranking (~5% at 5).
            assert m[direction]["r@5"] > 5 * m["chance"]["r@5"], (split, m)


def test_recipe_writes_a_loadable_encoder_and_metrics(tiny_run):
    out, metrics = tiny_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["config"]["encoder"]["image"]["dim"] == 32 and on_disk["test-seen"] == metrics["test-seen"]
    assert latest_checkpoint(out / "train").name == "step_00000030"
    encoder = load_dual_encoder(out)
    assert encoder.metrics["test-unseen"] == metrics["test-unseen"]
    again = train_dual_encoder.evaluate(encoder, "test-unseen", 100, seed=0)
    assert again["image_to_text"] == metrics["test-unseen"]["image_to_text"]


def test_world_pairs_resume_where_they_stopped():
    data = train_dual_encoder.WorldPairs(batch_size=3, seed=1, paraphrase_prob=0.5)
    next(data)
    state = json.loads(json.dumps(data.state_dict()))
    expected = next(data)
    restored = train_dual_encoder.WorldPairs(batch_size=3, seed=1, paraphrase_prob=0.5)
    restored.load_state_dict(state)
    got = next(restored)
    assert torch.equal(got.images, expected.images) and (got.texts, got.keys) == (
        expected.texts,
        expected.keys,
    )
    with pytest.raises(ValueError, match=r"\(batch_size, seed, paraphrase_prob\) = \(3, 1, 0\.5\)"):
        train_dual_encoder.WorldPairs(batch_size=4, seed=1, paraphrase_prob=0.5).load_state_dict(state)


def test_pairs_mix_captions_and_paraphrases_keyed_by_caption():
    batch = next(train_dual_encoder.WorldPairs(batch_size=64, seed=0, paraphrase_prob=0.5))
    assert batch.images.shape == (64, 3, 64, 64)
    paraphrased = sum(t != k for t, k in zip(batch.texts, batch.keys))
    assert 16 < paraphrased < 48
    all_captions = next(train_dual_encoder.WorldPairs(batch_size=64, seed=0, paraphrase_prob=0.0))
    assert all_captions.texts == all_captions.keys == batch.keys


def test_resumed_training_equals_an_uninterrupted_run(tmp_path, world_tokenizer):
    cfg = load_config(train_dual_encoder.DualEncoderRecipe, None,
                      [*DEBUG, "train.max_steps=6", "train.ckpt_every=3", "train.log_every=1", "train.batch_size=8"])  # fmt: skip

    def fresh_encoder(seed: int) -> DualEncoder:
        torch.manual_seed(seed)
        return DualEncoder(cfg.encoder, world_tokenizer)

    reference = fresh_encoder(0)
    train_dual_encoder.train(reference, cfg.train, cfg.data_seed, tmp_path / "ref")

    def crash(trainer, metrics):
        if trainer.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dual_encoder.train(
            fresh_encoder(0), cfg.train, cfg.data_seed, tmp_path / "run", callbacks=[crash]
        )
    resumed = fresh_encoder(1)  # other initial weights: everything must come from the checkpoint
    summary = train_dual_encoder.train(resumed, cfg.train, cfg.data_seed, tmp_path / "run", resume=True)
    assert summary["resumed_from"] == 3 and summary["steps"] == 6
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_world_pair_is_make_example():
    for split, index in (("train", 3), ("test-unseen", 7)):
        example = make_example(split, 0, index)
        scene, text, para, _ = train_dual_encoder.world_pair(split, 0, index)
        assert (scene, text, para) == (example.scene, example.caption, example.paraphrase)
