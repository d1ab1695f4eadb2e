import re
from collections import Counter

import numpy as np
import pytest

from panglot.world.scene import HELD_OUT, POSITIONS, Obj, Scene, make_scene
from panglot.world.splits import SPLITS, sample_scene
from panglot.world.vqa import (
    KINDS,
    QA,
    all_questions,
    field_marked_caption,
    marked_caption,
    named,
    questions,
    refers,
)

# The spec's question table, as patterns, to check answers independently of the generator.
PATTERNS = {
    "color": r"what color is the (?P<shape>\w+)\?",
    "shape_at": r"what shape is at the (?P<position>[\w ]+)\?",
    "count": r"how many objects are there\?",
    "exists": r"is there a (?P<color>\w+) (?P<shape>\w+)\?",
    "where": r"where is the (?P<color>\w+) (?P<shape>\w+)\?",
    "size": r"what size is the (?P<color>\w+) (?P<shape>\w+)\?",
}


def true_answer(scene: Scene, qa: QA) -> str:
    slots = re.fullmatch(PATTERNS[qa.kind], qa.question).groupdict()
    if qa.kind == "color":
        (obj,) = [o for o in scene.objects if o.shape == slots["shape"]]  # asked only when unique
        return obj.color
    if qa.kind == "shape_at":
        obj = scene.at(slots["position"])
        return obj.shape if obj else "nothing"
    if qa.kind == "count":
        return {1: "one", 2: "two", 3: "three"}[len(scene)]
    obj = scene.find(slots["color"], slots["shape"])
    if qa.kind == "exists":
        return "yes" if obj else "no"
    return obj.position if qa.kind == "where" else obj.size


def test_answers_are_true_for_random_scenes_of_every_split():
    rng = np.random.default_rng(0)
    kinds, answers = Counter(), Counter()
    for i in range(400):
        scene = sample_scene(rng, SPLITS[i % 4])
        for qa in all_questions(scene, SPLITS[i % 4]):
            assert qa.answer == true_answer(scene, qa), (scene, qa)
            kinds[qa.kind] += 1
            answers[qa.kind, qa.answer] += 1
    assert set(kinds) == set(KINDS)
    assert answers["exists", "yes"] and answers["exists", "no"] and answers["shape_at", "nothing"]
    assert {a for k, a in answers if k == "count"} == {"one", "two", "three"}


def test_colour_is_asked_only_about_unique_shapes():
    scene = make_scene(
        [Obj("circle", "red", "small", "top"), Obj("circle", "gray", "small", "left"), Obj("cross", "red", "large", "center")]
    )
    color_qs = [qa for qa in all_questions(scene) if qa.kind == "color"]
    assert color_qs == [QA("color", "what color is the cross?", "red")]
    shape_at = {qa.question: qa.answer for qa in all_questions(scene) if qa.kind == "shape_at"}
    assert len(shape_at) == len(POSITIONS)
    assert shape_at["what shape is at the center?"] == "cross"
    assert shape_at["what shape is at the bottom?"] == "nothing"


def test_no_distractors_name_held_out_pairs_only_in_unseen_splits():
    scene = make_scene([Obj("circle", "red", "small", "top"), Obj("cross", "blue", "large", "left")])
    # red triangle and blue circle share a colour or shape with the scene: natural distractors.
    held_out_qs = {f"is there a {c} {s}?" for c, s in HELD_OUT}
    train_qs = {qa.question for qa in all_questions(scene, "train")}
    unseen_qs = {qa.question for qa in all_questions(scene, "test-unseen")}
    assert not train_qs & held_out_qs
    assert {"is there a red triangle?", "is there a blue circle?"} <= unseen_qs


def test_sampled_questions_are_deterministic_kind_balanced_and_a_subset():
    scene = make_scene([Obj("square", "green", "large", "bottom"), Obj("triangle", "cyan", "small", "top")])
    full = all_questions(scene)
    picked = questions(scene, np.random.default_rng(3), k=6)
    assert picked == questions(scene, np.random.default_rng(3), k=6)
    assert len(picked) == 6 and len(set(picked)) == 6 and set(picked) <= set(full)
    assert {qa.kind for qa in picked} == set(KINDS)
    exists = [qa.answer for qa in questions(scene, np.random.default_rng(4), k=12) if qa.kind == "exists"]
    assert sorted(exists[:2]) == ["no", "yes"]  # exists alternates yes / no
    assert questions(scene, np.random.default_rng(0)) == full
    assert sorted(questions(scene, np.random.default_rng(0), k=10_000)) == sorted(full)


