"""Seeded ShapesWorld scenes and dataset splits.

Splits: ``train``, ``val`` and ``test-seen`` never hold a held-out colour-shape pair; every
``test-unseen`` scene holds at least one. Each split draws from its own seed stream, so the same seed
gives disjoint, reproducible data per split.
"""

from __future__ import annotations

import numpy as np

from panglot.world.scene import COLORS, HELD_OUT, MAX_JITTER, POSITIONS, SHAPES, SIZES, Obj, Scene, make_scene

SPLITS = ("train", "val", "test-seen", "test-unseen")
ALL_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELD_OUT)
UNSEEN_PAIRS = tuple(p for p in ALL_PAIRS if p in HELD_OUT)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def is_unseen_split(split: str) -> bool:
    """True for splits that may (and do) hold held-out pairs."""
    return check_split(split) == "test-unseen"


def allowed_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """Colour-shape pairs a scene of ``split`` may hold."""
    return ALL_PAIRS if is_unseen_split(split) else SEEN_PAIRS


def random_object(rng: np.random.Generator, pair: tuple[str, str], position: str) -> Obj:
    """An object of ``pair`` at ``position`` with a random size and jitter."""
    size = tuple(SIZES)[rng.integers(len(SIZES))]
    jitter = tuple(int(j) for j in rng.integers(-MAX_JITTER, MAX_JITTER + 1, size=2))
    return Obj(shape=pair[1], color=pair[0], size=size, position=position, jitter=jitter)


def sample_scene(rng: np.random.Generator, split: str, n_objects: int | None = None) -> Scene:
    """A random valid scene of ``split`` with ``n_objects`` (1-3; random when None) objects."""
    if n_objects is None:
        n_objects = int(rng.integers(1, 4))
    if not 1 <= n_objects <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n_objects}")
    cells = rng.choice(len(POSITIONS), size=n_objects, replace=False)
    pool = allowed_pairs(split)
    picks = list(rng.choice(len(pool), size=n_objects, replace=False))
    if is_unseen_split(split) and not any(pool[i] in HELD_OUT for i in picks):
        held = [pool.index(p) for p in UNSEEN_PAIRS]
        picks[int(rng.integers(n_objects))] = held[int(rng.integers(len(held)))]
    return make_scene(random_object(rng, pool[i], POSITIONS[c]) for i, c in zip(picks, cells))

