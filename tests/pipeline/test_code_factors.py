"""A unified run whose image ids share embedding rows (``model.code_factors``): trains, saves the computed
rows under the plain names, and loads as an ordinary run that gives the trained model's logits."""

from __future__ import annotations

import pytest
import torch

from panglot.codecs.base import images_to_tensor
from panglot.codecs.image_vq.model import PixelVQ, PixelVQConfig
from panglot.config import load_config
from panglot.model.run import load_model
from panglot.model.unified import code_looks
from panglot.world.dataset import split_scenes
from panglot.world.render import render_batch
from recipes import train_unified


def split_codec() -> PixelVQ:
    torch.manual_seed(0)
    return PixelVQ(PixelVQConfig(
        channels=[16, 32], latent_dim=16, res_blocks=0, encoder_input="mask_colour", code_split="shape_colour",
        fsq_levels=[4, 3],
    )).eval()  # fmt: skip


def test_code_looks_average_each_codes_patches_and_colours_share_them():
    codec = split_codec()
    images = images_to_tensor(render_batch(split_scenes("train", 12, 0)))
    looks = code_looks(codec, images, batch_size=5)
    assert looks.shape == (codec.vocab_size, 64)
    codes = codec.codebook_ids(codec.encode_tensor(images))  # (12, 64)
    fg = (images < 0.99).any(dim=1).float()
    for code in codes.unique()[:4]:  # brute force: the mean 8 x 8 mask over the patches holding the code
        where = (codes == code).nonzero().tolist()
        patches = [fg[b, (n // 8) * 8 : (n // 8) * 8 + 8, (n % 8) * 8 : (n % 8) * 8 + 8].flatten() for b, n in where]
        for colour in range(8):  # every colour of the code has the code's look (held-out pairs included)
            torch.testing.assert_close(looks[int(code) * 8 + colour], torch.stack(patches).mean(dim=0))
    unseen = sorted(set(range(codec.codebook_size)) - set(codes.unique().tolist()))
    assert unseen and looks[unseen[0] * 8].abs().sum() == 0  # codes the images never hold look blank


@pytest.mark.parametrize("features", [False, True], ids=["factors", "factors+looks"])
def test_a_run_with_code_factors_trains_and_loads_as_a_plain_run(tmp_path, monkeypatch, run_unified, features):
    split_codec().save(tmp_path / "codec")
    cfg = load_config(
        train_unified.UnifiedRecipe,
        None,
        [
            f"out_dir={tmp_path / 'run'}",
            f"codec_dir={tmp_path / 'codec'}",
            "model.size=debug",
            "model.code_factors=true",
            f"model.code_features={str(features).lower()}",
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
    proj = trained.backbone.tok_embeddings.parametrizations.weight[0].proj
    assert (proj is not None) == features and (not features or proj.abs().sum() > 0)

    loaded, _ = load_model(tmp_path / "run")
    assert not hasattr(loaded.backbone.tok_embeddings, "parametrizations")
    start = loaded.vocab.slot("image").offset
    tokens = torch.tensor([[loaded.vocab.special("<boi>"), start, start + 9, start + 95]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), trained(tokens))
