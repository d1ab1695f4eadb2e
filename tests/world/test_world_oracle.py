import itertools

import numpy as np
import pytest

from panglot.world.oracle import classify_pixels, label_components, parse_image, parse_images
from panglot.world.render import render
from panglot.world.scene import COLORS, POSITIONS, SHAPES, SIZES, Obj, Scene, make_scene, scene_errors
from panglot.world.splits import SPLITS, sample_scene


def jitters(scene: Scene) -> tuple:
    return tuple(o.jitter for o in scene.objects)


def test_exact_on_10000_clean_renders_of_every_split():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, SPLITS[i % 4], n_objects=1 + i % 3) for i in range(10_000)]
    parsed = parse_images(np.stack([render(s) for s in scenes]))
    wrong = [(s, p) for s, p in zip(scenes, parsed) if p != s or jitters(p) != jitters(s)]
    assert not wrong, f"{len(wrong)} wrong, first: {wrong[0]}"
    assert {j for s in scenes for o in s.objects for j in o.jitter} == {-2, -1, 0, 1, 2}


def test_exact_on_every_single_object_layout():
    objs = [
        Obj(shape, "gray", size, pos, (dx, dy))
        for shape, size, pos in itertools.product(SHAPES, SIZES, POSITIONS)
        for dx, dy in itertools.product(range(-2, 3), repeat=2)
    ]
    scenes = [make_scene([o]) for o in objs]
    parsed = parse_images(np.stack([render(s) for s in scenes]))
    assert [jitters(p) for p in parsed] == [jitters(s) for s in scenes]
    assert parsed == scenes


def test_parse_image_matches_batch_and_every_colour_is_recognised():
    scene = make_scene(
        Obj("square", color, "small", pos) for color, pos in zip(list(COLORS)[:3], ("top", "left", "bottom"))
    )
    assert parse_image(render(scene)) == scene
    for color in COLORS:
        one = make_scene([Obj("cross", color, "large", "center")])
        assert parse_image(render(one)) == one


def test_specks_and_far_colours_are_background():
    scene = make_scene([Obj("circle", "red", "large", "center")])
    img = render(scene)
    img[2:4, 2:4] = COLORS["blue"]  # a 4-pixel speck
    img[50:60, 2:12] = (0, 0, 0)  # black is far from every palette colour
    assert parse_image(img) == scene
    assert classify_pixels(np.array([[0, 0, 0], [255, 255, 255], [225, 45, 35]], np.uint8)).tolist() == [
        8,
        8,
        0,
    ]


def test_labelling_separates_touching_colours_and_joins_snakes():
    cls = np.full((1, 8, 8), 8, np.uint8)
    cls[0, :, 0] = 1
    cls[0, 7, :] = 1  # an L of class 1
    cls[0, :7, 1] = 2  # touching class-2 column
    lab = label_components(cls)[0]
    assert len(np.unique(lab[cls[0] == 1])) == 1
    assert len(np.unique(lab[cls[0] == 2])) == 1
    assert lab[0, 0] != lab[0, 1]
    assert (lab[cls[0] == 8] == -1).all()


def test_noisy_images_parse_without_crashing():
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, "train") for _ in range(50)]
    clean = np.stack([render(s) for s in scenes])
    noisy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
    assert parse_images(noisy) == scenes  # mild noise does not change the judgement
    for img in rng.integers(0, 256, (20, 64, 64, 3), dtype=np.uint8):
        assert isinstance(parse_image(img), Scene)


def test_rule_breaking_images_return_an_unvalidated_scene():
    img = np.full((64, 64, 3), 255, np.uint8)
    img[2:8, 2:20] = COLORS["red"]  # a flat, non-square box
    img[12:20, 12:20] = COLORS["green"]  # second object in the same cell
    img[40:49, 40:49] = COLORS["red"]  # a red square ...
    img[40:49, 52:61] = COLORS["red"]  # ... twice
    parsed = parse_image(img)
    assert len(parsed) == 4
    assert [o.position for o in parsed.objects] == ["top left", "top left", "bottom right", "bottom right"]
    assert scene_errors(parsed.objects)
    assert parse_image(np.full((64, 64, 3), 255, np.uint8)) == Scene(())


def test_bad_input_names_expected_shape():
    with pytest.raises(ValueError, match=r"\(64, 64, 3\).*float"):
        parse_image(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(B, 64, 64, 3\)"):
        parse_images(np.zeros((64, 64, 3), np.uint8))


def test_batch_parse_equals_one_by_one_on_heavy_noise():
    rng = np.random.default_rng(2)
    clean = np.stack([render(sample_scene(rng, "test-unseen")) for _ in range(40)])
    noisy = np.clip(clean + rng.normal(0, 45, clean.shape), 0, 255).astype(np.uint8)
    batch = parse_images(noisy)
    assert [jitters(s) for s in batch] == [jitters(parse_image(img)) for img in noisy]
    assert batch == [parse_image(img) for img in noisy]
    assert sum(len(s) for s in batch) > 0
