"""Questions about a scene with their true answers (spec "Questions and their answers")."""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from panglot.world.language import QUESTIONS, count_word, object_phrase, parse_caption, question
from panglot.world.scene import POSITIONS, Obj, Scene
from panglot.world.splits import allowed_pairs

KINDS = ("color", "shape_at", "count", "exists", "where", "size")
MARKS = ("yes", "no")  # what ``marked_caption`` writes after an object phrase the question is / is not about


class QA(NamedTuple):
    kind: str  # one of KINDS
    question: str
    answer: str  # a single word or a canonical phrase


def all_questions(scene: Scene, split: str = "train") -> list[QA]:
    """Every question of every kind about ``scene``, in a fixed order.

    ``exists`` gets one ``yes`` per object and ``no`` distractors: every pair that shares the colour or the
    shape of an object but is not in the scene, restricted to the pairs ``split`` may name (so a training
    question never names a held-out pair). ``shape_at`` also asks about every empty cell (``nothing``).
    """
    present = {o.pair for o in scene.objects}
    shapes = [o.shape for o in scene.objects]
    qas = [
        QA("color", question("color", shape=o.shape), o.color) for o in scene.objects if shapes.count(o.shape) == 1
    ]
    for position in POSITIONS:
        obj = scene.at(position)
        qas.append(QA("shape_at", question("shape_at", position=position), obj.shape if obj else "nothing"))
    qas.append(QA("count", question("count"), count_word(len(scene))))
    qas += [QA("exists", question("exists", color=o.color, shape=o.shape), "yes") for o in scene.objects]
    colors, shapes_in = {c for c, _ in present}, {s for _, s in present}
    qas += [
        QA("exists", question("exists", color=c, shape=s), "no")
        for c, s in allowed_pairs(split)
        if (c, s) not in present and (c in colors or s in shapes_in)
    ]
    for o in scene.objects:
        qas.append(QA("where", question("where", color=o.color, shape=o.shape), o.position))
        qas.append(QA("size", question("size", color=o.color, shape=o.shape), o.size))
    return qas


def questions(
    scene: Scene, rng: np.random.Generator, k: int | None = None, split: str = "train", balance_positions: bool = False
) -> list[QA]:
    """A random, kind-balanced selection of ``k`` questions about ``scene`` (all of them when None).

    Kinds are visited round-robin in a random order, so a small ``k`` still mixes kinds; ``exists`` draws
    ``yes`` and ``no`` alternately. ``split`` restricts ``no`` distractors (see :func:`all_questions`).
    ``balance_positions`` (training only; the evaluation asks as drawn) has ``shape_at`` draw occupied and empty
    cells alternately too, where drawn as they come 6-8 of its 9 cells are empty and ``nothing`` is the answer.
    """
    qas = all_questions(scene, split)
    if k is None:
        return qas
    pools = [[qa for qa in qas if qa.kind == kind] for kind in KINDS]
    pools[KINDS.index("exists")] = _interleave_yes_no(pools[KINDS.index("exists")], rng)
    if balance_positions:
        at = pools[KINDS.index("shape_at")]
        pools[KINDS.index("shape_at")] = _interleave(
            [qa for qa in at if qa.answer != "nothing"], [qa for qa in at if qa.answer == "nothing"], rng
        )
    for kind, pool in zip(KINDS, pools):
        if kind != "exists" and (kind != "shape_at" or not balance_positions):
            rng.shuffle(pool)
    chosen: list[QA] = []
    order = [pools[i] for i in rng.permutation(len(KINDS))]
    while len(chosen) < k and any(order):
        for pool in order:
            if pool and len(chosen) < k:
                chosen.append(pool.pop(0))
    return chosen


_SLOT = {"color": r"(?P<color>[a-z]+)", "shape": r"(?P<shape>[a-z]+)", "position": r"(?P<position>[a-z ]+)"}
_PATTERNS = {
    kind: re.compile(re.escape(template).replace(r"\{", "{").replace(r"\}", "}").replace(r"\ ", " ").format(**_SLOT))
    for kind, template in QUESTIONS.items()
}


