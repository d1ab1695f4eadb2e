"""Test-double models built from the world itself, and a small shared suite."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from panglot.evaluation import EvalSuite
from panglot.world import language, vqa
from panglot.world.oracle import parse_image
from panglot.world.render import render
from panglot.world.scene import COLORS, Obj, Scene

COLOR_NAMES = tuple(COLORS)


def _next_color(obj: Obj) -> Obj:
    """The object in the next palette colour (never a colour another object shifted into takes)."""
    color = COLOR_NAMES[(COLOR_NAMES.index(obj.color) + 1) % len(COLOR_NAMES)]
    return Obj(obj.shape, color, obj.size, obj.position, obj.jitter)


class OracleModel:
    """Perfect model: draws the prompt's scene, captions and answers from the oracle's parse."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.seeds: list[int] = []

    def scene_for(self, prompt: str, index: int, cfg: float | None) -> Scene:
        return language.parse_caption(prompt)

    def draw(self, prompts, seed=0, cfg=None, n=1):
        self.calls.append(("draw", len(prompts)))
        self.seeds.append(seed)
        return [
            Image.fromarray(render(self.scene_for(p, i, cfg)))
            for i, p in enumerate(prompts)
            for _ in range(n)
        ]

    def caption(self, images):
        self.calls.append(("caption", len(images)))
        return [language.caption(parse_image(np.asarray(img))) for img in images]

    def ask(self, images, questions):
        self.calls.append(("ask", len(images)))
        answers = []
        for img, q in zip(images, questions):
            truth = {
                qa.question: qa.answer
                for qa in vqa.all_questions(parse_image(np.asarray(img)), "test-unseen")
            }
            answers.append(truth[q])
        return answers


class HalfWrongColors(OracleModel):
    """Draws every odd prompt of a call with every object one palette colour on; captions every odd
    image with an unparsable string; answers ``yes`` to every question."""

    def scene_for(self, prompt, index, cfg):
        scene = super().scene_for(prompt, index, cfg)
        return Scene(tuple(_next_color(o) for o in scene.objects)) if index % 2 else scene

    def caption(self, images):
        good = super().caption(images)
        return [c if i % 2 == 0 else "a picture of shapes" for i, c in enumerate(good)]

    def ask(self, images, questions):
        return ["Yes." for _ in questions]


class NeedsGuidance(OracleModel):
    """Drops the last object of multi-object scenes unless ``cfg >= 3``."""

    def scene_for(self, prompt, index, cfg):
        scene = super().scene_for(prompt, index, cfg)
        if (cfg or 1.0) >= 3 or len(scene) == 1:
            return scene
        return Scene(scene.objects[:-1])


@pytest.fixture(scope="session")
def suite() -> EvalSuite:
    return EvalSuite("test", n_per_cell=4, seed=0, questions_per_image=6)


@pytest.fixture
def oracle_model() -> OracleModel:
    return OracleModel()


@pytest.fixture(scope="session")
def half_wrong_model() -> HalfWrongColors:
    return HalfWrongColors()


@pytest.fixture(scope="session")
def needs_guidance_model() -> NeedsGuidance:
    return NeedsGuidance()
