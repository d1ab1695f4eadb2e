"""A CLIP-style dual encoder for ShapesWorld: a small ViT image tower and a small text transformer trained
contrastively on image/caption pairs (Radford et al. 2021).

It is the semantic teacher of the semantic tokenizers (ILLUME's semantic VQ, SEED's causal Q-Former), the
retriever's embedder and an image-text agreement score. Both towers are pre-norm bidirectional
transformers built from :mod:`panglot.nn` (RMSNorm, attention with RoPE, SwiGLU):

- image tower: 8 x 8-pixel patches -> linear patch embedding + learned position embedding -> blocks ->
  per-patch features (:meth:`DualEncoder.image_grid`, ``(B, 64, grid_dim)`` for 64 x 64 images, row-major);
  their mean -> linear projection -> L2-normalised image embedding;
- text tower: the world BPE tokenizer's ids -> embedding -> blocks -> mean over real tokens -> projection
  -> L2-normalised text embedding.

Training (:func:`contrastive_loss`): symmetric InfoNCE with a learnable temperature, where every pair whose
*key* (the canonical caption) is equal counts as a positive, since ShapesWorld batches hold duplicate scenes.

On disk: ``encoder.safetensors`` (weights), ``encoder.json`` (kind, format version, config, metrics) and
``tokenizer/`` (the text tokenizer), written atomically; :func:`load_dual_encoder` reads them back.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import panglot
from panglot.codecs.text import TextTokenizer
from panglot.config import ConfigError, from_dict, to_dict
from panglot.files import atomic_write, atomic_write_json
from panglot.nn import Attention, RMSNorm, RotaryEmbedding, SwiGLU

KIND = "dual_encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
META_FILE = "encoder.json"
TOKENIZER_DIR = "tokenizer"


class EncoderLoadError(ValueError):
    """An encoder directory that cannot be loaded: names the file, what was expected and what was found."""


# --- config ---------------------------------------------------------------------------------------------
@dataclass
class TowerConfig:
    """One tower's transformer: width, depth, heads and feed-forward width."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 384

    def __post_init__(self) -> None:
        problems = []
        if min(self.dim, self.n_layers, self.n_heads, self.ffn_dim) < 1:
            problems.append(f"dim, n_layers, n_heads and ffn_dim must be >= 1, got {self}")
        elif self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            problems.append(
                f"dim {self.dim} must split into n_heads {self.n_heads} heads of even width (RoPE)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass
class DualEncoderConfig:
    image_size: int = 64
    patch: int = 8  # pixels per patch side: 64 / 8 = an 8 x 8 grid of patch features
    image: TowerConfig = field(
        default_factory=lambda: TowerConfig(dim=128, n_layers=4, n_heads=4, ffn_dim=384)
    )
    text: TowerConfig = field(
        default_factory=lambda: TowerConfig(dim=128, n_layers=3, n_heads=4, ffn_dim=384)
    )
    embed_dim: int = 128  # shared image/text embedding width
    max_text_len: int = 96  # tokens; a longer text is an error, never silently cut
    init_temperature: float = 0.07  # logit scale starts at 1 / this (CLIP)
    max_logit_scale: float = 100.0  # the learned scale is clamped to this (CLIP)
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        problems = []
        if self.patch < 1 or self.image_size % self.patch:
            problems.append(f"image_size {self.image_size} must be a multiple of patch {self.patch}")
        if self.embed_dim < 1 or self.max_text_len < 1:
            problems.append(
                f"embed_dim and max_text_len must be >= 1, got {self.embed_dim}, {self.max_text_len}"
            )
        if not (self.init_temperature > 0 and 1 / self.init_temperature <= self.max_logit_scale):
            problems.append(
                f"init_temperature must be > 0 with 1 / init_temperature <= max_logit_scale "
                f"{self.max_logit_scale}, got {self.init_temperature}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch

    @classmethod
    def debug(cls) -> DualEncoderConfig:
        """A tiny config for tests."""
        return cls(
            image=TowerConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=64),
            text=TowerConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=64),
            embed_dim=32,
            max_text_len=64,
        )


