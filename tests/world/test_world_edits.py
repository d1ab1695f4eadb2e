from collections import Counter

import numpy as np
import pytest

from panglot.world.edits import KINDS, all_edits, apply_edit, edits, parse_instruction
from panglot.world.oracle import parse_images
from panglot.world.render import render
from panglot.world.scene import Obj, make_scene, scene_errors
from panglot.world.splits import SPLITS, sample_scene


def changed(edit) -> tuple[set, set]:
    """Objects only in the source, objects only in the target."""
    src, tgt = set(edit.source.objects), set(edit.target.objects)
    return src - tgt, tgt - src


def test_every_edit_of_random_scenes_obeys_the_rules_and_means_what_it_says():
    rng = np.random.default_rng(0)
    kinds = Counter()
    for i in range(120):
        split = SPLITS[i % 4]
        scene = sample_scene(rng, split)
        for edit in all_edits(scene, rng, split):
            kinds[edit.kind] += 1
            assert edit.source == scene
            assert not scene_errors(edit.target.objects), edit
            if split != "test-unseen":
                assert not edit.target.unseen, edit
            assert apply_edit(scene, edit.instruction) == edit.target, edit
            gone, new = changed(edit)
            assert (len(gone), len(new)) == {"remove": (1, 0), "add": (0, 1)}.get(edit.kind, (1, 1)), edit
    assert set(kinds) == set(KINDS)


def test_sampled_edits_render_and_parse_back_to_the_target():
    rng = np.random.default_rng(1)
    sampled = [e for i in range(300) for e in edits(sample_scene(rng, SPLITS[i % 4]), rng, SPLITS[i % 4])]
    parsed = parse_images(np.stack([render(e.target) for e in sampled]))
    assert parsed == [e.target for e in sampled]
    assert [o.jitter for p in parsed for o in p.objects] == [o.jitter for e in sampled for o in e.target.objects]
    assert set(Counter(e.kind for e in sampled)) == set(KINDS)


def test_edits_per_kind_and_impossible_kinds():
    rng = np.random.default_rng(2)
    one = make_scene([Obj("circle", "red", "small", "center")])
    kinds = [e.kind for e in edits(one, rng, "train", per_kind=2)]
    assert Counter(kinds) == {"recolor": 2, "resize": 1, "move": 2, "add": 2}  # one object cannot be removed
    full = make_scene(Obj(shape, "red", "small", p) for shape, p in zip(("circle", "square", "cross"), ("top", "left", "right")))
    assert "add" not in {e.kind for e in all_edits(full, rng, "train")}  # three objects is the most
    assert edits(one, np.random.default_rng(5), "train") == edits(one, np.random.default_rng(5), "train")


def test_recolour_never_makes_a_duplicate_or_a_held_out_pair_in_training():
    rng = np.random.default_rng(3)
    scene = make_scene([Obj("triangle", "gray", "small", "top"), Obj("triangle", "blue", "large", "bottom")])
    train = {e.instruction for e in all_edits(scene, rng, "train") if e.kind == "recolor"}
    unseen = {e.instruction for e in all_edits(scene, rng, "test-unseen") if e.kind == "recolor"}
    assert "make the gray triangle blue" not in train | unseen  # would duplicate the blue triangle
    assert "make the gray triangle red" not in train
    assert "make the gray triangle red" in unseen
    assert len(train) == 2 * 6 - 2 and len(unseen) == 2 * 6


def test_apply_edit_and_parse_instruction_errors():
    scene = make_scene([Obj("circle", "red", "small", "top left"), Obj("square", "gray", "large", "center")])
    assert parse_instruction(" Move the red circle to the bottom right. ") == (
        "move",
        {"color": "red", "shape": "circle", "position": "bottom right"},
    )
    moved = apply_edit(scene, "move the red circle to the bottom right")
    assert moved == make_scene([Obj("circle", "red", "small", "bottom right"), scene.objects[1]])
    with pytest.raises(ValueError, match="not a canonical edit instruction"):
        parse_instruction("paint the red circle blue")
    with pytest.raises(ValueError, match="does not hold"):
        apply_edit(scene, "remove the blue circle")
    with pytest.raises(ValueError, match="share a cell"):
        apply_edit(scene, "move the red circle to the center")
    with pytest.raises(ValueError, match="1 to 3 objects, got 0"):
        apply_edit(make_scene(scene.objects[:1]), "remove the red circle")
