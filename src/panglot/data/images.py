"""User images in, validated 64 x 64 RGB uint8 arrays out.

ShapesWorld is pixel-exact, so this module never resizes: an image of the wrong size is refused. Other
inputs are converted only when the conversion keeps what the image means in the world:

- ``RGB``: taken as is. ``L`` / ``1`` (grey, bilevel) and ``P`` (palette): converted to RGB, exact.
- anything with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency): composited onto the world's
  white background, i.e. the image as a viewer shows it on white. Fully opaque pixels are unchanged,
  fully transparent ones become background; partially transparent (anti-aliased) edges blend towards
  white, which the oracle then reads as the nearest palette colour or background, as it would read any
  soft edge.
- ``I;16`` (16-bit grey, e.g. 16-bit PNGs): scaled to 8 bits by /257 with rounding (exact for images
  saved from 8 bits).
- ``I`` (32-bit integer) and ``F`` (float): refused; they have no fixed range, so any scaling would be a
  guess.
- ``CMYK``, ``YCbCr``: converted to RGB by Pillow.
- numpy arrays: ``uint8`` of shape (H, W, 3), (H, W, 4) (alpha as above) or (H, W) (grey); any other
  dtype is refused (float arrays have no agreed range: [0, 1]? [-1, 1]? [0, 255]?).
- multi-frame files (GIF, APNG, TIFF): the first frame.

Every problem raises :class:`ImageInputError` naming the file (or item) and what was expected.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = str | Path | bytes | bytearray | Image.Image | np.ndarray

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_CONVERTIBLE_MODES = ("RGB", "L", "1", "P", "CMYK", "YCbCr")


class ImageInputError(ValueError):
    """An image input that cannot be used: says which input and what was expected."""


def load_image(x: ImageLike, size: int = 64, name: str | None = None) -> np.ndarray:
    """Validate one image and return it as a (size, size, 3) uint8 RGB array.

    ``x`` is a file path, the bytes of an image file, a PIL image or a numpy array; ``name`` is how
    errors refer to it (defaults to the path, or the kind of input).
    """
    if isinstance(x, np.ndarray):
        return _from_array(x, size, name or "numpy array")
    if isinstance(x, Image.Image):
        return _from_pil(x, size, name or "PIL image")
    if isinstance(x, bytes | bytearray):
        return _from_pil(_open(io.BytesIO(bytes(x)), name or "image bytes"), size, name or "image bytes")
    if isinstance(x, str | Path):
        path = Path(x)
        where = name or str(path)
        if not path.exists():
            raise ImageInputError(f"{where}: no such file")
        if not path.is_file():
            raise ImageInputError(f"{where}: expected an image file, got a directory or special file")
        return _from_pil(_open(path, where), size, where)
    raise ImageInputError(
        f"{name or 'image'}: expected a path, bytes, PIL image or numpy array, got {type(x).__name__}"
    )


def load_images(items: Sequence[ImageLike], size: int = 64) -> np.ndarray:
    """Validate a list of images -> (B, size, size, 3) uint8; an error names the index of the bad item."""
    if isinstance(items, str | Path | bytes | bytearray | Image.Image | np.ndarray):
        raise ImageInputError(f"expected a list of images, got a single {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        label = f"item {i}" + (f" ({item})" if isinstance(item, str | Path) else "")
        out.append(load_image(item, size, name=label))
    if not out:
        raise ImageInputError("expected at least one image, got an empty list")
    return np.stack(out)


def _open(source, where: str) -> Image.Image:
    """Open and fully decode an image file (Pillow decodes lazily, so truncation shows up only here)."""
    try:
        img = Image.open(source)
        img.load()
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{where}: not an image file Pillow can read (PNG, JPEG, GIF, ...)") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt data
        raise ImageInputError(f"{where}: truncated or corrupt image file ({exc})") from exc
    return ImageOps.exif_transpose(img)


def _check_size(width: int, height: int, size: int, where: str) -> None:
    if (width, height) != (size, size):
        raise ImageInputError(
            f"{where}: expected {size}x{size}, got {width}x{height} "
            "(images are not resized: ShapesWorld is pixel-exact)"
        )


def _from_pil(img: Image.Image, size: int, where: str) -> np.ndarray:
    _check_size(img.width, img.height, size, where)
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        return _on_white(np.asarray(img.convert("RGBA")))
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.uint16).astype(np.float64)  # (H, W)
        grey8 = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode in ("I", "F"):
        raise ImageInputError(
            f"{where}: expected 8-bit (or 16-bit) pixels, got Pillow mode {mode!r} "
            "(32-bit integer/float pixels have no fixed range; save the image as 8-bit RGB)"
        )
    if mode not in _CONVERTIBLE_MODES:
        raise ImageInputError(
            f"{where}: unsupported Pillow mode {mode!r}; expected RGB or a mode convertible to it"
        )
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _from_array(arr: np.ndarray, size: int, where: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ImageInputError(
            f"{where}: expected dtype uint8 (values 0-255), got {arr.dtype}; "
            "for floats in [0, 1] pass (x * 255).round().astype(np.uint8)"
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageInputError(f"{where}: expected shape (H, W, 3), (H, W, 4) or (H, W), got {arr.shape}")
    _check_size(arr.shape[1], arr.shape[0], size, where)
    if arr.shape[2] == 4:
        return _on_white(arr)
    return np.ascontiguousarray(arr)


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (H, W, 4) uint8 onto white; exact for alpha 0 and 255."""
    alpha = rgba[:, :, 3:4].astype(np.float64) / 255.0
    rgb = rgba[:, :, :3].astype(np.float64)
    return np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