# --- towers ---------------------------------------------------------------------------------------------
class EncoderBlock(nn.Module):
    """Pre-norm bidirectional block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TowerConfig, eps: float) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, eps)
        self.attention = Attention(cfg.dim, cfg.n_heads, cfg.n_heads, cfg.head_dim)
        self.ffn_norm = RMSNorm(cfg.dim, eps)
        self.feed_forward = SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


def attention_backends(device: torch.device) -> list[SDPBackend]:
    """SDPA kernels the towers may use: on CPU only the math kernel, since on these short sequences (64
    patches, ~30 tokens) the CPU flash kernel's backward took ~150 ms a layer at batch 128 and made a
    training step 1.7x slower; elsewhere every kernel, fastest first."""
    if device.type == "cpu":
        return [SDPBackend.MATH]
    return [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.MATH,
    ]


class Tower(nn.Module):
    """Blocks over a sequence (RoPE positions 0..T-1, every token sees every real token) + final norm."""

    def __init__(self, cfg: TowerConfig, max_len: int, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderBlock(cfg, eps) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, eps)
        self.rope = RotaryEmbedding(cfg.head_dim, max_len)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), valid (B, T) bool (False = padding) -> normed hidden states (B, T, D)."""
        t = x.shape[1]
        cos, sin = self.rope(torch.arange(t, device=x.device)[None])  # (1, 1, T, Dh/2)
        if valid is None:
            mask = torch.ones(1, 1, 1, t, dtype=torch.bool, device=x.device)
        else:
            mask = valid[:, None, None, :]  # (B, 1, 1, T): keys a query may see
        with sdpa_kernel(attention_backends(x.device)):
            for block in self.layers:
                x = block(x, cos, sin, mask)
        return self.norm(x)


class ImageFeatures(NamedTuple):
    grid: torch.Tensor  # (B, N, grid_dim) per-patch features, row-major
    embedding: torch.Tensor  # (B, embed_dim) L2-normalised, float32


