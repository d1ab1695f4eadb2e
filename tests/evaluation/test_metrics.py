import itertools
import json

import numpy as np
import pytest

from panglot.evaluation import (
    Breakdown,
    attribute_accuracy,
    caption_correct,
    edit_correct,
    match_objects,
    normalize_answer,
    scene_equal,
    text_to_image_scores,
    vqa_correct,
)
from panglot.evaluation.metrics import ATTRIBUTES
from panglot.world.language import parse_caption
from panglot.world.scene import Obj, Scene, make_scene
from panglot.world.splits import sample_scene

RED_CIRCLE = Obj("circle", "red", "large", "top left", (1, -1))
BLUE_CROSS = Obj("cross", "blue", "small", "bottom right")
GRAY_SQUARE = Obj("square", "gray", "small", "center")


def scene(*objs: Obj) -> Scene:
    return Scene(tuple(objs))


def test_scene_equal_ignores_jitter_and_order_but_not_extras():
    target = make_scene([RED_CIRCLE, BLUE_CROSS])
    moved = Obj("circle", "red", "large", "top left", (-2, 2))
    assert scene_equal(scene(BLUE_CROSS, moved), target)
    assert not scene_equal(scene(RED_CIRCLE, BLUE_CROSS, GRAY_SQUARE), target)
    assert not scene_equal(scene(RED_CIRCLE), target)
    assert not scene_equal(scene(RED_CIRCLE, RED_CIRCLE, BLUE_CROSS), target)  # a duplicate is extra
    assert edit_correct(scene(moved, BLUE_CROSS), target)


def test_wrong_colour_costs_colour_only():
    target = scene(RED_CIRCLE, BLUE_CROSS)
    got = scene(Obj("circle", "green", "large", "top left"), BLUE_CROSS)
    scores = text_to_image_scores(target, got)
    assert scores == {
        "scene": 0.0, "shape": 1.0, "color": 0.5, "size": 1.0, "position": 1.0, "object": 0.5, "count": 1.0,
    }  # fmt: skip


def test_missing_object_is_wrong_on_every_attribute():
    scores = attribute_accuracy(scene(RED_CIRCLE, BLUE_CROSS), scene(BLUE_CROSS))
    assert all(scores[k] == 0.5 for k in (*ATTRIBUTES, "object"))
    assert scores["count"] == 0.0
    empty = attribute_accuracy(scene(RED_CIRCLE), scene())
    assert all(v == 0.0 for v in empty.values())


def test_right_object_in_wrong_cell_is_wrong_on_position_only():
    got = scene(Obj("circle", "red", "large", "right"), GRAY_SQUARE)  # an extra object too
    scores = text_to_image_scores(scene(RED_CIRCLE), got)
    assert scores == {
        "scene": 0.0, "shape": 1.0, "color": 1.0, "size": 1.0, "position": 0.0, "object": 0.0, "count": 0.0,
    }  # fmt: skip


def _brute_force_best(target: Scene, parsed: Scene) -> int:
    def agree(a, b):
        return sum(getattr(a, k) == getattr(b, k) for k in ATTRIBUTES)

    n, padded = len(target), [*parsed.objects, *([None] * len(target))]
    return max(
        sum(agree(t, p) for t, p in zip(target.objects, perm) if p is not None)
        for perm in itertools.permutations(padded, n)
    )


def test_matching_is_one_to_one_and_optimal():
    rng = np.random.default_rng(0)
    for _ in range(60):
        target = sample_scene(rng, "test-unseen", int(rng.integers(1, 4)))
        parsed = Scene(sample_scene(rng, "train").objects + sample_scene(rng, "train", 2).objects)
        matches = match_objects(target, parsed)
        used = [id(m) for m in matches if m is not None]
        assert len(used) == len(set(used))
        assert len(used) == min(len(target), len(parsed))
        total = sum(
            sum(getattr(t, k) == getattr(m, k) for k in ATTRIBUTES) for t, m in zip(target.objects, matches)
        )
        assert total == _brute_force_best(target, parsed)


def test_caption_correct_needs_exactly_the_scene():
    truth = make_scene([RED_CIRCLE, BLUE_CROSS])
    good = "a large red circle at the top left and a small blue cross at the bottom right"
    assert caption_correct(good, truth, parse_caption)
    assert caption_correct(good.upper() + ".", truth, parse_caption)
    assert not caption_correct("a large red circle at the top left", truth, parse_caption)
    assert not caption_correct("two shapes", truth, parse_caption)
    assert not caption_correct("", truth, parse_caption)


def test_vqa_exact_match():
    assert normalize_answer("  Yes. ") == "yes"
    assert vqa_correct("Top Left", "top left")
    assert not vqa_correct("yes", "no")
    assert not vqa_correct("it is red", "red")
    assert not vqa_correct("", "red")


def test_breakdown_counts_means_and_json():
    b = Breakdown()
    for i in range(4):
        b.add("seen", 1, {"acc": float(i % 2)})
    b.add("seen", 3, {"acc": 1.0})
    for _ in range(3):
        b.add("unseen", 2, {"acc": 0.0})
    t = b.table()
    assert set(t) == {"seen", "unseen", "all"}
    assert set(t["seen"]) == {"1", "3", "all"}
    assert t["seen"]["1"] == {"acc": 0.5, "n": 4}
    assert t["seen"]["all"] == {"acc": 0.6, "n": 5}
    assert t["unseen"]["2"] == t["unseen"]["all"] == {"acc": 0.0, "n": 3}
    assert t["all"] == {"acc": 3 / 8, "n": 8}
    assert len(b) == 8
    assert json.loads(json.dumps(t)) == t


def test_breakdown_rejects_bad_records():
    b = Breakdown()
    b.add("seen", 1, {"acc": 1.0})
    with pytest.raises(ValueError, match="unknown group 'train'"):
        b.add("train", 1, {"acc": 1.0})
    with pytest.raises(ValueError, match="n_objects must be one of"):
        b.add("seen", 4, {"acc": 1.0})
    with pytest.raises(ValueError, match="differ from earlier"):
        b.add("unseen", 2, {"accuracy": 1.0})
