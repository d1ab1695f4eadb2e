"""Pixel VQ: a small conv autoencoder with a discrete bottleneck, 64 x 64 image -> 8 x 8 = 64 ids.

encoder: a stem that folds ``patch`` x ``patch`` pixels into channels (pixel unshuffle, cheap on CPU; with
``encoder_input="mask_colour"`` the foreground mask unshuffled + each colour's share of the patch), stride-2
convs for the rest of the downsampling, then residual blocks at the token grid;
quantizer: one of three from ``vector-quantize-pytorch`` (see docs/codecs.md for the comparison):
``vq`` (cosine-similarity codebook, k-means init, EMA updates, dead-code expiry), ``fsq`` (finite scalar
quantization, no codebook) or ``lfq`` (lookup-free, binary codes + entropy loss);
decoder: the mirror image: residual blocks, stride-2 transposed convs, optional x2 upsample stages, pixel
shuffle.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ, LFQ

from panglot.codecs.base import ImageCodec, register_codec
from panglot.codecs.indexed_vq import cosine_ema_vq
from panglot.world.scene import BACKGROUND, COLORS

WORLD_PALETTE = [list(BACKGROUND), *(list(rgb) for rgb in COLORS.values())]


@dataclass
class PixelVQConfig:
    image_size: int = 64
    patch: int = 4  # stem: pixel-unshuffle by this factor
    channels: list[int] = field(default_factory=lambda: [32, 64])  # stem width, then one stride-2 stage each
    res_blocks: int = 1  # at the token grid, in encoder and decoder each (the recipe: 0, more steps won)
    latent_dim: int = 32  # quantizer input/output width
    quantizer: Literal["vq", "fsq", "lfq"] = "fsq"  # see docs/codecs.md for the comparison
    codebook_size: int = 512  # vq, lfq (lfq: a power of 2)
    codebook_dim: int = 16  # vq: codes are looked up in this smaller space (better usage)
    fsq_levels: list[int] = field(default_factory=lambda: [8, 6, 5])  # fsq: vocab = product (240)
    ema_decay: float = 0.9  # vq codebook EMA
    dead_code_threshold: float = 1.0  # vq: codes used less than this (EMA count) are re-seeded
    commitment_weight: float = 0.25  # vq
    entropy_loss_weight: float = 0.1  # lfq
    # "rgb": the encoder reads RGB and the decoder regresses it (MSE + L1). "palette" (flat-colour worlds):
    # each pixel is its nearest ``palette`` colour, one-hot in, classified out (cross-entropy), so decoded
    # images hold exact palette colours.
    pixels: Literal["rgb", "palette"] = "palette"
    palette: list[list[int]] = field(default_factory=lambda: [list(c) for c in WORLD_PALETTE])
    # palette output: "mask" = one background logit per pixel (the shape mask, learned once for every colour)
    # and a softmax over the other colours: log p(bg) = log sigmoid(m), log p(c) = log sigmoid(-m) + log
    # softmax(colours)_c; "classes" = a plain softmax over the palette (each colour learns its own shapes;
    # 41 % vs 60 % oracle-preserved at 1200 steps, docs/codecs.md).
    palette_head: Literal["mask", "classes"] = "mask"
    # encoder input: "pixels" = the stem reads the pixels as encoded (RGB, or every colour's one-hot, so each
    # colour learns its own shape features); "mask_colour" (palette only; the recipe's default) = the stem sees
    # the foreground mask at full resolution and each colour's share of a patch, so one set of shape weights
    # serves every colour and the held-out colour-shape pairs (docs/codecs.md). The dataclass keeps "pixels":
    # configs saved before this field (and nested in the semantic and Q-Former codecs) mean it.
    encoder_input: Literal["pixels", "mask_colour"] = "pixels"
    # decoder stages after the last transposed conv, each x2 (nearest upsample + 3x3 conv to this width), so
    # a shape is drawn by convs that slide over every pixel offset rather than per pixel-shuffle slot; the head
    # pixel-shuffles by what is left, patch / 2**len(upsample_channels). [] by default: it learned slower
    # per step and per CPU second (docs/codecs.md).
    upsample_channels: list[int] = field(default_factory=list)
    # "none": one quantizer code per token, shape and colour entangled in it. "shape_colour" (palette
    # pixels, mask head, mask_colour input): id = shape code * n_colours + the token's colour (its most
    # common foreground palette colour). The learned encoder and decoder see only colour-free masks (the
    # foreground and "the token's own colour"); each decoded pixel takes the colour of one of the 3 x 3
    # nearest tokens, picked by the shape path. Colour and shape never meet in learned weights, so a
    # held-out colour-shape pair decodes like a seen one (docs/codecs.md). Vocabulary: quantizer x colours.
    code_split: Literal["none", "shape_colour"] = "none"

    def __post_init__(self) -> None:
        problems = []
        if not self.channels or self.image_size % self.downsample:
            problems.append(
                f"image_size {self.image_size} must be divisible by patch * 2**(len(channels) - 1) = {self.downsample}"
            )
        if self.patch % 2 ** len(self.upsample_channels):
            problems.append(
                f"patch {self.patch} must be divisible by 2**len(upsample_channels) = {2 ** len(self.upsample_channels)}"
            )
        if self.encoder_input == "mask_colour" and self.pixels != "palette":
            problems.append('encoder_input "mask_colour" needs pixels "palette" (with "rgb" use "pixels")')
        if self.code_split == "shape_colour" and (
            self.pixels != "palette" or self.palette_head != "mask" or self.encoder_input != "mask_colour"
        ):
            problems.append(
                'code_split "shape_colour" needs pixels "palette", palette_head "mask" and encoder_input '
                f'"mask_colour", got pixels "{self.pixels}", palette_head "{self.palette_head}", encoder_input '
                f'"{self.encoder_input}"'
            )
        if problems:
            raise ValueError("; ".join(problems))
        if self.quantizer == "lfq" and not math.log2(self.codebook_size).is_integer():
            raise ValueError(f"lfq needs a power-of-2 codebook_size, got {self.codebook_size}")

    @property
    def pixel_channels(self) -> int:
        return 3 if self.pixels == "rgb" else len(self.palette)

    @property
    def n_colours(self) -> int:
        """Colour ids per token with ``code_split="shape_colour"`` (the palette minus background), else 1."""
        return len(self.palette) - 1 if self.code_split == "shape_colour" else 1

    @property
    def code_dim(self) -> int:
        """Width of ``PixelVQ.code_vectors``: the quantizer's code, plus the colour one-hot with a split."""
        return self.latent_dim + (self.n_colours if self.code_split == "shape_colour" else 0)

    @property
    def code_rank(self) -> int | None:
        """Directions the code vectors span (FSQ: one per level; a split adds n_colours - 1); None for
        a learned codebook."""
        if self.quantizer != "fsq":
            return None
        return len(self.fsq_levels) + (self.n_colours - 1 if self.code_split == "shape_colour" else 0)

    @property
    def head_channels(self) -> int:
        """Decoder outputs per pixel: the palette (or RGB), or with ``code_split="shape_colour"`` one
        background logit and one logit per 3 x 3 neighbour token whose colour the pixel may take."""
        return 1 + 9 if self.code_split == "shape_colour" else self.pixel_channels

    @property
    def encoder_in_channels(self) -> int:
        if self.code_split == "shape_colour":  # the foreground mask and the own-colour mask, unshuffled
            return 2 * self.patch**2
        if self.encoder_input == "mask_colour":  # the foreground mask per pixel + each colour's share
            return self.patch**2 + len(self.palette) - 1
        return self.pixel_channels * self.patch**2

    @property
    def head_shuffle(self) -> int:
        """Pixels per side that the head's pixel shuffle emits per position."""
        return self.patch // 2 ** len(self.upsample_channels)

    @property
    def downsample(self) -> int:
        """Pixels per token side."""
        return self.patch * 2 ** (len(self.channels) - 1)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def build_encoder(cfg: PixelVQConfig) -> nn.Sequential:
    ch_in = cfg.channels[0]
    if cfg.code_split == "shape_colour":  # the input is already colour-free: (B, 2, S, S) masks
        stem: nn.Module = nn.PixelUnshuffle(cfg.patch)
    elif cfg.encoder_input == "mask_colour":
        stem = MaskColourStem(cfg.patch)
    else:
        stem = nn.PixelUnshuffle(cfg.patch)
    layers: list[nn.Module] = [stem, nn.Conv2d(cfg.encoder_in_channels, ch_in, 3, padding=1)]
    for ch in cfg.channels[1:]:
        layers += [nn.SiLU(), nn.Conv2d(ch_in, ch, 4, stride=2, padding=1)]
        ch_in = ch
    layers += [ResBlock(ch_in) for _ in range(cfg.res_blocks)]
    layers += [nn.GroupNorm(8, ch_in), nn.SiLU(), nn.Conv2d(ch_in, cfg.latent_dim, 1)]
    return nn.Sequential(*layers)