# --- the encoder ----------------------------------------------------------------------------------------
class DualEncoder(nn.Module):
    """Image tower + text tower into one embedding space. ``tokenizer`` is the text tokenizer the text
    tower reads (its vocabulary size sizes the token embedding); it is saved with the weights.

    Every method is free of side effects and works under ``torch.no_grad`` and on a frozen
    (``requires_grad_(False)``) encoder; gradients flow when they are enabled (training)."""

    kind: ClassVar[str] = KIND
    format_version: ClassVar[int] = FORMAT_VERSION

    def __init__(self, config: DualEncoderConfig, tokenizer: TextTokenizer) -> None:
        super().__init__()
        if not isinstance(config, DualEncoderConfig):
            raise TypeError(f"DualEncoder expects a DualEncoderConfig, got {type(config).__name__}")
        if not isinstance(tokenizer, TextTokenizer):
            raise TypeError(f"DualEncoder expects a panglot TextTokenizer, got {type(tokenizer).__name__}")
        self.config, self.tokenizer = config, tokenizer
        self.pad_id = tokenizer.token_to_id("<pad>")
        self.metrics: dict[str, Any] = {}  # training metrics, saved in and loaded from encoder.json
        c = config
        n_patches = c.grid_size**2
        self.patch_embed = nn.Linear(3 * c.patch**2, c.image.dim)
        self.image_pos = nn.Parameter(torch.zeros(n_patches, c.image.dim))
        self.image_tower = Tower(c.image, n_patches, c.norm_eps)
        self.image_proj = nn.Linear(c.image.dim, c.embed_dim, bias=False)
        self.tok_embeddings = nn.Embedding(tokenizer.vocab_size, c.text.dim)
        self.text_tower = Tower(c.text, c.max_text_len, c.norm_eps)
        self.text_proj = nn.Linear(c.text.dim, c.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.image_pos, mean=0.0, std=std)

    # --- what it is ---------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Patch features per image side (8 for 64 x 64 images)."""
        return self.config.grid_size

    @property
    def grid_dim(self) -> int:
        """Width of one patch feature of :meth:`image_grid`."""
        return self.config.image.dim

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # --- images -------------------------------------------------------------------------------------
    def check_images(self, x: torch.Tensor) -> None:
        s = self.config.image_size
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected images as a float tensor (B, 3, {s}, {s}) in [-1, 1], got {got}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"expected images as a float tensor in [-1, 1], got dtype {x.dtype}")

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, N, 3 * p * p) patches in row-major order, as offsets from white.

        The white background becomes 0, so a background patch embeds to the bias alone. (An offset in
        front of a linear layer with a bias changes only where training starts, not what can be learned;
        starting from raw pixels, 56 white patches of 64 made every image embed alike (cosine 0.995) and
        small runs collapsed to one embedding.)"""
        p, g = self.config.patch, self.config.grid_size
        x = (x - 1).reshape(x.shape[0], 3, g, p, g, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], g * g, 3 * p * p)

    def image_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 64, 64) in [-1, 1] -> per-patch features (B, 64, grid_dim), row-major 8 x 8."""
        self.check_images(x)
        h = self.patch_embed(self.patches(x.to(self.device))) + self.image_pos  # (B, N, D)
        return self.image_tower(h)

    def encode_images(self, x: torch.Tensor) -> ImageFeatures:
        """Both the patch grid and the embedding, from one pass of the image tower."""
        grid = self.image_grid(x)
        return ImageFeatures(grid, normalize(self.image_proj(grid.mean(dim=1))))

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 64, 64) in [-1, 1] -> L2-normalised embeddings (B, embed_dim) float32."""
        return self.encode_images(x).embedding

    # --- texts --------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> right-padded ids (B, T) long and valid (B, T) bool, on the encoder's device."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise ValueError(f"expected a non-empty list of texts, got {texts!r}")
        ids = self.tokenizer.encode_batch(texts)  # ValueError naming the index of an empty text
        too_long = [(i, len(row)) for i, row in enumerate(ids) if len(row) > self.config.max_text_len]
        if too_long:
            i, n = too_long[0]
            raise ValueError(
                f"text at index {i} is {n} tokens, more than max_text_len {self.config.max_text_len}: {texts[i]!r}"
            )
        t = max(len(row) for row in ids)
        padded = torch.full((len(ids), t), self.pad_id, dtype=torch.long)
        for i, row in enumerate(ids):
            padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        valid = torch.arange(t)[None] < torch.tensor([len(row) for row in ids])[:, None]
        return padded.to(self.device), valid.to(self.device)

    def embed_token_ids(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids (B, T) long, valid (B, T) bool -> L2-normalised embeddings (B, embed_dim) float32."""
        h = self.text_tower(self.tok_embeddings(ids), valid)  # (B, T, D)
        w = valid.unsqueeze(-1).to(h.dtype)
        pooled = (h * w).sum(dim=1) / w.sum(dim=1)
        return normalize(self.text_proj(pooled))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> L2-normalised embeddings (B, embed_dim) float32 (tokenized with the encoder's tokenizer)."""
        return self.embed_token_ids(*self.tokenize(texts))

    # --- scoring ------------------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """The learned logit scale (1 / temperature), clamped to ``max_logit_scale``."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    # --- files --------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, metrics: dict[str, Any] | None = None) -> Path:
        """Write ``tokenizer/``, ``encoder.safetensors`` and then ``encoder.json`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_tokenizer(self.tokenizer, out / TOKENIZER_DIR)
        weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in self.state_dict().items()}
        atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(weights, str(tmp), metadata={"kind": KIND}))
        meta = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "panglot_version": panglot.__version__,
            "config": to_dict(self.config),
            "metrics": metrics if metrics is not None else self.metrics,
        }
        atomic_write_json(out / META_FILE, meta, indent=2, sort_keys=True)  # last: marks a complete directory
        return out


class ImageTower(nn.Module):
    """The image side of a :class:`DualEncoder` on its own (same parameter names): patch embedding,
    position embedding, image tower and, with ``projection``, the embedding projection. Codecs that read
    a dual encoder's image features (the semantic VQ's teacher, the Q-Former's) keep one inside, so a
    codec directory needs no encoder directory; :meth:`load_from` copies the weights from an encoder."""

    def __init__(self, config: DualEncoderConfig, projection: bool = True) -> None:
        super().__init__()
        self.config = config
        n_patches = config.grid_size**2
        self.patch_embed = nn.Linear(3 * config.patch**2, config.image.dim)
        self.image_pos = nn.Parameter(torch.zeros(n_patches, config.image.dim))
        self.image_tower = Tower(config.image, n_patches, config.norm_eps)
        self.image_proj = nn.Linear(config.image.dim, config.embed_dim, bias=False) if projection else None

    @property
    def grid_dim(self) -> int:
        return self.config.image.dim

    @property
    def device(self) -> torch.device:
        return self.image_pos.device

    def load_from(self, encoder: DualEncoder) -> None:
        """Copy the image-side weights of ``encoder``, whose config must equal this tower's."""
        if encoder.config != self.config:
            raise ValueError(f"the dual encoder's config differs from this image tower's: expected {self.config}, got {encoder.config}")
        own = self.state_dict().keys()
        self.load_state_dict({k: v for k, v in encoder.state_dict().items() if k in own}, strict=True)

    # The encoder's own image path, run on the weights held here (same names, same config), so the features
    # are exactly the encoder's whatever its preprocessing.
    check_images = DualEncoder.check_images
    patches = DualEncoder.patches
    image_grid = DualEncoder.image_grid

    def encode_images(self, x: torch.Tensor) -> ImageFeatures:
        if self.image_proj is None:
            raise ValueError("this image tower was built without the projection (projection=False): no embedding")
        return DualEncoder.encode_images(self, x)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension in float32 (norms stay fp32 under autocast)."""
    return F.normalize(x.float(), dim=-1)


def save_tokenizer(tokenizer: TextTokenizer, directory: Path) -> None:
    """Save ``tokenizer`` into ``directory`` file by file through a temporary sibling (each file replaced
    atomically)."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    try:
        tokenizer.save(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        for path in tmp.iterdir():
            os.replace(path, directory / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- loading --------------------------------------------------------------------------------------------
def read_encoder_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed, validated ``encoder.json`` of an encoder directory."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"encoder directory {root} does not exist (or is not a directory)")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        found = sorted(p.name for p in root.iterdir())[:10]
        hint = (
            " (config.json: a Hugging Face model? load it with load_pretrained_dual_encoder)"
            if "config.json" in found
            else ""
        )
        raise EncoderLoadError(
            f"{root} is not a dual encoder directory: expected {META_FILE}, {WEIGHTS_FILE} and "
            f"{TOKENIZER_DIR}/, found {found or 'nothing'}{hint}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EncoderLoadError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise EncoderLoadError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}")
    missing = [k for k in ("kind", "format_version", "config") if k not in meta]
    if missing:
        raise EncoderLoadError(
            f"{meta_path}: missing key(s) {missing}; expected kind, format_version and config"
        )
    if meta["kind"] != KIND:
        raise EncoderLoadError(f"{meta_path}: expected kind {KIND!r}, found kind {meta['kind']!r}")
    version = meta["format_version"]
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise EncoderLoadError(
            f"{meta_path}: format_version {version!r} (written by panglot {meta.get('panglot_version', '?')}); "
            f"this panglot {panglot.__version__} reads versions 1 to {FORMAT_VERSION}"
        )
    return meta


def load_dual_encoder(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> DualEncoder:
    """Load a directory written by :meth:`DualEncoder.save` (eval mode, on ``map_location``)."""
    root = Path(directory)
    meta = read_encoder_meta(root)
    try:
        config = from_dict(DualEncoderConfig, meta["config"], source=str(root / META_FILE))
    except ConfigError as exc:
        raise EncoderLoadError(str(exc)) from exc
    tokenizer = TextTokenizer.load(root / TOKENIZER_DIR)
    encoder = DualEncoder(config, tokenizer)
    _load_weights(encoder, root / WEIGHTS_FILE)
    encoder.metrics = meta.get("metrics", {})
    return encoder.to(map_location).eval()


def _load_weights(encoder: DualEncoder, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing (an encoder directory holds {WEIGHTS_FILE})")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise EncoderLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if expected[k].shape != state[k].shape
    ]
    if missing or unexpected or bad_shape:
        parts = [f"missing {missing[:5]}"] if missing else []
        parts += [f"unexpected {unexpected[:5]}"] if unexpected else []
        parts += bad_shape[:5]
        raise EncoderLoadError(f"{path}: weights do not fit the encoder config: " + "; ".join(parts))
    encoder.load_state_dict(state, strict=True)


# --- training -------------------------------------------------------------------------------------------
def positives(keys: Sequence[str]) -> torch.Tensor:
    """(B, B) bool: pairs whose keys are equal (the diagonal always)."""
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    ids = torch.tensor([index[k] for k in keys])
    return ids[:, None] == ids[None, :]


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, keys: Sequence[str]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric multi-positive InfoNCE over a batch of matched (image i, text i) pairs.

    ``keys[i]`` names what pair i shows (the canonical caption): image i and text j are a positive pair
    whenever ``keys[i] == keys[j]``. Each row's target spreads evenly over its positives, so two scenes
    with the same caption are not pushed apart. Computed in float32.
    """
    if not (len(keys) == image_emb.shape[0] == text_emb.shape[0]):
        raise ValueError(
            f"batch sizes differ: {image_emb.shape[0]} images, {text_emb.shape[0]} texts, {len(keys)} keys"
        )
    logits = scale.float() * image_emb.float() @ text_emb.float().t()  # (B_img, B_txt)
    pos = positives(keys).to(logits.device)
    target = pos.float() / pos.sum(dim=1, keepdim=True)  # symmetric pos: same row and column sums
    image_to_text = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_image = -(target * logits.t().log_softmax(dim=1)).sum(dim=1).mean()
    loss = (image_to_text + text_to_image) / 2
    with torch.no_grad():
        rows = torch.arange(len(keys), device=logits.device)
        i2t_acc = pos[rows, logits.argmax(dim=1)].float().mean()
        t2i_acc = pos[rows, logits.argmax(dim=0)].float().mean()
    metrics = {
        "loss": loss.item(),
        "i2t_acc": i2t_acc.item(),
        "t2i_acc": t2i_acc.item(),
        "logit_scale": scale.item(),
    }
    return loss, metrics


class PairBatch(NamedTuple):
    images: torch.Tensor  # (B, 3, 64, 64) float in [-1, 1]
    texts: list[str]  # what the text tower reads (canonical captions or paraphrases)
    keys: list[str]  # what decides positives: the canonical caption of each image


def dual_encoder_loss(encoder: DualEncoder, batch: PairBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """The trainer's ``loss_fn``: embed both sides and apply :func:`contrastive_loss`."""
    image_emb = encoder.embed_images(batch.images.to(encoder.device))
    text_emb = encoder.embed_texts(batch.texts)
    return contrastive_loss(image_emb, text_emb, encoder.scale(), batch.keys)
