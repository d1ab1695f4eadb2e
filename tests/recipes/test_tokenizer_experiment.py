"""The tokenizer experiment's driver (recipes/tokenizer_experiment.py) on a debug codec and a debug model:
step budgets train exactly those steps, every run is evaluated, tokens are counted from the training log,
the table and the figure are written, and a second call reuses the finished runs."""

from __future__ import annotations

import json

import torch

from panglot.codecs.image_vq import PixelVQ
from panglot.world import render, split_scenes
from recipes import tokenizer_experiment


def test_step_budgets_table_and_reuse(tmp_path):
    torch.manual_seed(0)
    codec = PixelVQ(PixelVQ.debug_config())
    codec.train()
    codec(codec.items_to_tensor([render(s) for s in split_scenes("train", 8, seed=0)]))
    codec.eval().save(tmp_path / "stages" / "pixel_vq")  # a finished stage: reused, not trained
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
    assert len(table) == 9 and "| pixel_vq | 64 | 3 steps | 3 |" in table[3]
    assert table[5].startswith("| codec | budget | t2i object |") and table[8].startswith("| pixel_vq | 3 steps |")
    assert (out / "tokenizers.png").stat().st_size > 0 and (out / "tokenizers_cpu.png").stat().st_size > 0
    mtime = (out / "runs" / "pixel_vq-2steps" / "train_summary.json").stat().st_mtime
    assert tokenizer_experiment.main(argv) == results  # finished runs are reused, not retrained
    assert (out / "runs" / "pixel_vq-2steps" / "train_summary.json").stat().st_mtime == mtime