def build_decoder(cfg: PixelVQConfig) -> nn.Sequential:
    chs = cfg.channels[::-1]
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, chs[0], 3, padding=1)]
    layers += [ResBlock(chs[0]) for _ in range(cfg.res_blocks)]
    for ch_in, ch_out in itertools.pairwise(chs):
        layers += [nn.SiLU(), nn.ConvTranspose2d(ch_in, ch_out, 4, stride=2, padding=1)]
    ch_in = chs[-1]
    for ch in cfg.upsample_channels:
        layers += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch_in, ch, 3, padding=1)]
        ch_in = ch
    layers += [nn.SiLU(), PixelHead(cfg, ch_in)]
    return nn.Sequential(*layers)


class MaskColourStem(nn.Module):
    """(B, K, S, S) palette one-hot (colour 0 = background) -> (B, p*p + K - 1, S/p, S/p): the foreground mask
    pixel-unshuffled by ``p`` (the shape, the same channels whatever the colour) and the share of each colour
    in the p x p patch (which colour, at patch resolution)."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        foreground = 1.0 - onehot[:, :1]  # (B, 1, S, S)
        shape = F.pixel_unshuffle(foreground, self.patch)  # (B, p*p, S/p, S/p)
        colour = F.avg_pool2d(onehot[:, 1:], self.patch)  # (B, K - 1, S/p, S/p)
        return torch.cat([shape, colour], dim=1)


class PixelHead(nn.Module):
    """(B, C, h, w) features -> (B, pixel_channels, S, S): a 3x3 conv emits ``head_shuffle``**2 pixels per
    position (pixel shuffle). Palette pixels with ``palette_head="mask"`` come out as log-probabilities (valid logits
    for cross-entropy and argmax) of a shared background mask times a colour softmax."""

    def __init__(self, cfg: PixelVQConfig, ch_in: int):
        super().__init__()
        self.conv = nn.Conv2d(ch_in, cfg.head_channels * cfg.head_shuffle**2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(cfg.head_shuffle)
        self.mask = cfg.pixels == "palette" and cfg.palette_head == "mask" and cfg.code_split == "none"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.conv(h))  # (B, K, S, S)
        if not self.mask:  # plain logits ("shape_colour": compose_palette adds the token colours)
            return out
        out = out.float()
        background = out[:, :1]  # palette colour 0
        colours = F.log_softmax(out[:, 1:], dim=1)
        return torch.cat([F.logsigmoid(background), F.logsigmoid(-background) + colours], dim=1)


def token_colours(onehot: torch.Tensor, cell: int) -> torch.Tensor:
    """(B, K, S, S) palette one-hot (0 = background) -> (B, S/cell, S/cell) each token's colour id in
    [0, K - 1): its most common foreground colour (0 when it has none; ties to the lower id)."""
    return F.avg_pool2d(onehot[:, 1:], cell).argmax(dim=1)


def shape_masks(onehot: torch.Tensor, colours: torch.Tensor, cell: int) -> torch.Tensor:
    """The colour-free encoder input of ``code_split="shape_colour"``: (B, 2, S, S) = the foreground mask
    and the mask of pixels in their token's own colour (where a token holds two objects, which is its)."""
    own = F.one_hot(colours, onehot.shape[1] - 1).permute(0, 3, 1, 2).to(onehot.dtype)  # (B, K - 1, g, g)
    own = F.interpolate(own, scale_factor=cell, mode="nearest")  # (B, K - 1, S, S)
    return torch.stack([1.0 - onehot[:, 0], (onehot[:, 1:] * own).sum(dim=1)], dim=1)


