"""The dual encoder's API: shapes and normalisation, frozen use, save -> load, load errors."""

from __future__ import annotations

import json

import pytest
import torch

from panglot.encoders import DualEncoder, DualEncoderConfig, EncoderLoadError, TowerConfig, load_dual_encoder


def test_shapes_and_normalisation(encoder, images, examples):
    assert (encoder.grid_size, encoder.grid_dim, encoder.embed_dim) == (8, 32, 32)
    grid = encoder.image_grid(images)
    assert grid.shape == (6, 64, encoder.grid_dim)
    image_emb = encoder.embed_images(images)
    text_emb = encoder.embed_texts([e.caption for e in examples[:4]])
    assert image_emb.shape == (6, 32) and text_emb.shape == (4, 32)
    assert image_emb.dtype == text_emb.dtype == torch.float32
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(4))
    features = encoder.encode_images(images)
    assert torch.equal(features.grid, grid) and torch.equal(features.embedding, image_emb)


def test_grid_is_row_major_per_patch(encoder, images):
    """Changing the pixels of one 8 x 8 patch changes that patch's feature most."""
    x = images[:1].clone()
    x[:, :, 16:24, 40:48] = torch.randn(1, 3, 8, 8)  # patch row 2, column 5
    change = (encoder.image_grid(x) - encoder.image_grid(images[:1])).norm(dim=-1)[0]  # (64,)
    assert int(change.argmax()) == 2 * 8 + 5


def test_text_embedding_ignores_padding(encoder, examples):
    short, long = examples[0].caption, examples[1].paraphrase
    alone = encoder.embed_texts([short])
    batched = encoder.embed_texts([short, long])[:1]  # padded to the long text's length
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_frozen_teacher_use_has_no_side_effects(encoder, images, examples):
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.requires_grad_(False)
    with torch.no_grad():
        a = encoder.embed_images(images)
    b = encoder.embed_images(images)
    assert torch.equal(a, b) and not b.requires_grad
    encoder.embed_texts([examples[0].caption])
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_gradients_flow_when_training(encoder, images, examples):
    encoder.train()
    (
        encoder.embed_images(images[:2]) * encoder.embed_texts([e.caption for e in examples[:2]])
    ).sum().backward()
    assert encoder.patch_embed.weight.grad is not None and encoder.tok_embeddings.weight.grad is not None


def test_input_errors(encoder, images):
    with pytest.raises(ValueError, match=r"empty prompt at index 1"):
        encoder.embed_texts(["a small red circle at the top", "  "])
    with pytest.raises(ValueError, match="non-empty list of texts"):
        encoder.embed_texts("a small red circle at the top")
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\).*\(6, 3, 32, 32\)"):
        encoder.image_grid(images[:, :, :32, :32])
    with pytest.raises(ValueError, match="more than max_text_len 64"):
        encoder.embed_texts([" ".join(["red"] * 65)])


def test_save_load_round_trip_gives_identical_outputs(encoder, images, examples, tmp_path):
    texts = [e.paraphrase for e in examples[:5]]
    encoder.save(tmp_path / "enc", metrics={"test-seen": {"r@1": 0.5}})
    loaded = load_dual_encoder(tmp_path / "enc", map_location="cpu")
    assert isinstance(loaded, DualEncoder) and not loaded.training
    assert loaded.config == encoder.config and loaded.metrics == {"test-seen": {"r@1": 0.5}}
    assert torch.equal(loaded.image_grid(images), encoder.image_grid(images))
    assert torch.equal(loaded.embed_texts(texts), encoder.embed_texts(texts))
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "encoder.json",
        "encoder.safetensors",
        "tokenizer",
    ]


def test_load_errors_name_the_problem(encoder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dual_encoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderLoadError, match=r"not a dual encoder directory.*encoder\.json"):
        load_dual_encoder(tmp_path / "empty")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(EncoderLoadError, match="load_pretrained_dual_encoder"):
        load_dual_encoder(tmp_path / "hf")

    root = encoder.save(tmp_path / "enc")
    meta = json.loads((root / "encoder.json").read_text())
    (root / "encoder.json").write_text(json.dumps({**meta, "kind": "image_vq"}))
    with pytest.raises(EncoderLoadError, match="expected kind 'dual_encoder', found kind 'image_vq'"):
        load_dual_encoder(root)
    (root / "encoder.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(EncoderLoadError, match=r"format_version 99.*reads versions 1 to 1"):
        load_dual_encoder(root)
    (root / "encoder.json").write_text(json.dumps({**meta, "config": {**meta["config"], "embed_dim": 16}}))
    with pytest.raises(EncoderLoadError, match=r"text_proj.weight: expected \(16, 32\), found \(32, 32\)"):
        load_dual_encoder(root)
    (root / "encoder.json").write_text(json.dumps(meta))
    (root / "encoder.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"encoder\.safetensors"):
        load_dual_encoder(root)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of patch 7"):
        DualEncoderConfig(patch=7)
    with pytest.raises(ValueError, match="heads of even width"):
        TowerConfig(dim=30, n_heads=2)
    with pytest.raises(TypeError, match="TextTokenizer"):
        DualEncoder(DualEncoderConfig.debug(), tokenizer=None)
