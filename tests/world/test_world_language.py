import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panglot.world.language import (
    INSTRUCTIONS,
    QUESTIONS,
    caption,
    count_word,
    instruction,
    object_phrase,
    paraphrase,
    parse_caption,
    question,
)
from panglot.world.scene import COLORS, MAX_JITTER, POSITIONS, SHAPES, SIZES, Obj, Scene, make_scene

jitter = st.integers(-MAX_JITTER, MAX_JITTER)
objects = st.builds(
    Obj,
    shape=st.sampled_from(SHAPES),
    color=st.sampled_from(list(COLORS)),
    size=st.sampled_from(list(SIZES)),
    position=st.sampled_from(POSITIONS),
    jitter=st.tuples(jitter, jitter),
)
scenes = st.lists(objects, min_size=1, max_size=3, unique_by=(lambda o: o.position, lambda o: o.pair)).map(
    make_scene
)


@given(scenes)
@settings(max_examples=150, deadline=None)
def test_caption_parse_round_trip(scene: Scene):
    text = caption(scene)
    assert parse_caption(text) == scene
    assert caption(parse_caption(text)) == text
    assert parse_caption(f"  {text.upper()}. \n") == scene


@given(scenes, st.randoms(use_true_random=False))
@settings(max_examples=50, deadline=None)
def test_caption_is_reading_order_whatever_the_phrase_order(scene: Scene, random):
    phrases = [object_phrase(o) for o in scene.objects]
    random.shuffle(phrases)
    assert parse_caption(" and ".join(phrases)) == scene


def test_canonical_caption_matches_spec_example():
    scene = make_scene(
        [Obj("cross", "blue", "small", "bottom right"), Obj("circle", "red", "large", "top left", (1, -2))]
    )
    assert caption(scene) == "a large red circle at the top left and a small blue cross at the bottom right"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"expected 'a' at word 1, got the end"),
        ("a huge red circle at the top", r"expected a size \('small' / 'large'\) at word 2, got 'huge'"),
        ("a small pink circle at the top", r"expected a colour .* at word 3, got 'pink'"),
        ("a small red oval at the top", r"expected a shape .* at word 4, got 'oval'"),
        ("a small red circle on the top", r"expected 'at' at word 5, got 'on'"),
        ("a small red circle at top", r"expected 'the' at word 6, got 'top'"),
        ("a small red circle at the middle", r"expected a position .* at word 7, got 'middle'"),
        ("a small red circle at the top left and", r"expected 'a' at word 10, got the end"),
        ("a small red circle at the top, and", r"expected a position .* at word 7, got 'top,'"),
        ("a small red circle at the top then", r"expected the end or \('and'\) at word 8, got 'then'"),
    ],
)
def test_parse_caption_names_the_first_bad_word(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_parse_caption_rejects_captions_that_break_scene_rules():
    with pytest.raises(ValueError, match="share a cell"):
        parse_caption("a small red circle at the top and a large blue square at the top")
    with pytest.raises(ValueError, match="share colour and shape"):
        parse_caption("a small red circle at the top and a large red circle at the left")
    four = " and ".join(f"a small {c} circle at the {p}" for c, p in zip(COLORS, POSITIONS[:4]))
    with pytest.raises(ValueError, match="1 to 3 objects, got 4"):
        parse_caption(four)


def test_paraphrases_vary_and_name_every_object():
    rng = np.random.default_rng(0)
    scene = make_scene([Obj("cross", "orange", "small", "center"), Obj("square", "gray", "large", "top")])
    texts = {paraphrase(scene, rng) for _ in range(200)}
    assert len(texts) > 20
    for text in texts:
        assert "orange cross" in text and "gray square" in text
        assert "small" in text and "large" in text
        assert "an orange" in text or "a small orange" in text


def test_question_and_instruction_templates_follow_the_spec():
    assert question("color", shape="cross") == "what color is the cross?"
    assert question("shape_at", position="top left") == "what shape is at the top left?"
    assert question("count") == "how many objects are there?"
    assert question("exists", color="red", shape="circle") == "is there a red circle?"
    assert question("where", color="red", shape="circle") == "where is the red circle?"
    assert question("size", color="red", shape="circle") == "what size is the red circle?"
    slots = {"color": "red", "shape": "circle"}
    assert instruction("recolor", color2="gray", **slots) == "make the red circle gray"
    assert instruction("resize", size2="small", **slots) == "make the red circle small"
    assert instruction("move", position="center", **slots) == "move the red circle to the center"
    assert instruction("remove", **slots) == "remove the red circle"
    assert instruction("add", size="large", position="top", **slots) == "add a large red circle at the top"
    assert set(QUESTIONS) == {"color", "shape_at", "count", "exists", "where", "size"}
    assert set(INSTRUCTIONS) == {"recolor", "resize", "move", "remove", "add"}
    assert [count_word(n) for n in (1, 2, 3)] == ["one", "two", "three"]
    with pytest.raises(ValueError, match="unknown kind 'colour'"):
        question("colour", shape="cross")
