"""The ShapesWorld renderer: scene -> 64 x 64 RGB uint8, no anti-aliasing."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from panglot.world.scene import BACKGROUND, CANVAS, COLORS, SHAPES, SIZES, Obj, Scene


@cache
def shape_mask(shape: str, extent: int) -> np.ndarray:
    """Boolean (extent, extent) mask of a shape filling its bounding box.

    circle: pixel centres within extent/2 of the box centre; square: the full box; triangle:
    isosceles, apex up, base the full bottom row; cross: a plus whose arms are about extent/3 wide
    (rounded to the parity of ``extent`` so the arms are centred).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    c = (extent - 1) / 2
    y, x = np.mgrid[0:extent, 0:extent]
    if shape == "square":
        mask = np.ones((extent, extent), dtype=bool)
    elif shape == "circle":
        mask = (x - c) ** 2 + (y - c) ** 2 <= (extent / 2) ** 2
    elif shape == "triangle":
        mask = np.abs(x - c) <= (y + 1) / 2
    else:  # cross
        width = round(extent / 3)
        if (extent - width) % 2:
            width += 1 if extent / 3 > width else -1
        lo = (extent - width) // 2
        band = (np.arange(extent) >= lo) & (np.arange(extent) < lo + width)
        mask = band[None, :] | band[:, None]
    mask.setflags(write=False)
    return mask


def object_box(obj: Obj) -> tuple[int, int, int]:
    """(x0, y0, extent): top-left corner and extent of the object's bounding box."""
    extent = SIZES[obj.size]
    cx, cy = obj.center()
    return cx - extent // 2, cy - extent // 2, extent


def render(scene: Scene) -> np.ndarray:
    """Render a scene to a (64, 64, 3) uint8 array: white background, flat palette colours."""
    img = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for obj in scene.objects:
        x0, y0, extent = object_box(obj)
        mask = shape_mask(obj.shape, extent)
        img[y0 : y0 + extent, x0 : x0 + extent][mask] = COLORS[obj.color]
    return img


def render_batch(scenes: Sequence[Scene]) -> np.ndarray:
    """(B, 64, 64, 3) uint8 renders of ``scenes``."""
    return np.stack([render(s) for s in scenes])
