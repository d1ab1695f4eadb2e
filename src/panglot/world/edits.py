"""Edit instructions (image + instruction -> edited image), spec "Edit instructions".

Every edit generated here turns a valid scene into a valid scene: 1 to 3 objects, one per cell, no
duplicate colour-shape pair, and no held-out pair in a split that must not show one.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from panglot.world.language import INSTRUCTIONS, instruction
from panglot.world.scene import COLORS, POSITIONS, SHAPES, SIZES, Obj, Scene, make_scene
from panglot.world.splits import allowed_pairs, random_object

KINDS = ("recolor", "resize", "move", "remove", "add")


class Edit(NamedTuple):
    kind: str  # one of KINDS
    instruction: str
    source: Scene
    target: Scene


def _candidates(scene: Scene, split: str) -> dict[str, list[tuple]]:
    """The arguments of every valid edit, by kind (cheap: nothing is built yet).

    recolor (obj, colour2) · resize (obj, size2) · move (obj, position) · remove (obj,) ·
    add (colour, shape, position).
    """
    allowed = set(allowed_pairs(split))
    present = {o.pair for o in scene.objects}
    empty = [p for p in POSITIONS if scene.at(p) is None]
    objects = scene.objects
    return {
        "recolor": [
            (o, c) for o in objects for c in COLORS if (c, o.shape) not in present and (c, o.shape) in allowed
        ],
        "resize": [(o, s) for o in objects for s in SIZES if s != o.size],
        "move": [(o, p) for o in objects for p in empty],
        "remove": [(o,) for o in objects] if len(objects) > 1 else [],  # a scene keeps one object
        "add": [(c, s, p) for c, s in allowed if (c, s) not in present for p in empty] if len(objects) < 3 else [],
    }


def _build(kind: str, scene: Scene, args: tuple, rng: np.random.Generator) -> Edit:
    """The edit of ``kind`` with candidate ``args``; moved and added objects get a random jitter."""
    if kind == "add":
        color, shape, position = args
        new = random_object(rng, (color, shape), position)
        text = instruction("add", size=new.size, color=color, shape=shape, position=position)
        return Edit(kind, text, scene, make_scene([*scene.objects, new]))
    obj, *rest = args
    ref = {"color": obj.color, "shape": obj.shape}
    if kind == "remove":
        return Edit(kind, instruction(kind, **ref), scene, make_scene(o for o in scene.objects if o is not obj))
    if kind == "recolor":
        text, new = instruction(kind, color2=rest[0], **ref), replace(obj, color=rest[0])
    elif kind == "resize":
        text, new = instruction(kind, size2=rest[0], **ref), replace(obj, size=rest[0])
    else:  # move
        moved = random_object(rng, obj.pair, rest[0])
        text, new = instruction(kind, position=rest[0], **ref), replace(moved, size=obj.size)
    return Edit(kind, text, scene, _swap(scene, obj, new))


def _swap(scene: Scene, old: Obj, new: Obj) -> Scene:
    return make_scene(new if o is old else o for o in scene.objects)


def all_edits(scene: Scene, rng: np.random.Generator, split: str) -> list[Edit]:
    """Every valid edit of ``scene`` (``rng`` draws jitter and size of moved/added objects)."""
    return [_build(kind, scene, args, rng) for kind, cands in _candidates(scene, split).items() for args in cands]


def edits(scene: Scene, rng: np.random.Generator, split: str, per_kind: int = 1) -> list[Edit]:
    """Up to ``per_kind`` random valid edits of each kind (a kind with no valid edit is skipped).

    ``split`` decides which colour-shape pairs a recolour or an addition may introduce: never a held-out
    pair outside ``test-unseen``.
    """
    chosen = []
    for kind, cands in _candidates(scene, split).items():
        picks = rng.choice(len(cands), size=min(per_kind, len(cands)), replace=False)
        chosen += [_build(kind, scene, cands[i], rng) for i in sorted(picks)]
    return chosen


def _slot_pattern(slot: str) -> str:
    words = {"color": COLORS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}[slot.rstrip("2")]
    return f"(?P<{slot}>{'|'.join(sorted(words, key=len, reverse=True))})"


_PATTERNS = {
    kind: re.compile(re.sub(r"\{(\w+)\}", lambda m: _slot_pattern(m.group(1)), template))
    for kind, template in INSTRUCTIONS.items()
}


def parse_instruction(text: str) -> tuple[str, dict[str, str]]:
    """(kind, slots) of a canonical edit instruction; tolerant of case, spacing and a trailing period."""
    clean = " ".join(text.strip().lower().removesuffix(".").split())
    for kind, pattern in _PATTERNS.items():
        match = pattern.fullmatch(clean)
        if match:
            return kind, match.groupdict()
    raise ValueError(f"not a canonical edit instruction: {text!r}; expected one of {list(INSTRUCTIONS.values())}")


def apply_edit(scene: Scene, text: str) -> Scene:
    """The scene a canonical instruction turns ``scene`` into (moved/added objects get jitter 0).

    Raises ``ValueError`` when the text is not an instruction, names an object the scene does not hold,
    or the result would break a scene rule.
    """
    kind, slots = parse_instruction(text)
    if kind == "add":
        return make_scene([*scene.objects, Obj(slots["shape"], slots["color"], slots["size"], slots["position"])])
    obj = scene.find(slots["color"], slots["shape"])
    if obj is None:
        raise ValueError(f"{text!r} names the {slots['color']} {slots['shape']}, which the scene does not hold")
    if kind == "remove":
        return make_scene(o for o in scene.objects if o is not obj)
    if kind == "recolor":
        new = replace(obj, color=slots["color2"])
    elif kind == "resize":
        new = replace(obj, size=slots["size2"])
    else:  # move
        new = replace(obj, position=slots["position"], jitter=(0, 0))
    return _swap(scene, obj, new)
