"""Semantic VQ (ILLUME, Wang et al. 2024): image tokens that carry the semantics of a vision encoder.

64 x 64 image -> 8 x 8 = 64 ids. The codec quantizes features that a frozen semantic teacher (the image
tower of panglot's CLIP-style dual encoder) gives each 8 x 8 patch, and is trained to reconstruct
those teacher features from the codes, so the language model's image tokens are semantic:

- teacher (frozen, stored inside the codec): per-patch features ``(B, 64, grid_dim)``;
- encoder (``encoder_input``): ``teacher``: a small trainable adapter over the teacher features (as
  ILLUME); ``pixels``: the pixel VQ encoder (``panglot.codecs.image_vq.build_encoder``); ``both``: their
  sum, so pixel detail the teacher drops can still reach the codes;
- quantizer (fp32, outside autocast): a cosine-similarity codebook with k-means init, EMA updates and
  dead-code expiry (``vq``), or finite scalar quantization (``fsq``), from ``vector-quantize-pytorch``;
- semantic decoder: codes -> a small bidirectional transformer -> the teacher's per-patch features
  (trained with a cosine loss);
- pixel decoder: the pixel VQ decoder (``build_decoder``) on the codes -> the image (palette
  cross-entropy with foreground and edge weights, as ``pixel_vq_loss``).

With ``pixel.code_split: shape_colour`` (as the pixel VQ) an id is a code x the token's colour: the pixel
stem reads colour-free masks, the pixel decoder takes each pixel's colour from the 3 x 3 neighbour tokens'
colour ids, and the semantic decoder reads the code plus a learned embedding of the colour.

The nested ``pixel`` config is a :class:`PixelVQConfig`: its encoder/decoder fields (``patch``,
``channels``, ``res_blocks``, ``latent_dim``, ``pixels``, ``palette``) shape the pixel encoder and
decoder and ``latent_dim`` is the code width; its quantizer fields are not read (the quantizer is
configured here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ

from panglot.codecs.base import ImageCodec, register_codec
from panglot.codecs.image_semantic.teacher import ImageTeacher
from panglot.codecs.image_vq.model import (
    PixelVQConfig,
    build_decoder,
    build_encoder,
    colour_split_input,
    compose_palette,
    edge_mask,
    join_ids,
    nearest_palette,
    split_factors,
    split_ids,
)
from panglot.codecs.indexed_vq import cosine_ema_vq
from panglot.encoders import DualEncoder, DualEncoderConfig, TowerConfig
from panglot.encoders.dual import Tower


@dataclass
class SemanticVQConfig:
    image_size: int = 64
    # What the encoder reads: the teacher's features through an adapter (ILLUME), the pixels, or both.
    encoder_input: Literal["teacher", "pixels", "both"] = "both"
    teacher: DualEncoderConfig = field(default_factory=DualEncoderConfig)  # set from the teacher's directory
    adapter_dim: int = 256  # hidden width of the adapter MLP over teacher features
    quantizer: Literal["vq", "fsq"] = "vq"
    codebook_size: int = 1024  # vq
    codebook_dim: int = 16  # vq: codes are looked up in this smaller space (better usage)
    fsq_levels: list[int] = field(default_factory=lambda: [8, 6, 5])  # fsq: vocab = product
    ema_decay: float = 0.9  # vq codebook EMA
    dead_code_threshold: float = 1.0  # vq: codes used less than this (EMA count) are re-seeded
    commitment_weight: float = 0.25  # vq
    semantic_decoder: TowerConfig = field(
        default_factory=lambda: TowerConfig(dim=128, n_layers=2, n_heads=4, ffn_dim=256)
    )
    pixel: PixelVQConfig = field(
        default_factory=lambda: PixelVQConfig(patch=4, channels=[64, 128], res_blocks=2, latent_dim=32)
    )

    def __post_init__(self) -> None:
        problems = []
        sizes = (self.image_size, self.teacher.image_size, self.pixel.image_size)
        if len(set(sizes)) != 1:
            problems.append(f"image_size, teacher.image_size and pixel.image_size must agree, got {sizes}")
        elif self.image_size // self.pixel.downsample != self.teacher.grid_size:
            problems.append(
                f"the pixel encoder/decoder grid ({self.image_size} / {self.pixel.downsample}) must equal the "
                f"teacher's patch grid ({self.teacher.grid_size}); change pixel.patch or pixel.channels"
            )
        if self.encoder_input not in ("teacher", "pixels", "both"):
            problems.append(f"encoder_input must be teacher, pixels or both, got {self.encoder_input!r}")
        if self.quantizer not in ("vq", "fsq"):
            problems.append(f"quantizer must be vq or fsq, got {self.quantizer!r}")
        if self.codebook_size < 2 or self.codebook_dim < 1 or self.adapter_dim < 1:
            problems.append(
                f"codebook_size must be >= 2 and codebook_dim, adapter_dim >= 1, got "
                f"{self.codebook_size}, {self.codebook_dim}, {self.adapter_dim}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def reads_teacher(self) -> bool:
        return self.encoder_input in ("teacher", "both")

    @property
    def reads_pixels(self) -> bool:
        return self.encoder_input in ("pixels", "both")


# --- quantizers -------------------------------------------------------------------------------------------
class Quantized(NamedTuple):
    codes: torch.Tensor  # (B, N, D) quantized latents (straight-through gradients)
    ids: torch.Tensor  # (B, N) long
    aux_loss: torch.Tensor  # scalar: commitment loss (vq), 0 (fsq)


class CosineCodebook(nn.Module):
    """Cosine-similarity codebook with k-means init, EMA updates and dead-code expiry."""

    def __init__(self, cfg: SemanticVQConfig):
        super().__init__()
        self.vocab_size = cfg.codebook_size
        self.vq = cosine_ema_vq(
            cfg.pixel.latent_dim, cfg.codebook_size, cfg.codebook_dim, cfg.ema_decay, cfg.dead_code_threshold, cfg.commitment_weight
        )

    def forward(self, z: torch.Tensor) -> Quantized:
        codes, ids, aux = self.vq(z)
        return Quantized(codes, ids.long(), aux)

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code by cosine similarity, computed here so that encoding never initialises or updates
        the codebook (the library's forward may do both)."""
        z = F.normalize(self.vq.project_in(z), dim=-1)  # (B, N, d)
        codebook = F.normalize(self.vq.codebook, dim=-1)  # (K, d)
        return (z @ codebook.t()).argmax(dim=-1)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vq.get_output_from_indices(ids)