def test_named_fields_are_the_spec_patterns_slots_and_marks_follow_them():
    rng = np.random.default_rng(1)
    for i in range(200):
        scene = sample_scene(rng, SPLITS[i % 4])
        ordered = sorted(scene.objects, key=lambda o: POSITIONS.index(o.position))
        for qa in all_questions(scene, SPLITS[i % 4]):
            slots = re.fullmatch(PATTERNS[qa.kind], qa.question).groupdict()
            assert named(qa) == slots
            marks = [w for w in marked_caption(scene, qa).split() if w in ("yes", "no")]
            assert marks == ["yes" if all(getattr(o, f) == v for f, v in slots.items()) else "no" for o in ordered]
            if qa.kind in ("exists", "where", "size", "color"):
                assert marks.count("yes") == (qa.answer != "no")  # the named object, once, or none
    scene = make_scene([Obj("triangle", "blue", "large", "top left"), Obj("cross", "red", "small", "top")])
    qa = QA("exists", "is there a red cross?", "yes")
    assert marked_caption(scene, qa) == "a large blue triangle at the top left no and a small red cross at the top yes"
    assert refers(QA("count", "how many objects are there?", "two"), scene.objects[0])
    with pytest.raises(ValueError, match="not a canonical 'where' question"):
        named(QA("where", "where's the red cross?", "top"))


def test_field_marks_compare_one_word_each_and_the_object_mark_is_their_conjunction():
    scene = make_scene([Obj("triangle", "blue", "large", "top left"), Obj("cross", "red", "small", "top")])
    exists = QA("exists", "is there a blue cross?", "no")
    assert field_marked_caption(scene, exists) == (
        "a large blue yes triangle no at the top left no and a small red no cross yes at the top no"
    )
    shape_at = QA("shape_at", "what shape is at the top?", "cross")  # one field named: the marked caption
    assert field_marked_caption(scene, shape_at) == marked_caption(scene, shape_at)
    rng = np.random.default_rng(3)
    for i in range(200):
        scene = sample_scene(rng, SPLITS[i % 4])
        for qa in all_questions(scene, SPLITS[i % 4]):
            words, fields = field_marked_caption(scene, qa).split(), named(qa)
            plain = [w for w in marked_caption(scene, qa).split() if w not in ("yes", "no")]
            assert [w for w in words if w not in ("yes", "no")] == plain  # the caption, marks aside
            if len(fields) < 2:
                continue
            for phrase, obj in zip(" ".join(words).split(" and "), scene.objects):
                marks = [w for w in phrase.split() if w in ("yes", "no")]
                expected = ["yes" if getattr(obj, f) == v else "no" for f, v in fields.items()]
                assert marks[:-1] == expected and marks[-1] == ("yes" if all(m == "yes" for m in expected) else "no")


def test_balanced_positions_ask_occupied_and_empty_cells_alternately_in_training_only():
    rng, balanced, plain = np.random.default_rng(5), [], []
    for i in range(300):
        scene = sample_scene(rng, "train")
        for flag, out in ((True, balanced), (False, plain)):
            picks = [qa for qa in questions(scene, np.random.default_rng(i), k=12, balance_positions=flag)]
            at = [qa.answer != "nothing" for qa in picks if qa.kind == "shape_at"]
            out.append(at)
            if flag:
                assert at[0] != at[1]  # 12 questions: two shape_at, one of each (a scene has 1-3 of 9 cells)
    share = lambda runs: np.mean([a for at in runs for a in at[:1]])  # noqa: E731
    assert 0.4 < share(balanced) < 0.6 and share(plain) < 0.35  # the first shape_at question's cell is occupied
    scene = sample_scene(np.random.default_rng(0), "train")
    assert questions(scene, np.random.default_rng(1), k=6) == questions(scene, np.random.default_rng(1), k=6, balance_positions=False)
