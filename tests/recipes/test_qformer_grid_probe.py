"""The Q-Former grid probe (recipes/qformer_grid_probe.py): trains the grid path alone and writes its curve."""

from __future__ import annotations

import json
import math

import pytest
import torch

from panglot.codecs.image_vq import PixelVQ
from panglot.codecs.text import train_world_tokenizer
from panglot.encoders import DualEncoder, DualEncoderConfig
from panglot.world.dataset import split_scenes
from panglot.world.language import caption
from recipes import qformer_grid_probe

SMALL = [
    "codec.qformer.dim=32", "codec.qformer.n_layers=1", "codec.qformer.n_heads=2", "codec.qformer.ffn_dim=64",
    "codec.codebook_size=64", "codec.codebook_dim=8", "codec.embed_decoder.dim=32", "codec.embed_decoder.n_layers=1",
    "codec.embed_decoder.n_heads=2", "codec.detokenizer.block_out_channels=[16,32]", "codec.detokenizer.grid_dim=16",
]  # fmt: skip


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    tokenizer = train_world_tokenizer([caption(s) for s in split_scenes("train", 200, seed=1)])
    torch.manual_seed(1)
    DualEncoder(DualEncoderConfig.debug(), tokenizer).save(root / "teacher")
    torch.manual_seed(2)
    PixelVQ(PixelVQ.debug_config()).save(root / "pixel")
    return root


@pytest.mark.parametrize("extra", [["--locality", "4"], ["--no-vq"]])
def test_the_probe_trains_the_grid_path_and_writes_its_curve(dirs, tmp_path, extra):
    out = tmp_path / "curve.json"
    args = qformer_grid_probe.parse([
        "--teacher-dir", str(dirs / "teacher"), "--pixel-codec-dir", str(dirs / "pixel"), "--out", str(out),
        "--steps", "3", "--eval-every", "2", "--images", "6", "--batch-size", "4", *extra, *SMALL,
    ])  # fmt: skip
    curve = qformer_grid_probe.run(args)
    assert [r["step"] for r in curve] == [2, 3]  # every --eval-every steps and the last
    assert json.loads(out.read_text())["curve"] == curve
    for record in curve:
        assert math.isfinite(record["loss"]) and 0 <= record["cell_acc"] <= 1 and 0 <= record["preserved"] <= 1
        assert len(record["preserved_by_objects"]) == 3


def test_the_probe_builds_the_codec_it_names(dirs):
    codec = qformer_grid_probe.build(str(dirs / "teacher"), str(dirs / "pixel"), 4.0, SMALL)
    assert codec.config.qformer.features == "teacher+pixel" and codec.config.qformer.locality == 4.0
    assert codec.detokenizer.grid_reader is not None and codec.cross_bias.shape == (32, 128)
    with pytest.raises(SystemExit):
        qformer_grid_probe.parse(["--teacher-dir", "t", "--pixel-codec-dir", "p", "--out", "o", "--steps", "0"])
