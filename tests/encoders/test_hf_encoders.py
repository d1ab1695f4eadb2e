"""Pretrained CLIP / SigLIP through ``load_pretrained_dual_encoder``: parity with transformers on tiny random
models (and tiny tokenizers) that the test builds and saves itself."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPModel,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipModel,
)

from panglot.encoders import HFDualEncoder, load_pretrained_dual_encoder

WORDS = ["a", "small", "large", "red", "blue", "circle", "square", "at", "the", "top", "left", "and"]
TEXTS = ["a small red circle at the top", "a large blue square at the left and a small red circle at the top"]
MEAN, STD = [0.4, 0.45, 0.5], [0.25, 0.3, 0.2]


def tiny_tokenizer(bos_eos: bool) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3} | {w: i + 4 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_clip() -> CLIPModel:
    text = dict(vocab_size=16, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=32, eos_token_id=2, bos_token_id=1, pad_token_id=0)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                  patch_size=5)  # fmt: skip
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))


def tiny_siglip() -> SiglipModel:
    text = dict(vocab_size=16, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=20)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=4)  # fmt: skip
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision))


def save(model, tokenizer, directory, preprocessor: bool = True):
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if preprocessor:
        (directory / "preprocessor_config.json").write_text(
            json.dumps({"image_mean": MEAN, "image_std": STD})
        )
    return directory


def reference_pixels(x: torch.Tensor, size: int) -> torch.Tensor:
    """What the image processor gives for our images: [0, 1], resized, normalised."""
    x = F.interpolate((x + 1) / 2, size=(size, size), mode="bicubic", align_corners=False)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(3, 3, 64, 64) * 2 - 1


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_parity_with_transformers(family, images, tmp_path):
    torch.manual_seed(0)
    model = (tiny_clip() if family == "clip" else tiny_siglip()).eval()
    tokenizer = tiny_tokenizer(bos_eos=family == "clip")
    enc = load_pretrained_dual_encoder(save(model, tokenizer, tmp_path / family))
    assert isinstance(enc, HFDualEncoder) and enc.model_type == family and not enc.training
    size = model.config.vision_config.image_size
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=reference_pixels(images, size))
        if family == "clip":
            inputs = tokenizer(TEXTS, padding="longest", return_tensors="pt")
            ref_text = model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
        else:
            inputs = tokenizer(TEXTS, padding="max_length", max_length=20, return_tensors="pt")
            ref_text = model.get_text_features(input_ids=inputs["input_ids"])
        features = enc.encode_images(images)
        text_emb = enc.embed_texts(TEXTS)
    torch.testing.assert_close(
        features.embedding, F.normalize(ref.pooler_output, dim=-1), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(text_emb, F.normalize(ref_text.pooler_output, dim=-1), atol=1e-5, rtol=1e-5)
    assert text_emb.shape == (2, enc.embed_dim) and features.embedding.shape == (3, enc.embed_dim)
    # the grid: patch features (class token dropped) pooled to 8 x 8
    patches = ref.last_hidden_state[:, 1:] if family == "clip" else ref.last_hidden_state
    side = size // model.config.vision_config.patch_size
    pooled = (
        F.adaptive_avg_pool2d(patches.transpose(1, 2).reshape(3, -1, side, side), 8)
        .flatten(2)
        .transpose(1, 2)
    )
    assert features.grid.shape == (3, 64, enc.grid_dim) and enc.grid_size == 8
    torch.testing.assert_close(features.grid, pooled, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_a_clip_text_embedding(tmp_path):
    torch.manual_seed(0)
    enc = load_pretrained_dual_encoder(save(tiny_clip().eval(), tiny_tokenizer(True), tmp_path / "clip"))
    with torch.no_grad():
        torch.testing.assert_close(
            enc.embed_texts(TEXTS[:1]), enc.embed_texts(TEXTS)[:1], atol=1e-5, rtol=1e-5
        )


def test_default_mean_std_without_preprocessor_config(images, tmp_path):
    torch.manual_seed(0)
    model = tiny_siglip().eval()
    enc = load_pretrained_dual_encoder(save(model, tiny_tokenizer(False), tmp_path / "s", preprocessor=False))
    assert enc.image_mean.flatten().tolist() == [0.5, 0.5, 0.5]
    pixels = F.interpolate((images + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False) * 2 - 1
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(enc.embed_images(images), F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained_dual_encoder(tmp_path / "nowhere")
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_pretrained_dual_encoder(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(
        ValueError, match=r"model_type 'llama' is not supported; expected one of \['clip', 'siglip'\]"
    ):
        load_pretrained_dual_encoder(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights.*pytorch_model\.bin"):
        load_pretrained_dual_encoder(tmp_path / "m")


def test_text_errors(tmp_path):
    torch.manual_seed(0)
    enc = load_pretrained_dual_encoder(save(tiny_clip().eval(), tiny_tokenizer(True), tmp_path / "clip"))
    with pytest.raises(ValueError, match="empty text at index 1"):
        enc.embed_texts(["a red circle", ""])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc.embed_images(torch.zeros(3, 64, 64))
