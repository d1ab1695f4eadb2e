"""World text for the tokenizer tests, written from the spec's templates and ``panglot.world.scene``
constants (so these tests do not depend on ``panglot.world.language``)."""

from __future__ import annotations

import random

import pytest

from panglot.codecs.text.tokenizer import TextTokenizer, train_world_tokenizer
from panglot.world.scene import COLORS, HELD_OUT, POSITIONS, SHAPES, SIZES, Obj, make_scene

NUMBERS = ("one", "two", "three")
DIRECTIONS = ("left", "right", "up", "down")


def random_scene(rng: random.Random):
    cells = rng.sample(POSITIONS, rng.randint(1, 3))
    pairs = rng.sample([(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT], len(cells))
    return make_scene([Obj(s, c, rng.choice(list(SIZES)), p) for p, (c, s) in zip(cells, pairs)])


def phrase(o: Obj) -> str:
    return f"a {o.size} {o.color} {o.shape} at the {o.position}"


def scene_texts(scene, rng: random.Random) -> list[str]:
    """A caption, one question of each kind with its answer, one edit instruction and a video caption."""
    o = rng.choice(scene.objects)
    color2 = rng.choice([c for c in COLORS if c != o.color])
    return [
        " and ".join(phrase(x) for x in scene.objects),
        f"what color is the {o.shape}?", o.color,
        f"what shape is at the {rng.choice(POSITIONS)}?", rng.choice([*SHAPES, "nothing"]),
        "how many objects are there?", NUMBERS[len(scene) - 1],
        f"is there a {o.color} {o.shape}?", rng.choice(["yes", "no"]),
        f"where is the {o.color} {o.shape}?", o.position,
        f"what size is the {o.color} {o.shape}?", o.size,
        rng.choice([
            f"make the {o.color} {o.shape} {color2}",
            f"make the {o.color} {o.shape} {rng.choice(list(SIZES))}",
            f"move the {o.color} {o.shape} to the {rng.choice(POSITIONS)}",
            f"remove the {o.color} {o.shape}",
            f"add {phrase(o)}",
        ]),
        f"a {o.size} {o.color} {o.shape} moves {rng.choice(DIRECTIONS)}",
        f"which way does the {o.color} {o.shape} move?", rng.choice([*DIRECTIONS, "nowhere"]),
    ]  # fmt: skip


def make_world_texts(n_scenes: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [t for _ in range(n_scenes) for t in scene_texts(random_scene(rng), rng)]


@pytest.fixture(scope="session")
def world_texts() -> list[str]:
    return make_world_texts(n_scenes=400, seed=0)


@pytest.fixture(scope="session")
def world_tokenizer(world_texts) -> TextTokenizer:
    return train_world_tokenizer(world_texts)
