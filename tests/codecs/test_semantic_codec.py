"""The ILLUME semantic VQ codec: teacher parity, self-contained codec directories, pure encoding, config
checks, and a few-step recipe run whose loss falls and whose semantic cosine rises."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from panglot.codecs import load_codec
from panglot.codecs.base import images_to_tensor
from panglot.codecs.image_semantic import SemanticVQ, SemanticVQConfig, feature_cosine
from panglot.codecs.image_vq import PixelVQConfig
from panglot.codecs.text import train_world_tokenizer
from panglot.encoders import DualEncoder, DualEncoderConfig
from panglot.world import make_examples, split_scenes
from panglot.world.render import render_batch
from recipes import train_semantic_codec as recipe


@pytest.fixture(scope="module")
def teacher() -> DualEncoder:
    """An untrained debug dual encoder (fixed seed): a stand-in for the pretrained teacher."""
    tokenizer = train_world_tokenizer([e.caption for e in make_examples("train", 100, seed=0)])
    torch.manual_seed(0)
    return DualEncoder(DualEncoderConfig.debug(), tokenizer).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return images_to_tensor(render_batch(split_scenes("train", 8, seed=0)))  # (8, 3, 64, 64)


def debug_codec(teacher: DualEncoder, images: torch.Tensor, **overrides) -> SemanticVQ:
    """A debug codec on ``teacher`` after one training-mode forward (k-means initialises the codebook)."""
    torch.manual_seed(0)
    config = SemanticVQ.debug_config()
    for key, value in overrides.items():
        setattr(config, key, value)
    codec = SemanticVQ.from_teacher(config, teacher).train()
    codec(images)
    return codec.eval()


def test_teacher_features_equal_the_dual_encoders_image_grid(teacher, images):
    codec = debug_codec(teacher, images)
    torch.testing.assert_close(codec.teacher(images), teacher.image_grid(images))
    assert not any(p.requires_grad for p in codec.teacher.parameters())
    assert codec.config.teacher == teacher.config


def test_codec_directory_holds_the_teacher_and_loads_without_it(teacher, images, tmp_path):
    codec = debug_codec(teacher, images)
    ids = codec.encode_tensor(images)
    assert ids.shape == (8, 64) and ids.dtype == torch.long and codec.tokens_per_item == 64
    teacher_dir = tmp_path / "teacher"
    teacher.save(teacher_dir)
    codec.save(tmp_path / "codec")

    weights = load_file(str(tmp_path / "codec" / "codec.safetensors"))
    for name, value in teacher.state_dict().items():
        if name.startswith(("patch_embed.", "image_pos", "image_tower.")):
            torch.testing.assert_close(weights[f"teacher.{name}"], value, rtol=0, atol=0)
    assert not any(k.startswith("teacher.text") or "tok_embeddings" in k for k in weights)
    meta = json.loads((tmp_path / "codec" / "codec.json").read_text())
    assert meta["kind"] == "image_semantic_vq" and meta["config"]["teacher"]["image"]["dim"] == 32

    shutil.rmtree(teacher_dir)
    loaded = load_codec(tmp_path / "codec")
    assert isinstance(loaded, SemanticVQ) and loaded.config == codec.config
    torch.testing.assert_close(loaded.encode_tensor(images), ids, rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode_tensor(ids), codec.decode_tensor(ids), rtol=0, atol=0)
    torch.testing.assert_close(feature_cosine(loaded, images), feature_cosine(codec, images))


@pytest.mark.parametrize(
    ("encoder_input", "quantizer"), [("teacher", "vq"), ("pixels", "vq"), ("both", "vq"), ("both", "fsq")]
)
def test_encode_never_changes_state_and_follows_encoder_input(teacher, images, encoder_input, quantizer):
    codec = debug_codec(teacher, images, encoder_input=encoder_input, quantizer=quantizer)
    assert hasattr(codec, "adapter") == (encoder_input != "pixels")
    assert hasattr(codec, "pixel_encoder") == (encoder_input != "teacher")
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    codec.train()  # even in training mode, encoding is a pure lookup
    ids = codec.encode_tensor(images)
    torch.testing.assert_close(codec.encode_tensor(images), ids, rtol=0, atol=0)
    for name, value in codec.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=f"encode changed {name}")
    assert int(ids.min()) >= 0 and int(ids.max()) < codec.vocab_size
    with torch.no_grad():  # the ids depend on the teacher exactly when the encoder reads it
        codec.teacher.patch_embed.weight.mul_(-3.0)
    assert torch.equal(codec.encode_tensor(images), ids) == (encoder_input == "pixels")


def test_config_errors_name_what_disagrees():
    with pytest.raises(
        ValueError, match=r"pixel encoder/decoder grid \(64 / 16\).*teacher's patch grid \(8\)"
    ):
        SemanticVQConfig(pixel=PixelVQConfig(patch=8, channels=[16, 32]))
    with pytest.raises(ValueError, match=r"must agree, got \(64, 64, 32\)"):
        SemanticVQConfig(pixel=PixelVQConfig(image_size=32, patch=4, channels=[16]))
    with pytest.raises(ValueError, match="encoder_input must be teacher, pixels or both, got 'text'"):
        SemanticVQConfig(encoder_input="text")


def test_recipe_trains_loss_falls_cosine_rises_and_saves_a_loadable_codec(teacher, tmp_path):
    teacher.save(tmp_path / "teacher")
    cfg = recipe.SemanticCodecRecipe(
        out_dir=str(tmp_path / "run"),
        teacher_dir=str(tmp_path / "teacher"),
        codec=SemanticVQ.debug_config(),
        train=recipe.SemanticCodecTrainConfig(
            max_steps=40, max_minutes=None, batch_size=16, log_every=10, ckpt_every=0, precision="fp32"
        ),
        eval=recipe.SemanticCodecEvalConfig(
            splits=["val", "test-unseen"], n_images=12, batch_size=12, curve_every=20, curve_images=6
        ),
    )
    metrics = recipe.run(cfg)
    summary = metrics["train"]
    assert summary["steps"] == 40
    assert summary["final_loss"] < 0.8 * summary["first_loss"], summary
    assert summary["final_feature_cos"] > summary["first_feature_cos"] + 0.2, summary
    for split in ("val", "test-unseen"):
        m = metrics[split]
        assert m["n_images"] == 12 and 0 < m["codebook_usage"] <= 1 and -1 <= m["feature_cos"] <= 1
        assert {"oracle_preserved", "oracle_preserved_1obj", "psnr_db"} <= set(m)
    log = [
        json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    curve = [row for row in log if "test-unseen/oracle_preserved" in row]
    assert [row["step"] for row in curve] == [20, 40] and 0 < curve[-1]["val/codebook_usage"] <= 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["config"]["codec"]["teacher"]["image"]["dim"] == 32  # the teacher's config, not the default
    codec = load_codec(tmp_path / "run")
    assert codec.kind == "image_semantic_vq" and codec.metrics["val"] == metrics["val"]
    with pytest.raises(ValueError, match="teacher_dir is required"):
        recipe.run(recipe.SemanticCodecRecipe(out_dir=str(tmp_path / "x")))


def test_palette_index_is_the_nearest_palette_colour(teacher, images):
    codec = debug_codec(teacher, images)
    noisy = images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    for x in (images, noisy):
        brute = ((x.unsqueeze(1) - codec.palette[None, :, :, None, None]) ** 2).sum(dim=2).argmin(dim=1)
        torch.testing.assert_close(codec.palette_index(x), brute, rtol=0, atol=0)
    assert int(codec.palette_index(images).max()) > 0  # the renders hold shapes, not only background


def test_shipped_config_builds_a_mask_colour_codec_that_round_trips(teacher, images, tmp_path):
    from panglot.config import load_config
    from recipes.stages import config_path

    cfg = load_config(recipe.SemanticCodecRecipe, config_path("codec_semantic_vq.yaml"), ["teacher_dir=unused"])
    assert cfg.codec.pixel.encoder_input == "mask_colour" and cfg.codec.pixel.res_blocks == 0
    assert cfg.codec.encoder_input == "both" and cfg.train.edge_weight == 10.0 and cfg.train.optim.lr == 6e-3
    assert cfg.codec.quantizer == "fsq" and cfg.codec.pixel.code_split == "shape_colour"
    torch.manual_seed(0)
    config = dataclasses.replace(cfg.codec, teacher=teacher.config)
    codec = SemanticVQ.from_teacher(config, teacher).train()
    codec(images)  # k-means initialises the codebook
    codec.eval().save(tmp_path / "codec")
    loaded = load_codec(tmp_path / "codec")
    ids = loaded.encode_tensor(images)
    assert ids.shape == (8, 64) and torch.equal(ids, codec.encode_tensor(images))
    assert loaded.vocab_size == 240 * 8 and loaded.decode_tensor(ids).shape == (8, 3, 64, 64)


def test_a_colour_split_codec_joins_codes_and_token_colours(teacher, images, tmp_path):
    split_pixel = PixelVQConfig(
        patch=8, channels=[16], res_blocks=0, latent_dim=16, encoder_input="mask_colour", code_split="shape_colour"
    )
    codec = debug_codec(teacher, images, quantizer="fsq", fsq_levels=[4, 3], pixel=split_pixel)
    assert codec.vocab_size == 12 * 8 and codec.codebook_size == 12
    ids = codec.encode_tensor(images)
    onehot = torch.nn.functional.one_hot(codec.palette_index(images), 9).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(ids % 8, torch.nn.functional.avg_pool2d(onehot[:, 1:], 8).argmax(1).flatten(1))
    assert [n for _, n in codec.id_factors()] == [8, 4, 3]
    # repainting the colour ids repaints the decoded image: the pixel path never sees a colour
    perm = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
    mapping = torch.tensor([0, *(perm + 1).tolist()])
    decoded, repainted = codec.decode_tensor(ids), codec.decode_tensor(ids // 8 * 8 + perm[ids % 8])
    torch.testing.assert_close(repainted, codec.palette[mapping[codec.palette_index(decoded)]].permute(0, 3, 1, 2))
    assert not torch.equal(codec.decode_features(ids), codec.decode_features(ids // 8 * 8 + perm[ids % 8]))
    codec.save(tmp_path / "split")
    loaded = load_codec(tmp_path / "split")
    torch.testing.assert_close(loaded.encode_tensor(images), ids)
    torch.testing.assert_close(loaded.decode_tensor(ids), decoded)
    out = codec.train()(images)
    assert out.decoded.shape == (8, 9, 64, 64) and out.ids.shape == (8, 64)
