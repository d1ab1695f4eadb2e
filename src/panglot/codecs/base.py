"""The codec protocol: every modality tokenizer (pixel VQ, semantic VQ, Q-Former, continuous, speech,
video) is a :class:`Codec`, saved the same way and loaded by :func:`load_codec`.

A codec turns items of one modality into tokens and back:

- ``encode(items) -> LongTensor (B, N)`` ids in ``[0, vocab_size)`` (continuous codecs, whose
  ``vocab_size`` is 0: ``FloatTensor (B, N, D)``), ``N == tokens_per_item``;
- ``decode(ids) -> list`` of items (PIL images for image codecs);
- the tensor-level pair ``encode_tensor(x) / decode_tensor(ids)`` works on the modality's tensor form
  (images: ``(B, 3, 64, 64)`` float in [-1, 1]) and is what models and training use;
- ``items_to_tensor / tensor_to_items`` convert between the two (validating user input at the edge).

On disk a codec is a directory with ``codec.safetensors`` (weights) and ``codec.json`` (kind, format
version, config, panglot version, training metrics), both written atomically. Nothing is unpickled.
"""

from __future__ import annotations

import importlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import panglot
from panglot.config import ConfigError, from_dict, to_dict
from panglot.data.images import ImageLike, load_images
from panglot.files import atomic_write

WEIGHTS_FILE = "codec.safetensors"
META_FILE = "codec.json"

C = TypeVar("C", bound="Codec")

_REGISTRY: dict[str, type[Codec]] = {}
# Built-in kinds are imported on first use, so loading a text codec never imports the image stack.
_BUILTIN_MODULES = {
    "image_vq": "panglot.codecs.image_vq",
    "image_semantic_vq": "panglot.codecs.image_semantic",
    "image_qformer": "panglot.codecs.image_qformer",
}


class CodecLoadError(ValueError):
    """A codec directory that cannot be loaded: names the file, what was expected and what was found."""


def register_codec(cls: type[C]) -> type[C]:
    """Class decorator: make ``cls`` loadable by its ``kind``."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} must set a non-empty class attribute `kind` to be registered")
    if kind in _REGISTRY and _REGISTRY[kind] is not cls:
        raise ValueError(f"codec kind {kind!r} is already registered by {_REGISTRY[kind].__qualname__}")
    _REGISTRY[kind] = cls
    return cls


def codec_kinds() -> list[str]:
    """Every kind :func:`load_codec` can load."""
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def codec_class(kind: str) -> type[Codec]:
    """The registered class for ``kind`` (importing a built-in codec's module on first use)."""
    if kind not in _REGISTRY and kind in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[kind])
    if kind not in _REGISTRY:
        raise KeyError(f"unknown codec kind {kind!r}; known kinds: {', '.join(codec_kinds())}")
    return _REGISTRY[kind]


class Codec(nn.Module, ABC):
    """Abstract base of every codec. Subclasses set the class attributes, take their config dataclass
    as the only constructor argument, and implement the abstract methods."""

    kind: ClassVar[str]  # registry key, written to codec.json
    modality: ClassVar[str]  # "image", "speech", "video", ...
    config_cls: ClassVar[type]  # the dataclass of ``config``
    format_version: ClassVar[int] = 1  # bump when the weight layout or config meaning changes

    def __init__(self, config: Any):
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_cls.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.metrics: dict[str, Any] = {}  # training metrics, saved in and loaded from codec.json

    @classmethod
    @abstractmethod
    def debug_config(cls) -> Any:
        """A tiny config for tests (every codec has one, like every backbone has a ``debug`` size)."""

    # --- what the codec is --------------------------------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids (0 for continuous codecs)."""

    @property
    @abstractmethod
    def tokens_per_item(self) -> int:
        """N: tokens one item becomes."""

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, columns) of an item's tokens in their order (row-major): ``(tokens_per_item, 1)`` for a
        1-D sequence (the default); image codecs with a 2-D token grid say so (the pixel VQ: (8, 8))."""
        return self.tokens_per_item, 1

    @property
    def is_continuous(self) -> bool:
        return self.vocab_size == 0

    @property
    def codebook_size(self) -> int:
        """Codes of the learned codebook; ``vocab_size`` unless an id joins a code with something fixed
        (the pixel VQ's ``code_split="shape_colour"``: shape code x token colour)."""
        return self.vocab_size

    def codebook_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids -> their codes in the learned codebook, in ``[0, codebook_size)``."""
        return ids

    def id_factors(self) -> list[tuple[torch.Tensor, int]]:
        """What ids share, for a model that reads them (``UnifiedModelConfig.code_factors``): a list of
        (value of every id ``(vocab_size,)`` long, number of values), e.g. the token colour and each FSQ digit.
        Ids with the same value of a factor share that factor's embedding row. Empty: ids are unrelated."""
        return []

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    # --- tensor level -------------------------------------------------------------------------------
    @abstractmethod
    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Modality tensor -> ids (B, N) long (continuous: features (B, N, D)). Never updates state."""

    @abstractmethod
    def decode_tensor(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N) -> modality tensor."""

    @abstractmethod
    def items_to_tensor(self, items: Sequence[Any]) -> torch.Tensor:
        """Validate user items and stack them into the modality tensor (on CPU)."""

    @abstractmethod
    def tensor_to_items(self, x: torch.Tensor) -> list[Any]:
        """Modality tensor -> list of items."""

    # --- item level ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        return self.encode_tensor(self.items_to_tensor(items).to(self.device))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> list[Any]:
        ids = torch.as_tensor(ids, device=self.device)
        if ids.ndim == 1:
            raise ValueError(
                f"decode expects a batch of ids (B, {self.tokens_per_item}), got shape {tuple(ids.shape)}"
            )
        if not self.is_continuous:
            self.check_ids(ids)
        return self.tensor_to_items(self.decode_tensor(ids))

    def check_ids(self, ids: torch.Tensor) -> None:
        """Raise a clear error when ``ids`` is not (B, tokens_per_item) integers in [0, vocab_size)."""
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"ids must be integers, got {ids.dtype}")
        if ids.ndim != 2 or ids.shape[1] != self.tokens_per_item:
            raise ValueError(f"ids must have shape (B, {self.tokens_per_item}), got {tuple(ids.shape)}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got values in [{lo}, {hi}]")

    # --- files --------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, metrics: dict[str, Any] | None = None) -> Path:
        """Write ``codec.safetensors`` and ``codec.json`` into ``directory`` (created if needed)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in self.state_dict().items()}
        meta = {
            "kind": self.kind,
            "format_version": self.format_version,
            "panglot_version": panglot.__version__,
            "modality": self.modality,
            "vocab_size": self.vocab_size,
            "tokens_per_item": self.tokens_per_item,
            "config": to_dict(self.config),
            "metrics": metrics or {},
        }
        # Weights first, then the JSON that marks the directory as a complete codec.
        atomic_write(
            out / WEIGHTS_FILE, lambda tmp: save_file(weights, str(tmp), metadata={"kind": self.kind})
        )
        atomic_write(
            out / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        )
        return out

    @classmethod
    def load(cls: type[C], directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> C:
        """Load a codec saved by :meth:`save`, checking it is of this class's kind."""
        codec = load_codec(directory, map_location=map_location, kind=cls.kind)
        assert isinstance(codec, cls)
        return codec


