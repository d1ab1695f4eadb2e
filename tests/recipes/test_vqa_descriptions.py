"""recipes/vqa_descriptions.py: per kind, how right a describing run's descriptions, marks and answers are."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from panglot.pipeline import DrawDefaults
from panglot.world.dataset import make_example
from panglot.world.vqa import field_marked_caption, marked_caption, questions
from recipes import vqa_descriptions


class Oracle:
    """A run that writes the true marked caption (or spoils it as told) and answers from the world's truth."""

    def __init__(self, truth: dict[str, tuple[str, str]], spoil: str = "") -> None:
        self.truth, self.spoil = truth, spoil

    def explain(self, images, questions):
        out = []
        for question in questions:
            description, answer = self.truth[question]
            if self.spoil == "marks":
                description = description.replace("yes", "YES").replace("no", "yes").replace("YES", "no")
            if self.spoil == "words":
                description = "a small red circle at the top yes"
            out.append((description, answer))
        return out


def _truth(split: str) -> dict[str, tuple[str, str]]:
    """Question -> (true marked caption, answer) for the questions ``measure`` asks about the split's first scene."""
    ex = make_example(split, 0, 0)
    asked = questions(ex.scene, np.random.default_rng(0), k=6, split=split)
    return {qa.question: (marked_caption(ex.scene, qa), qa.answer) for qa in asked}


def test_a_run_that_writes_the_truth_scores_one_and_spoilt_marks_or_words_show():
    one = _truth("test-seen")
    figures = vqa_descriptions.measure(Oracle(one), "test-seen", scenes=1)
    assert figures and all(f["description"] == f["marks"] == f["answer"] == 1.0 for f in figures.values())
    spoilt = vqa_descriptions.measure(Oracle(one, "marks"), "test-seen", scenes=1)
    assert all(f["description"] == 1.0 and f["marks"] == 0.0 for f in spoilt.values())
    blind = vqa_descriptions.measure(Oracle(one, "words"), "test-seen", scenes=1)
    assert all(f["description"] == 0.0 and f["marks"] is None and f["answer"] == 1.0 for f in blind.values())
    assert sum(f["n"] for f in figures.values()) == 6


def test_a_fields_run_is_measured_against_its_own_field_marks():
    ex = make_example("test-seen", 0, 0)
    asked = questions(ex.scene, np.random.default_rng(0), k=6, split="test-seen")
    truth = {qa.question: (field_marked_caption(ex.scene, qa), qa.answer) for qa in asked}
    right = vqa_descriptions.measure(Oracle(truth), "test-seen", scenes=1, marker=field_marked_caption)
    assert all(f["marks"] == 1.0 for f in right.values())
    two_fields = [qa.kind for qa in asked if field_marked_caption(ex.scene, qa) != marked_caption(ex.scene, qa)]
    assert two_fields  # field marks differ from object marks there, so the default reads them wrong
    wrong = vqa_descriptions.measure(Oracle(truth), "test-seen", scenes=1)
    assert all(wrong[kind]["marks"] == 0.0 for kind in two_fields)
    assert vqa_descriptions.trained_marks(SimpleNamespace(defaults=DrawDefaults(marking="fields"))) is field_marked_caption
    assert vqa_descriptions.trained_marks(SimpleNamespace(defaults=DrawDefaults())) is marked_caption