class ScalarCodes(nn.Module):
    """Finite scalar quantization: each latent channel rounded to a few levels; no codebook to learn."""

    def __init__(self, cfg: SemanticVQConfig):
        super().__init__()
        self.vocab_size = math.prod(cfg.fsq_levels)
        self.fsq = FSQ(levels=list(cfg.fsq_levels), dim=cfg.pixel.latent_dim)

    def forward(self, z: torch.Tensor) -> Quantized:
        codes, ids = self.fsq(z)
        return Quantized(codes, ids.long(), z.new_zeros(()))

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        return self.fsq(z)[1].long()

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_codes(ids)


_QUANTIZERS = {"vq": CosineCodebook, "fsq": ScalarCodes}


# --- encoder and decoders ---------------------------------------------------------------------------------
class SemanticDecoder(nn.Module):
    """Codes (B, N, D) -> predicted teacher features (B, N, grid_dim): a small bidirectional transformer."""

    def __init__(self, code_dim: int, cfg: TowerConfig, out_dim: int, n_tokens: int, eps: float):
        super().__init__()
        self.proj_in = nn.Linear(code_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(n_tokens, cfg.dim) * 0.02)
        self.tower = Tower(cfg, n_tokens, eps)
        self.proj_out = nn.Linear(cfg.dim, out_dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.tower(self.proj_in(codes) + self.pos))


class SemanticVQOutput(NamedTuple):
    decoded: torch.Tensor  # (B, K, S, S) palette logits ("palette") or (B, 3, S, S) pixels ("rgb")
    features: torch.Tensor  # (B, N, grid_dim) reconstructed teacher features
    target: torch.Tensor  # (B, N, grid_dim) the teacher's features
    ids: torch.Tensor  # (B, N)
    aux_loss: torch.Tensor  # scalar


