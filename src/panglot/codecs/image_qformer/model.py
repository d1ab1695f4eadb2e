"""SEED's causal Q-Former image tokenizer (Ge et al. 2023): 64 x 64 image -> 32 causal ids -> image.

encode: the frozen teacher's image tower (the CLIP-style dual encoder's ViT) gives per-patch features; a
Q-Former's 32 learned queries read them through cross-attention while attending to each other
*causally* (query i sees queries <= i only), so the ids form a left-to-right sequence an LM can predict;
each query output is quantized by a cosine-similarity codebook (``vector-quantize-pytorch``).

decode: an embedding decoder (a small bidirectional transformer over the 32 codes) reconstructs the
teacher's global image embedding; the detokenizer, a conditional diffusion model (``diffusers``
``UNet2DConditionModel`` + ``DDIMScheduler``, as SEED's unCLIP Stable Diffusion), denoises the latent grid
of a frozen pixel VQ codec conditioned on that embedding (cross-attention tokens + an embedding added to
the timestep embedding, as unCLIP); the denoised latents are snapped to the pixel codec's nearest codes
and drawn by its decoder. Decoding is deterministic: DDIM with eta = 0 from a fixed-seed start.

Training (stage 1, :func:`qformer_loss`): contrastive alignment of the last query's output (it sees every
query) with the teacher's caption embeddings, reconstruction of the teacher's image embedding from the
quantized codes, and the codebook's commitment loss. Stage 2 (:func:`detokenizer_loss`): the diffusion
loss of the detokenizer on the frozen stage-1 embeddings.

Self-contained: the teacher's image tower and the whole pixel codec are frozen submodules, saved in this
codec's ``codec.safetensors`` with their configs nested in ``codec.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import nn
from vector_quantize_pytorch import FSQ

from panglot.codecs.base import ImageCodec, register_codec
from panglot.codecs.image_vq import PixelVQ, PixelVQConfig
from panglot.codecs.image_vq.model import split_factors
from panglot.codecs.indexed_vq import cosine_ema_vq
from panglot.encoders import DualEncoder, DualEncoderConfig, ImageTower, TowerConfig, contrastive_loss
from panglot.encoders.dual import Tower
from panglot.nn import Attention, RMSNorm, RotaryEmbedding, SwiGLU, attend
from panglot.training import distributed


# --- config ---------------------------------------------------------------------------------------------
@dataclass
class QFormerConfig:
    """The causal Q-Former: ``n_queries`` learned queries, ``n_layers`` blocks of causal self-attention,
    cross-attention to the image features and a SwiGLU feed-forward."""

    n_queries: int = 32  # = tokens per image
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int = 384
    # What the queries cross-attend to: the teacher's 8 x 8 patch features (SEED: its ViT's), or those and
    # the frozen pixel codec's 8 x 8 codes (their latents, with a learned position per cell), so the ids
    # can carry the exact layout that the small teacher's features hold only loosely (docs/codecs.md).
    features: Literal["teacher", "teacher+pixel"] = "teacher"
    # A fixed prior added to the cross-attention logits (0: none, SEED's Q-Former): the 8 x 8 cells are dealt out in
    # raster order, two to each of the 32 queries, and query i's logits for its cells (in every grid it reads) get
    # +locality; the detokenizer's grid reader, the way back, gives cell c's logit for its query the same. The ids
    # stay causal and left to right, and each starts out a summary of its own stretch of the image (beyond SEED:
    # learning that routing unaided took the codes hundreds of steps; docs/codecs.md).
    locality: float = 0.0

    def __post_init__(self) -> None:
        if self.features not in ("teacher", "teacher+pixel"):
            raise ValueError(f"qformer.features must be 'teacher' or 'teacher+pixel', got {self.features!r}")
        if self.locality < 0:
            raise ValueError(f"qformer.locality must be >= 0, got {self.locality}")
        if min(self.n_queries, self.dim, self.n_layers, self.n_heads, self.ffn_dim) < 1:
            raise ValueError(f"every Q-Former size must be >= 1, got {self}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"dim {self.dim} must split into n_heads {self.n_heads} heads of even width (RoPE)"
            )


@dataclass
class DetokenizerConfig:
    """The diffusion detokenizer: a ``UNet2DConditionModel`` over the pixel codec's latent grid and a DDIM
    sampler."""

    # The latent it denoises: the pixel codec's codes (the input of its decoder) projected on the first
    # ``latent_channels`` principal components of its code table. None: every direction the codes span
    # (``pixel.code_rank``: FSQ [8, 6, 5] codes span 3, a colour-split codec's add 7 colour directions;
    # a learned codebook: its full width). Fewer than an FSQ codec's rank would merge codes: refused.
    latent_channels: int | None = None
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    norm_groups: int = 8
    attention_heads: int = 2  # per cross-attention block (diffusers calls it ``attention_head_dim``)
    # What conditions the UNet besides the reconstructed embedding (cross-attention tokens + the timestep
    # embedding, as SEED's unCLIP): nothing more ("embedding"), the 32 quantized codes as more
    # cross-attention tokens ("embedding+codes"), or a map laid out on the latent grid that a reverse
    # Q-Former (one learned query per grid cell, cross-attending to the codes) reads from the codes and
    # the UNet takes as extra input channels ("embedding+grid", as image-conditioned diffusion models
    # take their spatial condition). The map has the latent's channels: stage 1 can train it to predict
    # the clean latent (the recipe's ``loss.grid_weight``), a blurred guess the diffusion then resolves.
    condition: Literal["embedding", "embedding+codes", "embedding+grid"] = "embedding"
    cond_tokens: int = 4  # the embedding becomes this many cross-attention tokens of width cross_dim
    cross_dim: int = 64
    grid_dim: int = 128  # "embedding+grid": width of the reverse Q-Former (its map has the latent's channels)
    grid_layers: int = 2
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    inference_steps: int = 10  # DDIM steps at decode time
    seed: int = 0  # seed of the start noise: decoding is deterministic (DDIM, eta = 0)
    # Images drawn per id sequence at decode time, from the start noises seed, seed + 1, ...: each row keeps the one
    # whose ids, read back by the codec's own encoder, agree best with the ids decoded (the mean cosine of their
    # codes; the first wins ties). 1: one image (SEED's). Costs that many samplings and encodings.
    candidates: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not self.block_out_channels or any(c % self.norm_groups for c in self.block_out_channels):
            problems.append(
                f"block_out_channels {self.block_out_channels} must be non-empty multiples of norm_groups "
                f"{self.norm_groups}"
            )
        sizes = (
            1 if self.latent_channels is None else self.latent_channels,
            self.cond_tokens,
            self.cross_dim,
            self.inference_steps,
            self.layers_per_block,
            self.grid_dim,
            self.grid_layers,
            self.candidates,
        )
        if min(sizes) < 1:
            problems.append(
                "latent_channels, cond_tokens, cross_dim, inference_steps, layers_per_block, grid_dim, "
                f"grid_layers and candidates must be >= 1, got {sizes}"
            )
        if self.grid_dim % self.attention_heads:
            problems.append(f"grid_dim {self.grid_dim} must be a multiple of attention_heads {self.attention_heads}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class QFormerCodecConfig:
    image_size: int = 64
    teacher: DualEncoderConfig = field(default_factory=DualEncoderConfig)  # frozen image tower inside
    pixel: PixelVQConfig = field(default_factory=PixelVQConfig)  # frozen pixel codec (detokenizer space)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    # How each query's output becomes an id: "vq", a learned codebook (SEED's; the settings below), or "fsq",
    # finite scalar quantization (each of len(fsq_levels) projected channels rounded to its levels; nothing to
    # learn but the projections). Through the raster prior (qformer.locality) the grid path learns several times
    # faster through FSQ than through the codebook (docs/codecs.md "The quantizer").
    quantizer: Literal["vq", "fsq"] = "vq"
    codebook_size: int = 1024  # vq
    codebook_dim: int = 32  # vq: codes are looked up in this smaller space (better usage, as SEED)
    ema_decay: float = 0.95  # vq
    dead_code_threshold: float = 1.0  # vq: codes whose EMA count falls below this are re-seeded
    commitment_weight: float = 0.25  # vq
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # fsq: ids = their product (1000)
    embed_decoder: TowerConfig = field(
        default_factory=lambda: TowerConfig(dim=128, n_layers=2, n_heads=4, ffn_dim=384)
    )
    detokenizer: DetokenizerConfig = field(default_factory=DetokenizerConfig)

    def __post_init__(self) -> None:
        problems = []
        for name, size in (("teacher", self.teacher.image_size), ("pixel", self.pixel.image_size)):
            if size != self.image_size:
                problems.append(f"{name}.image_size is {size}, expected image_size {self.image_size}")
        channels, rank = self.detokenizer.latent_channels, self.pixel.code_rank
        if channels is not None and channels > self.pixel.code_dim:
            problems.append(
                f"detokenizer.latent_channels {channels} exceeds the pixel codec's code width {self.pixel.code_dim}"
            )
        if channels is not None and rank is not None and channels < rank:
            problems.append(
                f"detokenizer.latent_channels {channels} is below the {rank} directions the pixel codec's codes "
                f"span (some of its codes would become one latent); use {rank} or null"
            )
        if self.quantizer not in ("vq", "fsq"):
            problems.append(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if self.quantizer == "fsq" and (not self.fsq_levels or min(self.fsq_levels) < 2):
            problems.append(f"fsq_levels must be a non-empty list of levels >= 2, got {self.fsq_levels}")
        if self.codebook_size < 2 or self.codebook_dim < 1:
            problems.append(
                f"codebook_size must be >= 2 and codebook_dim >= 1, got {self.codebook_size}, {self.codebook_dim}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def latent_channels(self) -> int:
        """Channels of the detokenizer's latent: ``detokenizer.latent_channels``, or when that is None every
        direction of the pixel codec's codes."""
        if self.detokenizer.latent_channels is not None:
            return self.detokenizer.latent_channels
        return self.pixel.code_rank or self.pixel.code_dim


