"""A unified run whose image ids share embedding rows (``model.code_factors``): trains, saves the computed
rows under the plain names, and loads as an ordinary run that gives the trained model's logits."""

from __future__ import annotations

import torch

from panglot.codecs.image_vq.model import PixelVQ, PixelVQConfig
from panglot.config import load_config
from panglot.model.run import load_model
from recipes import train_unified


def test_a_run_with_code_factors_trains_and_loads_as_a_plain_run(tmp_path, monkeypatch, run_unified):
    torch.manual_seed(0)
    codec_cfg = PixelVQConfig(
        channels=[16, 32], latent_dim=16, res_blocks=0, encoder_input="mask_colour", code_split="shape_colour",
        fsq_levels=[4, 3],
    )  # fmt: skip
    PixelVQ(codec_cfg).save(tmp_path / "codec")
    cfg = load_config(
        train_unified.UnifiedRecipe,
        None,
        [
            f"out_dir={tmp_path / 'run'}",
            f"codec_dir={tmp_path / 'codec'}",
            "model.size=debug",
            "model.code_factors=true",
            "data.n_scenes=32",
            "tokenizer_scenes=100",
            "batch_size=4",
            "train.max_steps=6",
            "train.ckpt_every=0",
            "train.optim.lr=3e-3",
        ],
    )
    built = {}
    build = train_unified.build

    def keep(*args, **kwargs):
        built["model"], loader = build(*args, **kwargs)
        return built["model"], loader

    monkeypatch.setattr(train_unified, "build", keep)
    run_unified(cfg)
    trained = built["model"].eval()
    tables = trained.backbone.tok_embeddings.parametrizations.weight[0].tables
    assert [t.shape[0] for t in tables] == [8, 4, 3]  # colour, then the FSQ digits
    assert all(t.abs().sum() > 0 for t in tables), "training moved every factor table"

    loaded, _ = load_model(tmp_path / "run")
    assert not hasattr(loaded.backbone.tok_embeddings, "parametrizations")
    start = loaded.vocab.slot("image").offset
    tokens = torch.tensor([[loaded.vocab.special("<boi>"), start, start + 9, start + 95]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), trained(tokens))
