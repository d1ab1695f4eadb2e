"""A unified run with ``model.span_positions``: its backbone places image tokens on the codec's 8 x 8 grid, the
tables train, and the saved run loads with them (run.json holds the span fields) and draws."""

from __future__ import annotations

import json

import torch

import panglot
from panglot.codecs.image_vq.model import PixelVQ, PixelVQConfig
from panglot.config import load_config
from panglot.model.run import load_model
from recipes import train_unified


def test_a_run_with_span_positions_trains_saves_and_loads(tmp_path, monkeypatch, run_unified):
    torch.manual_seed(0)
    codec = PixelVQ(PixelVQConfig(channels=[16, 32], latent_dim=16))
    codec.save(tmp_path / "codec")
    cfg = load_config(
        train_unified.UnifiedRecipe,
        None,
        [f"out_dir={tmp_path / 'run'}", f"codec_dir={tmp_path / 'codec'}", "model.size=debug",
         "model.span_positions=true", "data.n_scenes=32", "tokenizer_scenes=100", "batch_size=4",
         "train.max_steps=6", "train.ckpt_every=0", "train.optim.lr=3e-3"],
    )  # fmt: skip
    built = {}
    build = train_unified.build
    monkeypatch.setattr(train_unified, "build", lambda *a, **k: built.setdefault("out", build(*a, **k)))
    run_unified(cfg)
    trained = built["out"][0].eval()
    backbone = trained.backbone
    start = trained.vocab.slot("image").offset
    assert (backbone.cfg.span_start, backbone.cfg.span_end) == (start, start + codec.vocab_size)
    assert (backbone.cfg.span_rows, backbone.cfg.span_cols) == (8, 8)
    assert backbone.span_row_embeddings.weight.abs().sum() > 0, "training moved the row table"

    meta = json.loads((tmp_path / "run" / "model" / "run.json").read_text())
    assert meta["backbone"]["span_rows"] == 8
    loaded, _ = load_model(tmp_path / "run")
    tokens = torch.tensor([[loaded.vocab.special("<boi>"), *range(start, start + 10)]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), trained(tokens))
    images = panglot.load(tmp_path / "run").draw(["a small red circle at the top"], seed=0)
    assert images[0].size == (64, 64)
