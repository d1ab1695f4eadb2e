import itertools
import re
from collections import Counter

import numpy as np
import pytest

from panglot.world.dataset import iter_examples, make_example, make_examples
from panglot.world.oracle import parse_image
from panglot.world.scene import COLORS, HELD_OUT, SHAPES
from panglot.world.splits import SPLITS, sample_scene

PAIR_MENTION = re.compile(rf"\b({'|'.join(COLORS)})\b\W+(?:\w+\W+)?({'|'.join(SHAPES)})\b")


def held_out_mentions(text: str) -> set[tuple[str, str]]:
    """Held-out colour-shape pairs a text names, also with one word in between ("red, large, triangle")."""
    return {m.groups() for m in PAIR_MENTION.finditer(text)} & HELD_OUT


def test_mention_detector_catches_paraphrase_forms():
    assert held_out_mentions("there is a red triangle, small, at the top") == {("red", "triangle")}
    assert held_out_mentions("make the green cross gray") == {("green", "cross")}
    assert held_out_mentions("a red square at the left and a gray triangle at the top") == set()


@pytest.mark.parametrize("split", SPLITS)
def test_sampled_scenes_follow_the_split_rule(split: str):
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, split, n_objects=1 + i % 3) for i in range(600)]
    assert [len(s) for s in scenes] == [1 + i % 3 for i in range(600)]
    if split == "test-unseen":
        assert all(s.unseen for s in scenes)
        assert {o.pair for s in scenes for o in s.objects} >= HELD_OUT
    else:
        assert not any(s.unseen for s in scenes)
        assert len({o.pair for s in scenes for o in s.objects}) == 32 - len(HELD_OUT)


def test_no_held_out_pair_anywhere_in_training_examples():
    for ex in make_examples("train", 300, seed=7):
        assert not ex.scene.unseen
        texts = [ex.caption, ex.paraphrase]
        texts += [f"{qa.question} {qa.answer}" for qa in ex.questions]
        # "what color is the {shape}?" -> colour names a pair across question and answer
        texts += [f"{qa.answer} {qa.question.split()[-1]}" for qa in ex.questions if qa.kind == "color"]
        texts += [e.instruction for e in ex.edits]
        assert not any(held_out_mentions(t) for t in texts), ex
        assert not any(e.target.unseen or e.source.unseen for e in ex.edits), ex


def test_unseen_examples_do_mention_held_out_pairs():
    examples = make_examples("test-unseen", 50, seed=7)
    assert all(held_out_mentions(ex.caption) for ex in examples)
    assert sum(bool(held_out_mentions(qa.question)) for ex in examples for qa in ex.questions) > 50


def test_examples_are_deterministic_random_access_and_split_specific():
    a = make_examples("train", 20, seed=1)
    assert a == make_examples("train", 20, seed=1)
    assert make_example("train", 1, 13) == a[13]
    assert list(itertools.islice(iter_examples("train", seed=1, start=5), 3)) == a[5:8]
    other_seed = make_examples("train", 20, seed=2)
    other_split = make_examples("val", 20, seed=1)
    assert sum(x.caption == y.caption for x, y in zip(a, other_seed)) < 3
    assert sum(x.caption == y.caption for x, y in zip(a, other_split)) < 3
    assert Counter(len(x.scene) for x in make_examples("val", 300, seed=0)).keys() == {1, 2, 3}


def test_example_fields_agree_with_the_scene():
    ex = make_example("test-seen", 0, 3, n_objects=2)
    assert len(ex.scene) == 2 and ex.split == "test-seen" and ex.index == 3
    assert ex.image.shape == (64, 64, 3) and ex.image.dtype == np.uint8
    assert parse_image(ex.image) == ex.scene
    assert {e.kind for e in ex.edits} == {"recolor", "resize", "move", "remove", "add"}
    assert all(e.source == ex.scene for e in ex.edits)


def test_bad_split_and_object_count_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        sample_scene(rng, "test")
    with pytest.raises(ValueError, match="n_objects must be 1, 2 or 3, got 4"):
        sample_scene(rng, "train", 4)
