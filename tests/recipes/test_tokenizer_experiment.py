"""The tokenizer experiment's driver (recipes/tokenizer_experiment.py) on a debug codec and a debug model:
step budgets train exactly those steps, every run is evaluated, tokens are counted from the training log,
the table and the figure are written, and a second call reuses the finished runs."""

from __future__ import annotations

import json

import torch

from panglot.codecs.image_vq import PixelVQ
from panglot.world import render, split_scenes
from recipes import tokenizer_experiment


def finished_pixel_stage(stage_dir):
    """A debug pixel codec saved as a finished stage: the driver reuses it, it trains nothing."""
    torch.manual_seed(0)
    codec = PixelVQ(PixelVQ.debug_config())
    codec.train()
    codec(codec.items_to_tensor([render(s) for s in split_scenes("train", 8, seed=0)]))
    codec.eval().save(stage_dir / "pixel_vq")


def test_step_budgets_table_and_reuse(tmp_path):
    finished_pixel_stage(tmp_path / "stages")
    argv = [
        "--out", str(tmp_path / "exp"), "--stage-dir", str(tmp_path / "stages"), "--codecs", "pixel_vq",
        "--steps", "2", "3", "--test-per-cell", "1", "--cfg", "2.0",
        "model.size=debug", "data.n_scenes=32", "tokenizer_scenes=100", "batch_size=4", "threads=1",
        "train.log_every=2", "train.ckpt_every=0", "compile=false",
    ]  # fmt: skip
    results = tokenizer_experiment.main(argv)
    assert [(r["codec"], r["budget"], r["steps"]) for r in results] == [
        ("pixel_vq", "2 steps", 2),
        ("pixel_vq", "3 steps", 3),
    ]
    # the tokens of every logged window, the last partial one included: more steps, more tokens
    assert 0 < results[0]["tokens"] < results[1]["tokens"]
    for r in results:
        assert set(r["summary"]) >= {"t2i_scene", "caption", "vqa"}
        assert 0.0 <= r["summary"]["vqa"]["all"] <= 1.0
    out = tmp_path / "exp"
    saved = json.loads((out / "results.json").read_text())
    assert saved["codecs"]["pixel_vq"]["tokens_per_item"] == 64 and len(saved["runs"]) == 2
    table = (out / "tokenizers.md").read_text().splitlines()
    assert len(table) == 9 and "| pixel_vq | 64 | 3 steps | 0 | 3 |" in table[3]
    assert table[5].startswith("| codec | budget | t2i object |") and table[8].startswith("| pixel_vq | 3 steps |")
    assert (out / "tokenizers.png").stat().st_size > 0 and (out / "tokenizers_cpu.png").stat().st_size > 0
    mtime = (out / "runs" / "pixel_vq-2steps" / "train_summary.json").stat().st_mtime
    assert tokenizer_experiment.main(argv) == results  # finished runs are reused, not retrained
    assert (out / "runs" / "pixel_vq-2steps" / "train_summary.json").stat().st_mtime == mtime


def test_seeds_repeat_every_run_and_the_table_gives_their_mean(tmp_path):
    """``--seeds 0 1``: each budget trained twice with other training and data seeds (seed 0 keeps the run's own
    directory, so earlier single-seed runs are reused), a row per seed, and a mean over seeds with its range."""
    finished_pixel_stage(tmp_path / "stages")
    argv = [
        "--out", str(tmp_path / "exp"), "--stage-dir", str(tmp_path / "stages"), "--codecs", "pixel_vq",
        "--steps", "2", "--seeds", "0", "1", "--test-per-cell", "1", "--cfg", "2.0",
        "model.size=debug", "data.n_scenes=32", "tokenizer_scenes=100", "batch_size=4", "threads=1",
        "train.log_every=1", "train.ckpt_every=0", "compile=false",
    ]  # fmt: skip
    results = tokenizer_experiment.main(argv)
    assert [(r["seed"], r["run"].rsplit("/", 1)[-1]) for r in results] == [(0, "pixel_vq-2steps"), (1, "pixel_vq-2steps-seed1")]
    first_losses = []
    for r in results:
        log = (tmp_path / "exp" / "runs" / r["run"].rsplit("/", 1)[-1] / "train" / "metrics.jsonl").read_text()
        first_losses.append(json.loads(log.splitlines()[0])["loss"])
    assert first_losses[0] != first_losses[1]  # other initialisation and data, not the same run twice
    table = (tmp_path / "exp" / "tokenizers.md").read_text().splitlines()
    assert "| pixel_vq | 64 | 2 steps | 1 | 2 |" in table[3]
    assert table[5].startswith("| codec | budget | seeds |") and table[7].startswith("| pixel_vq | 2 steps | 2 | ")
    vqa = [100 * r["summary"]["vqa"]["seen"] for r in results]
    assert f"{sum(vqa) / 2:.1f} ({min(vqa):.0f}-{max(vqa):.0f})" in table[7]
