"""ShapesWorld: scenes, language, renderer, oracle (see shared/specs/shapesworld.md)."""

from panglot.world.dataset import Example, iter_examples, make_example, make_examples, split_scenes
from panglot.world.edits import Edit, all_edits, apply_edit, edits, parse_instruction
from panglot.world.language import caption, instruction, object_phrase, paraphrase, parse_caption, question
from panglot.world.oracle import parse_image, parse_images
from panglot.world.render import render, render_batch, shape_mask
from panglot.world.scene import (
    COLORS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    cell_center,
    cell_of,
    make_scene,
    scene_errors,
)
from panglot.world.splits import SPLITS, allowed_pairs, sample_scene
from panglot.world.vqa import QA, all_questions, questions

__all__ = [
    "COLORS",
    "HELD_OUT",
    "POSITIONS",
    "QA",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Edit",
    "Example",
    "Obj",
    "Scene",
    "all_edits",
    "all_questions",
    "allowed_pairs",
    "apply_edit",
    "caption",
    "cell_center",
    "cell_of",
    "edits",
    "instruction",
    "iter_examples",
    "make_example",
    "make_examples",
    "make_scene",
    "object_phrase",
    "paraphrase",
    "parse_caption",
    "parse_image",
    "parse_images",
    "parse_instruction",
    "question",
    "questions",
    "render",
    "render_batch",
    "sample_scene",
    "scene_errors",
    "shape_mask",
    "split_scenes",
]