def read_codec_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``codec.json`` of a codec directory, validated."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"codec directory {root} does not exist (or is not a directory)")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        found = sorted(p.name for p in root.iterdir())[:10]
        raise CodecLoadError(
            f"{root} is not a codec directory: expected {META_FILE} and {WEIGHTS_FILE}, found {found or 'nothing'}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CodecLoadError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CodecLoadError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}")
    missing = [k for k in ("kind", "format_version", "config") if k not in meta]
    if missing:
        raise CodecLoadError(
            f"{meta_path}: missing key(s) {missing}; expected kind, format_version and config"
        )
    return meta


def load_codec(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu", kind: str | None = None
) -> Codec:
    """Load any codec directory, dispatching on the ``kind`` in its ``codec.json``.

    ``kind``, when given, is the kind the caller expects; another kind on disk is an error.
    """
    root = Path(directory)
    meta = read_codec_meta(root)
    meta_path = root / META_FILE
    found_kind = meta["kind"]
    if kind is not None and found_kind != kind:
        raise CodecLoadError(f"{meta_path}: expected a codec of kind {kind!r}, found kind {found_kind!r}")
    try:
        cls = codec_class(found_kind)
    except KeyError as exc:
        raise CodecLoadError(f"{meta_path}: {exc.args[0]}") from None
    version = meta["format_version"]
    if not isinstance(version, int) or version > cls.format_version or version < 1:
        raise CodecLoadError(
            f"{meta_path}: format_version {version!r} of kind {found_kind!r} (written by panglot "
            f"{meta.get('panglot_version', '?')}); this panglot {panglot.__version__} reads versions 1 to "
            f"{cls.format_version}"
        )
    try:
        config = from_dict(cls.config_cls, meta["config"], source=str(meta_path))
    except ConfigError as exc:
        raise CodecLoadError(str(exc)) from exc
    codec = cls(config)
    _load_weights(codec, root / WEIGHTS_FILE)
    codec.metrics = meta.get("metrics", {})
    return codec.to(map_location).eval()


def _load_weights(codec: Codec, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: weights file missing (a codec directory holds {WEIGHTS_FILE} and {META_FILE})"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CodecLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    expected = codec.state_dict()
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
        raise CodecLoadError(f"{path}: weights do not fit the {codec.kind} config: " + "; ".join(parts))
    codec.load_state_dict(state, strict=True)


# --- images ---------------------------------------------------------------------------------------------
def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8 (clamped, rounded)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class ImageCodec(Codec):
    """Base for image codecs: items are paths, bytes, PIL images or uint8 arrays of ``image_size``
    (validated by :mod:`panglot.data.images`); the tensor form is (B, 3, S, S) float in [-1, 1]."""

    modality: ClassVar[str] = "image"

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def items_to_tensor(self, items: Sequence[ImageLike]) -> torch.Tensor:
        return images_to_tensor(load_images(items, size=self.image_size))

    def tensor_to_items(self, x: torch.Tensor) -> list[Image.Image]:
        return [Image.fromarray(img) for img in tensor_to_images(x)]

    def check_images(self, x: torch.Tensor) -> None:
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s) or not x.dtype.is_floating_point:
            raise ValueError(
                f"expected a float tensor (B, 3, {s}, {s}) in [-1, 1], got {x.dtype} {tuple(x.shape)}"
            )