def named(qa: QA) -> dict[str, str]:
    """The object fields a question names: ``{"color": "red", "shape": "cross"}`` for "is there a red cross?",
    ``{"position": "top left"}`` for ``shape_at``, ``{}`` for ``count`` (it is about every object)."""
    match = _PATTERNS[qa.kind].fullmatch(qa.question)
    if match is None:
        raise ValueError(f"{qa.question!r} is not a canonical {qa.kind!r} question ({QUESTIONS[qa.kind]!r})")
    return match.groupdict()


def refers(qa: QA, obj: Obj) -> bool:
    """Whether ``obj`` has every field the question names (``count`` refers to every object)."""
    return all(getattr(obj, field) == value for field, value in named(qa).items())


def mark(qa: QA, obj: Obj) -> str:
    """The mark a marked caption writes after ``obj``'s phrase: ``MARKS[0]`` if the question is about it."""
    return MARKS[0] if refers(qa, obj) else MARKS[1]


def marked_caption(scene: Scene, qa: QA) -> str:
    """The caption with ``yes`` or ``no`` after each object phrase: whether the question is about that object.

    "is there a red cross?" about a large blue triangle at the top left and a small red cross at the top reads
    ``a large blue triangle at the top left no and a small red cross at the top yes``. A model that writes this
    before it answers (``data.vqa_description: marked``) turns each lookup into a comparison next to the phrase it
    has just written, and the answer into a read of the ``yes`` phrase (or of there being none).
    """
    return " and ".join(f"{object_phrase(o)} {mark(qa, o)}" for o in scene.objects)


def field_marked_caption(scene: Scene, qa: QA) -> str:
    """``marked_caption`` with, where the question names two fields, a mark after each of them too: "is there a red
    cross?" about a large blue cross at the top reads ``a large blue no cross yes at the top no``. Each field mark
    asks only whether the word just written is the one the question names (a match of one word against the
    question), and the object's mark is then the conjunction of the two marks just before it, where
    ``marked_caption`` asks for both comparisons at once. Questions naming one field (or none) mark as
    ``marked_caption`` does."""
    fields = named(qa)
    if len(fields) < 2:
        return marked_caption(scene, qa)
    phrases = []
    for o in scene.objects:
        words = {
            name: f"{getattr(o, name)} {MARKS[0] if getattr(o, name) == value else MARKS[1]}" for name, value in fields.items()
        }
        color, shape = words.get("color", o.color), words.get("shape", o.shape)
        position = words.get("position", o.position)
        phrases.append(f"a {o.size} {color} {shape} at the {position} {mark(qa, o)}")
    return " and ".join(phrases)


def _interleave_yes_no(pool: list[QA], rng: np.random.Generator) -> list[QA]:
    return _interleave([qa for qa in pool if qa.answer == "yes"], [qa for qa in pool if qa.answer == "no"], rng)


def _interleave(yes: list[QA], no: list[QA], rng: np.random.Generator) -> list[QA]:
    """Both lists shuffled, then alternating from a random first one (the longer one's rest at the end)."""
    rng.shuffle(yes)
    rng.shuffle(no)
    first, second = (yes, no) if rng.integers(2) else (no, yes)
    mixed = [qa for pair in zip(first, second) for qa in pair]
    return mixed + first[len(second) :] + second[len(first) :]


MARKINGS = {"marked": marked_caption, "fields": field_marked_caption}  # data.vqa_description -> its marked caption


def question_kind(text: str) -> str | None:
    """The kind of a canonical question (one of ``KINDS``), None for any other text."""
    return next((kind for kind, pattern in _PATTERNS.items() if pattern.fullmatch(text)), None)


def marked_description(caption: str, question: str, marking: str) -> str | None:
    """What a run trained on ``marking`` (a key of ``MARKINGS``) writes before answering ``question`` about the
    scene ``caption`` describes: the caption with its marks; None where the caption does not parse or the question
    is not canonical. ``Panglot.explain`` uses where the marks stand (the model writes their values itself)."""
    kind = question_kind(question)
    if kind is None:
        return None
    try:
        scene = parse_caption(caption)
    except ValueError:
        return None
    return MARKINGS[marking](scene, QA(kind, question, ""))