@register_codec
class SemanticVQ(ImageCodec):
    """64 x 64 image <-> 64 ids (8 x 8 grid, row-major) whose codes reconstruct a teacher's features."""

    kind = "image_semantic_vq"
    config_cls = SemanticVQConfig

    def __init__(self, config: SemanticVQConfig):
        super().__init__(config)
        c = config
        self.grid = c.teacher.grid_size
        self.teacher = ImageTeacher(c.teacher)
        if c.reads_teacher:
            self.adapter = nn.Sequential(
                nn.Linear(self.teacher.grid_dim, c.adapter_dim),
                nn.GELU(),
                nn.Linear(c.adapter_dim, c.pixel.latent_dim),
            )
        if c.reads_pixels:
            self.pixel_encoder = build_encoder(c.pixel)
        self.quantizer = _QUANTIZERS[c.quantizer](c)
        self.semantic_decoder = SemanticDecoder(
            c.pixel.latent_dim, c.semantic_decoder, self.teacher.grid_dim, self.grid**2, c.teacher.norm_eps
        )
        self.pixel_decoder = build_decoder(c.pixel)
        if c.pixel.code_split == "shape_colour":  # the colour id's share of the semantic decoder's input
            self.colour_embed = nn.Embedding(c.pixel.n_colours, c.pixel.latent_dim)
        palette = torch.tensor(c.pixel.palette, dtype=torch.float32) / 127.5 - 1.0  # (K, 3) in [-1, 1]
        self.register_buffer("palette", palette, persistent=False)

    @classmethod
    def debug_config(cls) -> SemanticVQConfig:
        return SemanticVQConfig(
            teacher=DualEncoderConfig.debug(),
            adapter_dim=32,
            codebook_size=64,
            codebook_dim=8,
            semantic_decoder=TowerConfig(dim=16, n_layers=1, n_heads=2, ffn_dim=32),
            pixel=PixelVQConfig(patch=8, channels=[16], res_blocks=1, latent_dim=16),
        )

    @classmethod
    def from_teacher(cls, config: SemanticVQConfig, encoder: DualEncoder) -> SemanticVQ:
        """A new codec whose frozen teacher is ``encoder``'s image side (config and weights copied in;
        ``config.teacher`` is replaced by the encoder's config)."""
        codec = cls(replace(config, teacher=encoder.config))
        codec.teacher.load_from(encoder)
        return codec.to(encoder.device)

    # --- what it is ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.quantizer.vocab_size * self.config.pixel.n_colours

    @property
    def split(self) -> bool:
        return self.config.pixel.code_split == "shape_colour"

    @property
    def codebook_size(self) -> int:
        return self.quantizer.vocab_size

    def codebook_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.split_ids(ids)[0]

    def split_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids (B, N) -> codebook ids (B, N) and token colours (B, g, g) (None without a code split)."""
        return split_ids(ids, self.config.pixel.n_colours, self.grid)

    def id_factors(self) -> list[tuple[torch.Tensor, int]]:
        """The token colour (with a code split) and, with FSQ, each digit of the code."""
        levels = self.config.fsq_levels if self.config.quantizer == "fsq" else []
        return split_factors(self.vocab_size, self.config.pixel.n_colours, levels)

    @property
    def tokens_per_item(self) -> int:
        return self.grid * self.grid

    @property
    def token_grid(self) -> tuple[int, int]:
        return self.grid, self.grid

    # --- parts --------------------------------------------------------------------------------------
    def palette_index(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, S, S) index of the nearest palette colour (0 = background)."""
        return nearest_palette(x, self.palette)

    def _latents(
        self, x: torch.Tensor, teacher_features: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, 3, S, S) (+ teacher features (B, N, grid_dim)) -> latents (B, N, D) in fp32, and with a
        code split the token colours (B, g, g) (else None)."""
        z = torch.zeros((), device=x.device)
        colours = None
        if self.config.reads_teacher:
            z = z + self.adapter(teacher_features)
        if self.config.pixel.pixels == "palette" and (self.config.reads_pixels or self.split):
            x = F.one_hot(self.palette_index(x), len(self.palette)).permute(0, 3, 1, 2).to(x.dtype)
            x, colours = colour_split_input(x, self.config.pixel)
        if self.config.reads_pixels:
            z = z + self.pixel_encoder(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return z.float(), colours

    def _pixels(self, codes: torch.Tensor, colours: torch.Tensor | None = None) -> torch.Tensor:
        b, _, d = codes.shape  # (B, N, D)
        out = self.pixel_decoder(codes.transpose(1, 2).reshape(b, d, self.grid, self.grid))
        return compose_palette(out, colours, self.config.pixel.n_colours) if self.split else out

    def _features(self, codes: torch.Tensor, colours: torch.Tensor | None = None) -> torch.Tensor:
        if self.split:
            codes = codes + self.colour_embed(colours.flatten(1)).to(codes.dtype)
        return self.semantic_decoder(codes)

    def to_pixels(self, decoded: torch.Tensor) -> torch.Tensor:
        """Pixel decoder output -> (B, 3, S, S) in [-1, 1] (palette: the most likely colour per pixel)."""
        if self.config.pixel.pixels == "rgb":
            return decoded.float()
        return self.palette[decoded.argmax(dim=1)].permute(0, 3, 1, 2)

    # --- training path ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> SemanticVQOutput:
        """Reconstructions of pixels and teacher features, ids and the quantizer's auxiliary loss (updates
        the codebook in training mode)."""
        self.check_images(x)
        target = self.teacher(x)  # (B, N, grid_dim), no gradient
        z, colours = self._latents(x, target)
        with torch.autocast(device_type=z.device.type, enabled=False):
            q = self.quantizer(z)
        return SemanticVQOutput(
            self._pixels(q.codes, colours),
            self._features(q.codes, colours),
            target,
            join_ids(q.ids, colours, self.config.pixel.n_colours),
            q.aux_loss,
        )

    # --- protocol -----------------------------------------------------------------------------------
    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        self.check_images(x)
        features = self.teacher(x) if self.config.reads_teacher else None
        z, colours = self._latents(x, features)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return join_ids(self.quantizer.ids(z), colours, self.config.pixel.n_colours)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N) -> code vectors (B, N, D) in fp32 (with a code split: of the codebook part)."""
        with torch.autocast(device_type=ids.device.type, enabled=False):
            return self.quantizer.codes(self.split_ids(ids)[0])

    def decode_tensor(self, ids: torch.Tensor) -> torch.Tensor:
        return self.to_pixels(self._pixels(self.codes(ids), self.split_ids(ids)[1]))

    def decode_features(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N) -> the reconstructed teacher features (B, N, grid_dim)."""
        return self._features(self.codes(ids), self.split_ids(ids)[1])


@torch.no_grad()
def feature_cosine(codec: SemanticVQ, x: torch.Tensor) -> torch.Tensor:
    """Per-image mean cosine similarity (B,) between the teacher's features of ``x`` and the features the
    semantic decoder reconstructs from ``encode_tensor(x)``: what the tokens keep of the semantics."""
    target = codec.teacher(x).float()
    features = codec.decode_features(codec.encode_tensor(x)).float()
    return F.cosine_similarity(features, target, dim=-1).mean(dim=1)


def semantic_vq_loss(
    codec: SemanticVQ,
    x: torch.Tensor,
    semantic_weight: float = 1.0,
    fg_weight: float = 1.0,
    edge_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Pixel reconstruction + ``semantic_weight`` * (1 - cosine) to the teacher's features + the quantizer's
    aux loss.

    Pixels as in ``pixel_vq_loss``: "palette" is cross-entropy against each pixel's nearest palette colour,
    "rgb" MSE + L1; non-background pixels weigh ``fg_weight``, pixels at a colour edge ``edge_weight`` more.
    """
    out = codec(x)
    cos = F.cosine_similarity(out.features.float(), out.target.float(), dim=-1)  # (B, N)
    semantic = (1.0 - cos).mean()
    target = codec.palette_index(x)  # (B, S, S)
    weight = 1.0 + (fg_weight - 1.0) * (target != 0).float() + (edge_weight - 1.0) * edge_mask(target).float()
    weight = weight / weight.mean()
    metrics: dict[str, float] = {}
    if codec.config.pixel.pixels == "rgb":
        err = out.decoded.float() - x
        recon = (err.pow(2).mean(dim=1) * weight).mean() + (err.abs().mean(dim=1) * weight).mean()
        metrics["pixel"] = recon.item()
    else:
        recon = (F.cross_entropy(out.decoded.float(), target, reduction="none") * weight).mean()
        metrics["ce"] = recon.item()
    loss = recon + semantic_weight * semantic + out.aux_loss
    metrics.update(
        loss=loss.item(),
        semantic=semantic.item(),
        feature_cos=cos.mean().item(),
        aux=float(out.aux_loss.detach()),
    )
    return loss, metrics