def split_factors(vocab_size: int, n_colours: int, fsq_levels: list[int]) -> list[tuple[torch.Tensor, int]]:
    """``id_factors`` of ids = code x ``n_colours`` + colour: the colour (when ``n_colours`` > 1), then each
    FSQ digit of the code (FSQ's id = sum of digit * product of the levels before it)."""
    ids = torch.arange(vocab_size)
    codes = ids // n_colours
    factors = [(ids % n_colours, n_colours)] if n_colours > 1 else []
    basis = 1
    for level in fsq_levels:
        factors.append((codes // basis % level, level))
        basis *= level
    return factors


def colour_split_input(onehot: torch.Tensor, cfg: PixelVQConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Palette one-hot (B, K, S, S) -> the pixel encoder's input and the token colours: with
    ``code_split="shape_colour"`` the colour-free ``shape_masks`` and ``token_colours``, else the one-hot, None."""
    if cfg.code_split == "none":
        return onehot, None
    colours = token_colours(onehot, cfg.downsample)
    return shape_masks(onehot, colours, cfg.downsample), colours


def nearest_palette(x: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, S, S) and a palette (K, 3) in the same scale -> (B, S, S) index of each pixel's
    nearest palette colour.

    |x - p|^2 = |x|^2 - 2 x.p + |p|^2, and |x|^2 is the same for every colour: one (B*S*S, 3) x (3, K)
    matmul in fp32, argmin over the contiguous last dim (8x faster than the broadcast difference).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        pixels = x.float().permute(0, 2, 3, 1)  # (B, S, S, 3)
        dist = palette.square().sum(dim=-1) - 2 * pixels @ palette.T  # (B, S, S, K) minus |x|^2
        return dist.argmin(dim=-1)


def join_ids(codes: torch.Tensor, colours: torch.Tensor | None, n_colours: int) -> torch.Tensor:
    """Codebook ids (B, N) and token colours (B, g, g) -> ids = code x ``n_colours`` + colour (no colours:
    the codes)."""
    return codes if colours is None else codes * n_colours + colours.flatten(1)


def split_ids(ids: torch.Tensor, n_colours: int, grid: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``join_ids`` undone: ids (B, N) -> codebook ids (B, N) and token colours (B, grid, grid) (None when
    ``n_colours`` is 1, i.e. without a code split)."""
    ids = ids.long()
    if n_colours == 1:
        return ids, None
    return ids // n_colours, (ids % n_colours).view(-1, grid, grid)


def compose_palette(head: torch.Tensor, colours: torch.Tensor, n_colours: int, eps: float = 1e-6) -> torch.Tensor:
    """``code_split="shape_colour"`` decoding: head (B, 10, S, S) = a background logit and logits over the
    3 x 3 neighbour tokens (row-major, centre = the pixel's own token), colours (B, g, g) token colour ids in
    [0, n_colours) -> (B, 1 + n_colours, S, S) palette log-probabilities: log p(bg) = log sigmoid(m),
    log p(c) = log sigmoid(-m) + log sum_n softmax(source)_n [colour_n = c], floored at ``eps``
    (neighbours outside the grid are never picked)."""
    b, _, size, _ = head.shape
    g = colours.shape[-1]
    cell = size // g
    head = head.float()
    # each neighbour's colour id at pixel resolution (B, 9, S, S), -1 outside the grid (never picked)
    neighbours = F.unfold(F.pad(colours[:, None].float(), (1, 1, 1, 1), value=-1.0), 3).view(b, 9, g, g)
    neighbours = neighbours.repeat_interleave(cell, dim=-2).repeat_interleave(cell, dim=-1)
    outside = F.unfold(F.pad(head.new_zeros(1, 1, g, g), (1, 1, 1, 1), value=float("-inf")), 3)
    outside = outside.view(1, 9, g, g).repeat_interleave(cell, dim=-2).repeat_interleave(cell, dim=-1)
    source = (head[:, 1:] + outside).softmax(dim=1)  # (B, 9, S, S)
    colour = head.new_zeros(b, n_colours, size, size).scatter_add_(1, neighbours.clamp_min(0).long(), source)
    background = head[:, :1]
    return torch.cat([F.logsigmoid(background), F.logsigmoid(-background) + colour.clamp_min(eps).log()], dim=1)


class Quantized(NamedTuple):
    codes: torch.Tensor  # (B, N, D) quantized latents (straight-through gradients)
    ids: torch.Tensor  # (B, N) long
    aux_loss: torch.Tensor  # scalar: commitment / entropy loss


class CodebookVQ(nn.Module):
    """Cosine-similarity codebook with k-means init, EMA updates and dead-code expiry."""

    def __init__(self, cfg: PixelVQConfig):
        super().__init__()
        self.vocab_size = cfg.codebook_size
        self.vq = cosine_ema_vq(
            cfg.latent_dim, cfg.codebook_size, cfg.codebook_dim, cfg.ema_decay, cfg.dead_code_threshold, cfg.commitment_weight
        )

    def forward(self, z: torch.Tensor) -> Quantized:
        codes, ids, aux = self.vq(z)
        return Quantized(codes, ids.long(), aux)

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code by cosine similarity, computed here so that encoding never initialises or
        updates the codebook (the library's forward may do both)."""
        z = F.normalize(self.vq.project_in(z), dim=-1)  # (B, N, d)
        codebook = F.normalize(self.vq.codebook, dim=-1)  # (K, d)
        return (z @ codebook.t()).argmax(dim=-1)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vq.get_output_from_indices(ids)


class ScalarFSQ(nn.Module):
    """Finite scalar quantization: each latent channel rounded to a few levels; no codebook to learn."""

    def __init__(self, cfg: PixelVQConfig):
        super().__init__()
        self.vocab_size = math.prod(cfg.fsq_levels)
        self.fsq = FSQ(levels=list(cfg.fsq_levels), dim=cfg.latent_dim)

    def forward(self, z: torch.Tensor) -> Quantized:
        codes, ids = self.fsq(z)
        return Quantized(codes, ids.long(), z.new_zeros(()))

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        return self.fsq(z)[1].long()

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_codes(ids)


class LookupFreeQ(nn.Module):
    """Lookup-free quantization: log2(K) binary channels, with an entropy loss for code usage."""

    def __init__(self, cfg: PixelVQConfig):
        super().__init__()
        self.vocab_size = cfg.codebook_size
        self.lfq = LFQ(
            dim=cfg.latent_dim, codebook_size=cfg.codebook_size, entropy_loss_weight=cfg.entropy_loss_weight
        )

    def forward(self, z: torch.Tensor) -> Quantized:
        codes, ids, aux = self.lfq(z)
        return Quantized(codes, ids.long(), aux)

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        return self.lfq(z)[1].long()

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lfq.indices_to_codes(ids)


_QUANTIZERS = {"vq": CodebookVQ, "fsq": ScalarFSQ, "lfq": LookupFreeQ}


class PixelVQOutput(NamedTuple):
    decoded: torch.Tensor  # (B, 3, S, S) pixels ("rgb") or (B, K, S, S) palette logits ("palette")
    ids: torch.Tensor  # (B, N)
    aux_loss: torch.Tensor  # scalar
    classes: torch.Tensor | None = None  # (B, S, S) the input's palette index ("palette"), for the loss


@register_codec
class PixelVQ(ImageCodec):
    """64 x 64 image <-> 64 ids (8 x 8 grid, row-major)."""

    kind = "image_vq"
    # 2: the decoder's last conv lives in PixelHead (decoder.N.conv.*); a directory from before fails to load,
    # naming the missing decoder.N.conv.weight: retrain it. Configs without ``encoder_input`` read as "pixels".
    format_version = 2
    config_cls = PixelVQConfig

    def __init__(self, config: PixelVQConfig):
        super().__init__(config)
        self.grid = config.image_size // config.downsample
        self.encoder = build_encoder(config)
        self.quantizer = _QUANTIZERS[config.quantizer](config)
        self.decoder = build_decoder(config)
        palette = torch.tensor(config.palette, dtype=torch.float32) / 127.5 - 1.0  # (K, 3) in [-1, 1]
        self.register_buffer("palette", palette, persistent=False)

    @classmethod
    def debug_config(cls) -> PixelVQConfig:
        return PixelVQConfig(
            patch=8, channels=[16], res_blocks=1, latent_dim=16, codebook_size=64, codebook_dim=8,
            encoder_input="mask_colour",
        )  # fmt: skip

    @property
    def vocab_size(self) -> int:
        return self.quantizer.vocab_size * self.config.n_colours

    @property
    def tokens_per_item(self) -> int:
        return self.grid * self.grid

    @property
    def token_grid(self) -> tuple[int, int]:
        return self.grid, self.grid

    @property
    def codebook_size(self) -> int:
        return self.quantizer.vocab_size

    def codebook_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.split_ids(ids)[0]

    def id_factors(self) -> list[tuple[torch.Tensor, int]]:
        """The token colour (``code_split="shape_colour"``) and, with FSQ, each digit of the shape code
        (an FSQ code is one level per latent channel: ids with the same level share it)."""
        levels = self.config.fsq_levels if self.config.quantizer == "fsq" else []
        return split_factors(self.vocab_size, self.config.n_colours, levels)

    def _latents(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (and, for palette pixels, their ``palette_index`` if known) -> the quantizer's input
        (B, N, D) in fp32, and with ``code_split="shape_colour"`` the token colours (B, g, g) (else None)."""
        colours = None
        if self.config.pixels == "palette":
            classes = self.palette_index(x) if classes is None else classes
            palette = torch.arange(len(self.palette), device=x.device)[None, :, None, None]
            x = (classes[:, None] == palette).to(x.dtype)  # (B, K, S, S) one-hot
            x, colours = colour_split_input(x, self.config)
        z = self.encoder(x)  # (B, D, h, w)
        return z.flatten(2).transpose(1, 2).float(), colours  # quantizer in fp32

    def _pixels(self, codes: torch.Tensor, colours: torch.Tensor | None = None) -> torch.Tensor:
        b, _, d = codes.shape  # (B, N, D)
        out = self.decoder(codes.transpose(1, 2).reshape(b, d, self.grid, self.grid))
        if self.config.code_split == "shape_colour":
            out = compose_palette(out, colours, self.config.n_colours)
        return out

    def split_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids (B, N) -> quantizer ids (B, N) and token colours (B, g, g) (None without a code split)."""
        return split_ids(ids, self.config.n_colours, self.grid)

    def code_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N) -> (B, N, C) float32: what the decoder reads for each id (the quantizer's code, with
        ``code_split="shape_colour"`` followed by the colour's one-hot)."""
        ids, n = ids.long(), self.config.n_colours  # any (B, N): no token grid needed
        with torch.autocast(device_type=ids.device.type, enabled=False):
            codes = self.quantizer.codes(ids // n).float()
        if self.config.code_split == "none":
            return codes
        return torch.cat([codes, F.one_hot(ids % n, n).float()], dim=-1)

    def forward(self, x: torch.Tensor) -> PixelVQOutput:
        """Training path: reconstruction, ids and the quantizer's auxiliary loss (updates the codebook
        in training mode)."""
        self.check_images(x)
        classes = self.palette_index(x) if self.config.pixels == "palette" else None
        z, colours = self._latents(x, classes)
        with torch.autocast(device_type=z.device.type, enabled=False):
            q = self.quantizer(z)
        ids = join_ids(q.ids, colours, self.config.n_colours)
        return PixelVQOutput(self._pixels(q.codes, colours), ids, q.aux_loss, classes)

    def to_pixels(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder output -> (B, 3, S, S) in [-1, 1] (palette: the most likely colour per pixel)."""
        if self.config.pixels == "rgb":
            return decoded.float()
        return self.palette[decoded.argmax(dim=1)].permute(0, 3, 1, 2)

    def palette_index(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, S, S) index of the nearest palette colour (0 = background)."""
        return nearest_palette(x, self.palette)

    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        self.check_images(x)
        z, colours = self._latents(x)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return join_ids(self.quantizer.ids(z), colours, self.config.n_colours)

    def decode_tensor(self, ids: torch.Tensor) -> torch.Tensor:
        shape_ids, colours = self.split_ids(ids)
        with torch.autocast(device_type=ids.device.type, enabled=False):
            codes = self.quantizer.codes(shape_ids)  # (B, N, D)
        return self.to_pixels(self._pixels(codes, colours))


def edge_mask(classes: torch.Tensor) -> torch.Tensor:
    """(B, S, S) colour classes -> (B, S, S) bool: pixels with another class in their 3x3 neighbourhood."""
    size = classes.shape[-1]
    padded = F.pad(classes[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]  # (B, S + 2, S + 2)
    edge = torch.zeros(classes.shape, dtype=torch.bool, device=classes.device)
    for dy, dx in itertools.product(range(3), range(3)):  # 9 shifted compares: 3x faster than two max-pools
        edge |= padded[:, dy : dy + size, dx : dx + size] != classes
    return edge


def pixel_vq_loss(
    codec: PixelVQ, x: torch.Tensor, l1_weight: float = 1.0, fg_weight: float = 1.0, edge_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction + the quantizer's aux loss.

    "rgb": MSE + ``l1_weight`` * L1 (L1 keeps flat-colour edges sharp); "palette": cross-entropy against
    each pixel's nearest palette colour. Pixels that are not background (palette colour 0) weigh
    ``fg_weight``: in ShapesWorld ~90% of pixels are background, and the shapes are what matters;
    pixels at a colour edge weigh ``edge_weight`` more on top (small shapes are almost all edge).
    """
    out = codec(x)
    target = codec.palette_index(x) if out.classes is None else out.classes  # (B, S, S)
    weight = 1.0 + (fg_weight - 1.0) * (target != 0).float() + (edge_weight - 1.0) * edge_mask(target).float()
    weight = weight / weight.mean()
    metrics: dict[str, float] = {}
    if codec.config.pixels == "rgb":
        err = out.decoded.float() - x
        mse = (err.pow(2).mean(dim=1) * weight).mean()
        l1 = (err.abs().mean(dim=1) * weight).mean()
        recon = mse + l1_weight * l1
        metrics.update(mse=mse.item(), l1=l1.item())
    else:
        recon = (F.cross_entropy(out.decoded.float(), target, reduction="none") * weight).mean()
        metrics["ce"] = recon.item()
    loss = recon + out.aux_loss
    metrics.update(loss=loss.item(), aux=float(out.aux_loss.detach()))
    return loss, metrics
