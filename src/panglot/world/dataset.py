"""ShapesWorld records: a seeded scene with its caption, paraphrase, questions and edits.

Plain functions, no ``Dataset`` class: any example is made from (split, seed, index) alone, so loaders
can shard, shuffle and resume by index.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from panglot.world.edits import Edit, edits
from panglot.world.language import caption, paraphrase
from panglot.world.render import render
from panglot.world.scene import Scene
from panglot.world.splits import SPLITS, check_split, sample_scene
from panglot.world.vqa import QA, questions


@dataclass(frozen=True)
class Example:
    """One ShapesWorld record: a scene with its canonical caption, a paraphrase, every question about it
    and one edit of each possible kind. The image is rendered on access."""

    split: str
    index: int
    scene: Scene
    caption: str
    paraphrase: str
    questions: tuple[QA, ...]
    edits: tuple[Edit, ...]

    @property
    def image(self) -> np.ndarray:
        """(64, 64, 3) uint8 render of the scene."""
        return render(self.scene)


def example_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The generator of example ``index``: its own stream per (seed, split, index), so any example can be
    made without the ones before it and splits never share a stream."""
    return np.random.default_rng([seed, SPLITS.index(check_split(split)), index])


def split_scenes(split: str, n: int, seed: int, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of ``split``: the scenes of ``make_example(split, seed, i)``, without
    the text. Every stage that needs world scenes (codecs, encoders, the unified mixture) takes them here."""
    return [sample_scene(example_rng(split, seed, i), split) for i in range(start, start + n)]


def make_example(split: str, seed: int, index: int, n_objects: int | None = None) -> Example:
    """Example ``index`` of ``split`` under ``seed`` (deterministic; random 1-3 objects when None)."""
    rng = example_rng(split, seed, index)
    scene = sample_scene(rng, split, n_objects)
    return Example(
        split=split,
        index=index,
        scene=scene,
        caption=caption(scene),
        paraphrase=paraphrase(scene, rng),
        questions=tuple(questions(scene, rng, split=split)),
        edits=tuple(edits(scene, rng, split)),
    )


def make_examples(split: str, n: int, seed: int = 0, n_objects: int | None = None) -> list[Example]:
    """Examples 0 .. n-1 of ``split`` under ``seed``."""
    return [make_example(split, seed, i, n_objects) for i in range(n)]


def iter_examples(split: str, seed: int = 0, start: int = 0) -> Iterator[Example]:
    """Endless examples of ``split`` from index ``start`` (resume a loader by its index)."""
    return (make_example(split, seed, i) for i in itertools.count(start))
