"""Pretrained Hugging Face CLIP / SigLIP checkpoints behind the dual encoder's methods.

:func:`load_pretrained_dual_encoder` reads a *local* directory (``config.json``, ``*.safetensors``, the
tokenizer files and optionally ``preprocessor_config.json``); nothing is downloaded and nothing is
unpickled. The model class is chosen by ``config.json``'s ``model_type``, never by the path.

Images come in as panglot's (B, 3, 64, 64) tensors in [-1, 1]; they are resized to the model's image
size with ``torch.nn.functional.interpolate`` (bicubic) and normalised with the model's mean/std, as its
image processor would (for square inputs resize-then-crop is a plain resize). Texts go through the
model's own tokenizer: CLIP pads to the longest text and masks the padding; SigLIP pads to its fixed
length without a mask, as it was trained; a text longer than the model's positions is truncated, as its
processor does. ``image_grid`` pools the model's patch features (class token
dropped) to 8 x 8 by adaptive average pooling, so its shape is that of :class:`~panglot.encoders.DualEncoder`.

Embeddings are ``get_image_features`` / ``get_text_features``'s ``pooler_output`` (transformers 5, where
these return model outputs; the patch features come from the same call). transformers is imported when
a model is loaded, not when :mod:`panglot.encoders` is imported.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from panglot.encoders.dual import ImageFeatures, normalize

GRID_SIZE = 8


@dataclass(frozen=True)
class Family:
    """What differs between the supported model types."""

    model_class: str  # in ``transformers``
    image_mean: tuple[float, float, float]  # used when the directory has no preprocessor_config.json
    image_std: tuple[float, float, float]
    text_padding: str  # "longest" (+ attention mask) or "max_length" (no mask, as trained)
    class_token: bool  # the vision tower's first output position is a class token
    embed_dim: Callable[[Any], int]  # from the model's config


FAMILIES = {
    "clip": Family(
        model_class="CLIPModel",
        image_mean=(0.48145466, 0.4578275, 0.40821073),
        image_std=(0.26862954, 0.26130258, 0.27577711),
        text_padding="longest",
        class_token=True,
        embed_dim=lambda config: config.projection_dim,
    ),
    "siglip": Family(
        model_class="SiglipModel",
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        text_padding="max_length",
        class_token=False,
        embed_dim=lambda config: config.vision_config.hidden_size,
    ),
}


class HFDualEncoder(nn.Module):
    """A transformers ``CLIPModel`` / ``SiglipModel`` with its tokenizer, offering ``image_grid``,
    ``encode_images``, ``embed_images`` and ``embed_texts`` like :class:`~panglot.encoders.DualEncoder`."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        model_type: str,
        image_mean: Sequence[float],
        image_std: Sequence[float],
    ) -> None:
        super().__init__()
        if model_type not in FAMILIES:
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(FAMILIES)}")
        self.model, self.tokenizer, self.model_type = model, tokenizer, model_type
        self.family = FAMILIES[model_type]
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def grid_size(self) -> int:
        return GRID_SIZE

    @property
    def grid_dim(self) -> int:
        return self.model.config.vision_config.hidden_size

    @property
    def embed_dim(self) -> int:
        return self.family.embed_dim(self.model.config)

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the model's normalised (B, 3, S, S) input."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.dtype.is_floating_point:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected images as a float tensor (B, 3, H, W) in [-1, 1], got {got}")
        x = (x.to(self.device, torch.float32) + 1) / 2  # [0, 1], as the image processor's rescale gives
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False)
        return (x - self.image_mean) / self.image_std

    def encode_images(self, x: torch.Tensor) -> ImageFeatures:
        out = self.model.get_image_features(pixel_values=self.pixel_values(x))
        patches = out.last_hidden_state[:, 1:] if self.family.class_token else out.last_hidden_state
        b, n, d = patches.shape
        side = math.isqrt(n)
        grid = patches.transpose(1, 2).reshape(b, d, side, side)
        grid = F.adaptive_avg_pool2d(grid, GRID_SIZE).flatten(2).transpose(1, 2)  # (B, 64, D)
        return ImageFeatures(grid, normalize(out.pooler_output))

    def image_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> patch features pooled to (B, 64, grid_dim), row-major 8 x 8."""
        return self.encode_images(x).grid

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> L2-normalised embeddings (B, embed_dim) float32."""
        return self.encode_images(x).embedding

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The model tokenizer's inputs for ``texts`` (input_ids, and attention_mask for CLIP)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise ValueError(f"expected a non-empty list of texts, got {texts!r}")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"empty text at index {i}: expected some text, got {text!r}")
        max_length = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer(
            list(texts),
            padding=self.family.text_padding,
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        )
        inputs = {"input_ids": enc["input_ids"].to(self.device)}
        if self.family.text_padding == "longest":
            inputs["attention_mask"] = enc["attention_mask"].to(self.device)
        return inputs

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> L2-normalised embeddings (B, embed_dim) float32."""
        return normalize(self.model.get_text_features(**self.tokenize(texts)).pooler_output)


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a local Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("model_type") not in FAMILIES:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: model_type {found!r} is not supported; expected one of {sorted(FAMILIES)}")
    return config


def read_mean_std(directory: Path, family: Family) -> tuple[Sequence[float], Sequence[float]]:
    """``image_mean`` / ``image_std`` of ``preprocessor_config.json``, or the family's defaults."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return family.image_mean, family.image_std
    config = json.loads(path.read_text())
    mean, std = config.get("image_mean", family.image_mean), config.get("image_std", family.image_std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path}: expected 3-channel image_mean and image_std, got {mean} and {std}")
    return mean, std


def load_pretrained_dual_encoder(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> HFDualEncoder:
    """A local CLIP or SigLIP directory (safetensors weights + tokenizer) as an :class:`HFDualEncoder`
    in eval mode on ``map_location``."""
    import transformers

    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {root} does not exist (or is not a directory)")
    model_type = read_hf_config(root)["model_type"]
    family = FAMILIES[model_type]
    if not any(root.glob("*.safetensors")):
        found = sorted(p.name for p in root.iterdir())[:10]
        raise FileNotFoundError(
            f"{root}: no *.safetensors weights (only safetensors are read), found {found}"
        )
    model_cls = getattr(transformers, family.model_class)
    model = model_cls.from_pretrained(root, local_files_only=True, use_safetensors=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(root, local_files_only=True)
    mean, std = read_mean_std(root, family)
    return HFDualEncoder(model, tokenizer, model_type, mean, std).to(map_location).eval()