# --- the teacher's image tower --------------------------------------------------------------------------
class TeacherImageTower(ImageTower):
    """The image half of a :class:`~panglot.encoders.DualEncoder` with its projection (same parameter
    names), kept frozen inside the codec so that encoding needs no teacher directory."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, S, S) -> per-patch features (B, N, grid_dim) and the L2-normalised image
        embedding (B, embed_dim) float32."""
        grid, embedding = self.encode_images(x)
        return grid, embedding


# --- the causal Q-Former --------------------------------------------------------------------------------
class CrossAttention(nn.Module):
    """Queries (B, T, D) attend to every context vector (B, S, C); no positions, no mask."""

    def __init__(self, dim: int, context_dim: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(context_dim, dim, bias=False)
        self.wv = nn.Linear(context_dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias`` (T, S): added to every head's attention logits (a fixed prior), or None."""
        b, t, _ = x.shape
        s = context.shape[1]
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.wk(context).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, S, Dh)
        v = self.wv(context).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        out = attend(q, k, v, None if bias is None else bias.to(q.dtype))
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


def locality_bias(n_queries: int, n_cells: int, strength: float) -> torch.Tensor:
    """(n_queries, n_cells): ``strength`` where cell c (raster order) belongs to query ``c * n_queries // n_cells``,
    else 0 (``QFormerConfig.locality``)."""
    bias = torch.zeros(n_queries, n_cells)
    cells = torch.arange(n_cells)
    bias[cells * n_queries // n_cells, cells] = strength
    return bias


class QFormerBlock(nn.Module):
    """x + causal_self_attn(norm(x)), x + cross_attn(norm(x), image), x + ffn(norm(x))."""

    def __init__(self, cfg: QFormerConfig, context_dim: int, eps: float = 1e-6):
        super().__init__()
        head_dim = cfg.dim // cfg.n_heads
        self.self_norm = RMSNorm(cfg.dim, eps)
        self.self_attention = Attention(cfg.dim, cfg.n_heads, cfg.n_heads, head_dim)
        self.cross_norm = RMSNorm(cfg.dim, eps)
        self.cross_attention = CrossAttention(cfg.dim, context_dim, cfg.n_heads)
        self.ffn_norm = RMSNorm(cfg.dim, eps)
        self.feed_forward = SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(
        self,
        x: torch.Tensor,
        image: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attention(self.self_norm(x), cos, sin, mask=None)  # mask=None: causal
        x = x + self.cross_attention(self.cross_norm(x), image, bias)
        return x + self.feed_forward(self.ffn_norm(x))


class PixelFeatures(nn.Module):
    """The pixel codec's code grid in the detokenizer's latent space (B, N, C) -> context vectors (B, N, D)
    with a learned position per cell (cross-attention has no positions of its own)."""

    def __init__(self, latent_channels: int, n_cells: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(latent_channels, dim)
        self.pos = nn.Parameter(torch.randn(n_cells, dim) * 0.02)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.proj(latents) + self.pos.to(latents.dtype)


class CausalQFormer(nn.Module):
    """Learned queries (T, D) -> (B, T, D) outputs; output i depends on queries 0..i and the image only."""

    def __init__(self, cfg: QFormerConfig, image_dim: int, eps: float = 1e-6):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.n_queries, cfg.dim) * 0.02)
        self.image_norm = RMSNorm(image_dim, eps)
        self.layers = nn.ModuleList(QFormerBlock(cfg, image_dim, eps) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, eps)
        self.rope = RotaryEmbedding(cfg.dim // cfg.n_heads, cfg.n_queries)

    def forward(self, image: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """image features (B, N, C) -> query outputs (B, T, D); ``bias`` (T, N) a prior on the cross-attention."""
        b, t = image.shape[0], self.queries.shape[0]
        cos, sin = self.rope(torch.arange(t, device=image.device)[None])
        image = self.image_norm(image)
        x = self.queries[None].expand(b, -1, -1).to(image.dtype)
        for block in self.layers:
            x = block(x, image, cos, sin, bias)
        return self.norm(x)


# --- codebook and embedding decoder ---------------------------------------------------------------------
class Codebook(nn.Module):
    """The ids' quantizer, from ``vector-quantize-pytorch``: cosine-similarity VQ (k-means init, EMA updates,
    dead-code expiry), or FSQ (``QFormerCodecConfig.quantizer``)."""

    def __init__(self, cfg: QFormerCodecConfig):
        super().__init__()
        self.size = math.prod(cfg.fsq_levels) if cfg.quantizer == "fsq" else cfg.codebook_size
        if cfg.quantizer == "fsq":
            self.fsq = FSQ(levels=list(cfg.fsq_levels), dim=cfg.qformer.dim)
            return
        self.vq = cosine_ema_vq(
            cfg.qformer.dim, cfg.codebook_size, cfg.codebook_dim, cfg.ema_decay, cfg.dead_code_threshold, cfg.commitment_weight
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, T, D) float32 -> codes (B, T, D) (straight-through), ids (B, T), commitment loss.
        In training mode this initialises (k-means) and updates (EMA) the codebook."""
        if hasattr(self, "fsq"):
            codes, ids = self.fsq(z)
            return codes, ids.long(), z.new_zeros(())
        codes, ids, aux = self.vq(z)
        return codes, ids.long(), aux

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code (VQ: by cosine similarity, computed here so encoding never touches codebook state)."""
        if hasattr(self, "fsq"):
            return self.fsq(z)[1].long()
        z = F.normalize(self.vq.project_in(z), dim=-1)  # (B, T, d)
        return (z @ F.normalize(self.vq.codebook, dim=-1).t()).argmax(dim=-1)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "fsq"):
            return self.fsq.indices_to_codes(ids)
        return self.vq.get_output_from_indices(ids)  # (B, T, D)


class EmbeddingDecoder(nn.Module):
    """Quantized codes (B, T, D) -> the teacher's image embedding (B, E), L2-normalised: a bidirectional
    transformer over the codes, mean-pooled and projected (SEED's reconstruction of the generation
    embedding)."""

    def __init__(self, code_dim: int, n_codes: int, cfg: TowerConfig, embed_dim: int, eps: float = 1e-6):
        super().__init__()
        self.proj_in = nn.Linear(code_dim, cfg.dim)
        self.tower = Tower(cfg, n_codes, eps)
        self.proj_out = nn.Linear(cfg.dim, embed_dim, bias=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.tower(self.proj_in(codes))  # (B, T, D)
        return F.normalize(self.proj_out(h.mean(dim=1)).float(), dim=-1)


# --- the diffusion detokenizer --------------------------------------------------------------------------
class GridReader(nn.Module):
    """Codes (B, T, D) -> a condition map (B, C, g, g): one learned query per latent-grid cell reads the
    codes (with their positions) through cross-attention and a feed-forward, ``n_layers`` times; SEED's
    reverse direction of the Q-Former, laid out where the detokenizer draws."""

    def __init__(
        self,
        code_dim: int,
        n_codes: int,
        grid: int,
        channels: int,
        cfg: DetokenizerConfig,
        eps: float = 1e-6,
        locality: float = 0.0,
    ):
        super().__init__()
        dim, self.grid = cfg.grid_dim, grid
        # cell c's logit for the code of the query its cells belong to (QFormerConfig.locality); not a weight
        bias = locality_bias(n_codes, grid * grid, locality).t() if locality > 0 else None
        self.register_buffer("bias", bias, persistent=False)
        self.queries = nn.Parameter(torch.randn(grid * grid, dim) * 0.02)
        self.code_pos = nn.Parameter(torch.randn(n_codes, code_dim) * 0.02)  # which query a code came from
        self.code_norm = RMSNorm(code_dim, eps)
        self.cross_norms = nn.ModuleList(RMSNorm(dim, eps) for _ in range(cfg.grid_layers))
        self.cross = nn.ModuleList(
            CrossAttention(dim, code_dim, cfg.attention_heads) for _ in range(cfg.grid_layers)
        )
        self.ffn_norms = nn.ModuleList(RMSNorm(dim, eps) for _ in range(cfg.grid_layers))
        self.ffns = nn.ModuleList(SwiGLU(dim, 3 * dim) for _ in range(cfg.grid_layers))
        self.norm = RMSNorm(dim, eps)
        self.out = nn.Linear(dim, channels)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        b = codes.shape[0]
        codes = self.code_norm(codes + self.code_pos.to(codes.dtype))
        x = self.queries[None].expand(b, -1, -1).to(codes.dtype)
        for cross_norm, cross, ffn_norm, ffn in zip(self.cross_norms, self.cross, self.ffn_norms, self.ffns):
            x = x + cross(cross_norm(x), codes, self.bias)
            x = x + ffn(ffn_norm(x))
        out = self.out(self.norm(x))  # (B, g * g, C)
        return out.transpose(1, 2).reshape(b, -1, self.grid, self.grid)


class Condition(NamedTuple):
    """What one detokenizer call is conditioned on, computed once per sampling run."""

    context: torch.Tensor  # (B, K, cross_dim) cross-attention tokens
    embedding: torch.Tensor  # (B, E) the embedding, scaled to unit variance (the UNet's class embedding)
    grid: torch.Tensor | None  # (B, C, g, g) the spatial map ("embedding+grid"), else None


class Detokenizer(nn.Module):
    """Conditional DDIM denoiser of a (B, C, g, g) latent grid, conditioned on an image embedding (B, E)
    (and, with ``condition: embedding+codes``, on the quantized codes (B, T, D))."""

    def __init__(
        self,
        cfg: DetokenizerConfig,
        latent_channels: int,
        grid: int,
        embed_dim: int,
        code_dim: int,
        n_codes: int = 32,
        locality: float = 0.0,
    ):
        super().__init__()
        self.config = cfg
        n = len(cfg.block_out_channels)
        self.cond = nn.Linear(embed_dim, cfg.cond_tokens * cfg.cross_dim)
        self.code_proj = nn.Linear(code_dim, cfg.cross_dim) if cfg.condition == "embedding+codes" else None
        with_grid = cfg.condition == "embedding+grid"
        self.grid_reader = (
            GridReader(code_dim, n_codes, grid, latent_channels, cfg, locality=locality) if with_grid else None
        )
        self.unet = UNet2DConditionModel(
            sample_size=grid,
            in_channels=latent_channels * (2 if with_grid else 1),
            out_channels=latent_channels,
            down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (n - 1),
            up_block_types=("UpBlock2D",) * (n - 1) + ("CrossAttnUpBlock2D",),
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_groups,
            cross_attention_dim=cfg.cross_dim,
            attention_head_dim=cfg.attention_heads,  # diffusers' legacy name for the number of heads
            class_embed_type="projection",  # unCLIP: the image embedding joins the timestep embedding
            projection_class_embeddings_input_dim=embed_dim,
        )

    def scheduler(self) -> DDIMScheduler:
        """A fresh scheduler (it holds the timesteps of one sampling run, so each call gets its own)."""
        cfg = self.config
        return DDIMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=False,
            set_alpha_to_one=True,
            timestep_spacing="trailing",  # few steps: start at the last training timestep (pure noise)
        )

    def context(self, embedding: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The cross-attention tokens (B, K, cross_dim)."""
        tokens = self.cond(embedding).view(embedding.shape[0], self.config.cond_tokens, self.config.cross_dim)
        if self.code_proj is None:
            return tokens
        return torch.cat([tokens, self.code_proj(codes)], dim=1)

    def condition(self, embedding: torch.Tensor, codes: torch.Tensor) -> Condition:
        """The reconstructed embedding (B, E) and the codes (B, T, D) -> the UNet's condition."""
        # A unit-norm embedding has entries ~ 1 / sqrt(E); scaled to unit variance it weighs as much as the
        # timestep embedding does from the first step.
        embedding = embedding * embedding.shape[-1] ** 0.5
        grid = None if self.grid_reader is None else self.grid_reader(codes)
        return Condition(self.context(embedding, codes), embedding, grid)

    def denoise(self, latents: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Noisy latents (B, C, g, g) and timesteps (B,) -> the model output (B, C, g, g)."""
        x = latents if cond.grid is None else torch.cat([latents, cond.grid.to(latents.dtype)], dim=1)
        return self.unet(x, t, encoder_hidden_states=cond.context, class_labels=cond.embedding).sample

    def forward(
        self, latents: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """Noisy latents (B, C, g, g), timesteps (B,), embedding (B, E), codes (B, T, D) -> the model
        output (B, C, g, g)."""
        return self.denoise(latents, t, self.condition(embedding, codes))

    def loss(self, latents: torch.Tensor, embedding: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The denoising loss on clean latents (B, C, g, g) at uniformly drawn timesteps."""
        sched = self.scheduler()
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = sched.add_noise(latents, noise, t)
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, t)
        else:
            target = latents
        return F.mse_loss(self(noisy, t, embedding, codes).float(), target.float())

    @torch.no_grad()
    def sample(
        self, embedding: torch.Tensor, codes: torch.Tensor, shape: tuple[int, int, int], seed: int | None = None
    ) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from fixed-seed noise (``seed``, default the config's); every row starts
        from the same noise, so a row's result does not depend on the rest of the batch. Returns (B, *shape)."""
        sched = self.scheduler()
        sched.set_timesteps(self.config.inference_steps, device=embedding.device)
        generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        x = torch.randn(shape, generator=generator).to(embedding.device).expand(embedding.shape[0], *shape)
        cond = self.condition(embedding, codes)
        for t in sched.timesteps:
            out = self.denoise(x, t.expand(x.shape[0]), cond).float()
            x = sched.step(out, t, x, eta=0.0).prev_sample
        return x


# --- the codec ------------------------------------------------------------------------------------------
class FrozenFeatures(NamedTuple):
    """What the codec's frozen parts make of a batch of images, all a training step needs of them (so that a
    recipe can compute them once for a fixed pool of images and reuse them, ``recipes/train_qformer_codec.py``)."""

    grid: torch.Tensor  # (B, N, C) the teacher's per-patch features
    target: torch.Tensor  # (B, E) the teacher's image embedding, L2-normalised
    pixel_ids: torch.Tensor | None  # (B, g * g) the pixel codec's ids (``features: teacher+pixel`` or a grid loss)

    def index(self, rows: torch.Tensor) -> FrozenFeatures:
        return FrozenFeatures(*(None if t is None else t[rows] for t in self))

    def to(self, device: torch.device | str) -> FrozenFeatures:
        return FrozenFeatures(*(None if t is None else t.to(device) for t in self))


class QFormerOutput(NamedTuple):
    ids: torch.Tensor  # (B, T)
    query_embedding: torch.Tensor  # (B, E) last query's output, projected, L2-normalised (contrastive)
    embedding: torch.Tensor  # (B, E) embedding reconstructed from the quantized codes, L2-normalised
    target_embedding: torch.Tensor  # (B, E) the teacher's image embedding
    aux_loss: torch.Tensor  # scalar commitment loss
    codes: torch.Tensor  # (B, T, D) the quantized codes (straight-through)


@register_codec
class QFormerCodec(ImageCodec):
    """64 x 64 image <-> 32 causal ids (SEED); decoding draws through the diffusion detokenizer."""

    kind = "image_qformer"
    config_cls = QFormerCodecConfig

    def __init__(self, config: QFormerCodecConfig):
        super().__init__(config)
        teacher = config.teacher
        self.teacher = TeacherImageTower(teacher)
        self.qformer = CausalQFormer(config.qformer, teacher.image.dim, teacher.norm_eps)
        self.query_proj = nn.Linear(config.qformer.dim, teacher.embed_dim, bias=False)
        self.codebook = Codebook(config)
        self.embed_decoder = EmbeddingDecoder(
            config.qformer.dim,
            config.qformer.n_queries,
            config.embed_decoder,
            teacher.embed_dim,
            teacher.norm_eps,
        )
        self.pixel = PixelVQ(config.pixel)
        self.latent_grid = self.pixel.grid
        self.pixel_features = (
            PixelFeatures(config.latent_channels, self.latent_grid**2, teacher.image.dim)
            if config.qformer.features == "teacher+pixel"
            else None
        )
        self.detokenizer = Detokenizer(
            config.detokenizer,
            config.latent_channels,
            self.latent_grid,
            teacher.embed_dim,
            config.qformer.dim,
            config.qformer.n_queries,
            locality=config.qformer.locality,
        )
        # The Q-Former's prior over its context (the teacher's patches, then the pixel cells), not a weight.
        n_queries, locality = config.qformer.n_queries, config.qformer.locality
        grids = [teacher.grid_size**2] + ([self.latent_grid**2] if self.pixel_features is not None else [])
        bias = torch.cat([locality_bias(n_queries, n, locality) for n in grids], dim=1) if locality > 0 else None
        self.register_buffer("cross_bias", bias, persistent=False)
        # The detokenizer's latent space, fitted to the pixel codec's code table (saved with the weights).
        self.register_buffer("latent_mean", torch.zeros(config.pixel.code_dim))
        self.register_buffer("latent_basis", torch.zeros(config.pixel.code_dim, config.latent_channels))
        self.fit_latent_space()
        self.freeze_frozen_parts()

    @classmethod
    def debug_config(cls) -> QFormerCodecConfig:
        return QFormerCodecConfig(
            teacher=DualEncoderConfig.debug(),
            pixel=PixelVQ.debug_config(),
            qformer=QFormerConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=64),
            codebook_size=64,
            codebook_dim=8,
            embed_decoder=TowerConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=64),
            detokenizer=DetokenizerConfig(
                block_out_channels=[16, 32], norm_groups=8, attention_heads=2, cond_tokens=2, cross_dim=16,
                inference_steps=2,
            ),
        )  # fmt: skip

    def freeze_frozen_parts(self) -> None:
        """The teacher's tower and the pixel codec never train here."""
        self.teacher.requires_grad_(False)
        self.pixel.requires_grad_(False)

    def load_frozen_parts(self, teacher: DualEncoder, pixel: PixelVQ) -> None:
        """Copy a trained teacher's image tower and a trained pixel codec into this codec."""
        self.teacher.load_from(teacher)
        if pixel.config != self.config.pixel:
            raise ValueError("the pixel codec's config differs from this codec's pixel config")
        self.pixel.load_state_dict(pixel.state_dict(), strict=True)
        self.fit_latent_space()
        self.freeze_frozen_parts()

    def train(self, mode: bool = True) -> QFormerCodec:
        super().train(mode)
        self.teacher.eval()  # frozen parts stay in eval mode (no codebook updates in the pixel codec)
        self.pixel.eval()
        return self

    @property
    def vocab_size(self) -> int:
        return self.codebook.size

    @property
    def tokens_per_item(self) -> int:
        return self.config.qformer.n_queries

    def id_factors(self) -> list[tuple[torch.Tensor, int]]:
        """With FSQ ids, each digit (ids that share a digit share its embedding row in a model that reads them);
        a VQ's ids are unrelated."""
        return split_factors(self.vocab_size, 1, self.config.fsq_levels) if self.config.quantizer == "fsq" else []

    # --- encoding -----------------------------------------------------------------------------------
    @torch.no_grad()
    def frozen_features(
        self, x: torch.Tensor, pixel_ids: torch.Tensor | None = None, with_pixel_ids: bool = False
    ) -> FrozenFeatures:
        """Images -> what the frozen teacher (and pixel codec, with ``features: teacher+pixel`` or
        ``with_pixel_ids``) make of them; ``pixel_ids`` (B, g * g) when the caller has them."""
        self.check_images(x)
        grid, target = self.teacher(x)
        if (self.pixel_features is not None or with_pixel_ids) and pixel_ids is None:
            pixel_ids = self.pixel.encode_tensor(x)
        return FrozenFeatures(grid, target.float(), pixel_ids)

    def _query_outputs(self, features: FrozenFeatures) -> torch.Tensor:
        """Frozen features -> Q-Former outputs (B, T, D) float32."""
        grid = features.grid
        if self.pixel_features is not None:  # (B, g * g, C): the pixel codes join the teacher's patches as context
            latents = self.code_table()[features.pixel_ids]
            grid = torch.cat([grid, self.pixel_features(latents.to(grid.dtype))], dim=1)
        return self.qformer(grid, self.cross_bias).float()

    def forward(
        self, x: torch.Tensor | None, pixel_ids: torch.Tensor | None = None, features: FrozenFeatures | None = None
    ) -> QFormerOutput:
        """Stage-1 training path (updates the codebook in training mode) from images ``x`` (``pixel_ids`` as
        `frozen_features`) or from their ``features`` computed earlier."""
        features = self.frozen_features(x, pixel_ids) if features is None else features
        z = self._query_outputs(features)
        query_embedding = F.normalize(self.query_proj(z[:, -1]).float(), dim=-1)  # the last query sees all
        with torch.autocast(device_type=z.device.type, enabled=False):
            codes, ids, aux = self.codebook(z)
        return QFormerOutput(ids, query_embedding, self.embed_decoder(codes), features.target, aux, codes)

    def encode_tensor(
        self, x: torch.Tensor | None, pixel_ids: torch.Tensor | None = None, features: FrozenFeatures | None = None
    ) -> torch.Tensor:
        """Images (or their ``features``) -> ids (B, T)."""
        z = self._query_outputs(self.frozen_features(x, pixel_ids) if features is None else features)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.codebook.ids(z)

    # --- decoding -----------------------------------------------------------------------------------
    def condition(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) -> the reconstructed image embedding (B, E), L2-normalised, and the codes (B, T, D)."""
        with torch.autocast(device_type=ids.device.type, enabled=False):
            codes = self.codebook.codes(ids.long())
        return self.embed_decoder(codes), codes

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> the reconstructed image embedding (B, E), L2-normalised."""
        return self.condition(ids)[0]

    def pixel_code_table(self) -> torch.Tensor:
        """Every pixel-codec code (V, C) in its decoder's input space, float32."""
        ids = torch.arange(self.pixel.vocab_size, device=self.device)[None]
        return self.pixel.code_vectors(ids)[0]

    @torch.no_grad()
    def fit_latent_space(self) -> None:
        """Principal components of the pixel code table, whitened, each signed so its largest entry is
        positive (deterministic): ``latent_mean`` (C,) and ``latent_basis`` (C, K)."""
        table = self.pixel_code_table()
        k = self.config.latent_channels
        mean = table.mean(dim=0)
        _, sv, vh = torch.linalg.svd(table - mean, full_matrices=False)
        basis = vh[:k].t()  # (C, K)
        basis = basis * basis.gather(0, basis.abs().argmax(dim=0, keepdim=True)).sign()
        std = (sv[:k] / max(table.shape[0] - 1, 1) ** 0.5).clamp_min(1e-6)
        self.latent_mean.copy_(mean)
        self.latent_basis.copy_(basis / std)

    def code_table(self) -> torch.Tensor:
        """Every pixel-codec code in the detokenizer's latent space (V, K), unit variance per channel."""
        return (self.pixel_code_table() - self.latent_mean) @ self.latent_basis

    def pixel_latents(self, x: torch.Tensor | None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Images -> the pixel codec's quantized latents in the detokenizer's space (B, C, g, g); ``ids``: their
        pixel-codec ids (B, g * g) when the caller has them (then ``x`` may be None)."""
        ids = self.pixel.encode_tensor(x) if ids is None else ids
        return self.table_to_grid(self.code_table()[ids])

    def table_to_grid(self, codes: torch.Tensor) -> torch.Tensor:
        b, _, c = codes.shape  # (B, g * g, C)
        return codes.transpose(1, 2).reshape(b, c, self.latent_grid, self.latent_grid)

    def snap(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, g, g) -> pixel-codec ids (B, g * g) of the nearest codes."""
        flat = latents.float().flatten(2).transpose(1, 2)  # (B, N, C)
        return torch.cdist(flat, self.code_table()[None].expand(flat.shape[0], -1, -1)).argmin(dim=-1)

    @torch.no_grad()
    def decode_tensor(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> images; with ``detokenizer.candidates`` > 1, each row's best of that many (``agreement``)."""
        embedding, codes = self.condition(ids)
        shape = (self.config.latent_channels, self.latent_grid, self.latent_grid)
        cfg = self.config.detokenizer
        draw = lambda seed: self.pixel.decode_tensor(self.snap(self.detokenizer.sample(embedding, codes, shape, seed)))  # noqa: E731
        best = draw(cfg.seed)
        if cfg.candidates == 1:
            return best
        best_score = self.agreement(best, codes)
        for candidate in range(1, cfg.candidates):
            images = draw(cfg.seed + candidate)
            score = self.agreement(images, codes)
            better = score > best_score  # the earlier draw keeps a tie
            best[better], best_score = images[better], torch.where(better, score, best_score)
        return best

    @torch.no_grad()
    def agreement(self, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """How well ``images`` (B, 3, H, W), read back by this codec, agree with ``codes`` (B, T, D): the mean cosine
        between their codes and ``codes``, position by position (B,)."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            again = self.codebook.codes(self.encode_tensor(images).long())
        return F.cosine_similarity(again.float(), codes.float(), dim=-1).mean(dim=-1)


# --- training losses ------------------------------------------------------------------------------------
def grid_error(
    cells: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, kind: Literal["mse", "ce"] = "mse"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid map's cells (B, N, C) against the images' pixel-codec ids (B, N), with the codes' latents (V, C):
    the squared error to the target code (``"mse"``) or the cross-entropy of naming it by the negative squared
    distance to every code (``"ce"``), and the share of cells whose nearest code is the target."""
    distance = cells.pow(2).sum(-1, keepdim=True) - 2 * cells @ table.t() + table.pow(2).sum(-1)  # (B, N, V)
    if kind == "ce":
        loss = F.cross_entropy(-distance.flatten(0, 1), targets.flatten())
    elif kind == "mse":
        loss = F.mse_loss(cells, table[targets])
    else:
        raise ValueError(f"grid_loss must be 'mse' or 'ce', got {kind!r}")
    return loss, (distance.argmin(dim=-1) == targets).float().mean()


def qformer_loss(
    codec: QFormerCodec,
    images: torch.Tensor | FrozenFeatures,
    text_embedding: torch.Tensor,
    keys: list[str],
    temperature: float = 0.07,
    contrastive_weight: float = 1.0,
    embed_weight: float = 1.0,
    grid_weight: float = 0.0,
    grid_loss: Literal["mse", "ce"] = "mse",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1: contrastive alignment of the last query with the captions' embeddings (B, E) (pairs with
    equal ``keys`` are positives), cosine reconstruction of the teacher's image embedding from the
    quantized codes, and the commitment loss; with ``grid_weight`` > 0 (``condition: embedding+grid``),
    also the grid map's error against the image's clean latent, so that the codes carry the layout and the
    map starts as a guess of the latent: its mean squared error (``grid_loss="mse"``), or the cross-entropy
    of naming each cell's pixel code by the map's negative squared distance to every code (``"ce"``: a
    confident map near one code costs nothing, where the squared error pulls it to the mean of the likely
    codes). ``grid_acc`` is the share of cells whose nearest code is right. ``images``: a batch of images, or
    their frozen features computed earlier (`QFormerCodec.frozen_features` with ``with_pixel_ids`` for a grid loss)."""
    reader = codec.detokenizer.grid_reader
    if grid_weight > 0 and reader is None:
        raise ValueError("grid_weight > 0 needs the detokenizer's condition embedding+grid")
    if isinstance(images, FrozenFeatures):
        features = images.to(codec.device)
    else:  # the pixel-codec ids are encoded once, for the Q-Former's context and the grid's targets
        features = codec.frozen_features(images.to(codec.device), with_pixel_ids=grid_weight > 0)
    if grid_weight > 0 and features.pixel_ids is None:
        raise ValueError("grid_weight > 0 needs the images' pixel ids in their frozen features")
    targets = features.pixel_ids
    out = codec(None, features=features)
    scale = torch.tensor(1.0 / temperature, device=codec.device)
    # In a data-parallel group (`panglot.training.distributed`) the contrastive term is over the group's whole
    # batch, as in one process: every process computes it on everyone's rows, its own carrying their graph. The
    # trainer averages the processes' gradients, so each one's share is scaled up by the group's size: the
    # averaged gradient is then the whole batch's (the term's value is unchanged).
    world = distributed.world_size()
    queries = distributed.gather_rows(out.query_embedding)
    texts = distributed.gather_rows(text_embedding.to(codec.device))
    keys = [key for part in distributed.gather(list(keys)) for key in part]
    contrastive, cm = contrastive_loss(queries, texts, scale, keys)
    if world > 1:
        contrastive = contrastive + (world - 1) * (contrastive - contrastive.detach())
    cosine = (out.embedding * out.target_embedding).sum(dim=-1).mean()
    loss = contrastive_weight * contrastive + embed_weight * (1.0 - cosine) + out.aux_loss
    metrics = {
        "contrastive": contrastive.item(),
        "i2t_acc": cm["i2t_acc"],
        "embed_cos": cosine.item(),
        "commit": float(out.aux_loss.detach()),
    }
    if grid_weight > 0:
        with torch.no_grad():
            table = codec.code_table()  # (V, C)
        cells = reader(out.codes).float().flatten(2).transpose(1, 2)  # (B, g * g, C)
        grid, accuracy = grid_error(cells, targets, table, grid_loss)
        loss = loss + grid_weight * grid
        metrics[f"grid_{grid_loss}"] = grid.item()
        metrics["grid_acc"] = accuracy.item()
    return loss, {"loss": loss.item(), **metrics}


def detokenizer_loss(
    codec: QFormerCodec, images: torch.Tensor | None, ids: torch.Tensor | None = None, pixel_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 2: the diffusion loss on the pixel codec's latents, conditioned on the embedding the frozen
    stage-1 codec reconstructs from the image's ids (and those ids' codes). Either ``images``, or their stage-1
    ``ids`` (B, T) and ``pixel_ids`` (B, g * g) encoded earlier (the frozen codec gives the same ones)."""
    with torch.no_grad():
        if images is not None:
            images = images.to(codec.device)
            pixel_ids = codec.pixel.encode_tensor(images)  # once, for the Q-Former's context and the target
            ids = codec.encode_tensor(images, pixel_ids)
        elif ids is None or pixel_ids is None:
            raise ValueError("detokenizer_loss needs images, or both their ids and their pixel ids")
        embedding, codes = codec.condition(ids.to(codec.device))
        latents = codec.pixel_latents(images, pixel_ids.to(codec.device))
    loss = codec.detokenizer.loss(latents, embedding, codes)
    return loss, {"loss": loss.item()}
