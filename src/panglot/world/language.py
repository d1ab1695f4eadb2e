"""ShapesWorld language: the canonical grammar (spec "Canonical language"), its parser, and paraphrases.

Canonical text is what every model must understand and what answers are produced in. Paraphrases are
extra training wording only; nothing parses them.
"""

from __future__ import annotations

import numpy as np

from panglot.world.scene import COLORS, POSITIONS, SHAPES, SIZES, Obj, Scene, make_scene

NUMBER_WORDS = ("one", "two", "three")

# Question and edit-instruction templates, word for word from the spec; slots are the object's fields
# (``color``, ``shape``, ``size``, ``position``) plus ``color2`` / ``size2`` for edits.
QUESTIONS = {
    "color": "what color is the {shape}?",
    "shape_at": "what shape is at the {position}?",
    "count": "how many objects are there?",
    "exists": "is there a {color} {shape}?",
    "where": "where is the {color} {shape}?",
    "size": "what size is the {color} {shape}?",
}
INSTRUCTIONS = {
    "recolor": "make the {color} {shape} {color2}",
    "resize": "make the {color} {shape} {size2}",
    "move": "move the {color} {shape} to the {position}",
    "remove": "remove the {color} {shape}",
    "add": "add a {size} {color} {shape} at the {position}",
}


def count_word(n: int) -> str:
    """``one``, ``two`` or ``three``."""
    return NUMBER_WORDS[n - 1]


def object_phrase(obj: Obj) -> str:
    """``a {size} {colour} {shape} at the {position}``."""
    return f"a {obj.size} {obj.color} {obj.shape} at the {obj.position}"


def caption(scene: Scene) -> str:
    """The canonical caption: object phrases in reading order joined by ``and``."""
    objects = sorted(scene.objects, key=lambda o: POSITIONS.index(o.position))
    return " and ".join(object_phrase(o) for o in objects)


def question(kind: str, **slots: str) -> str:
    """Canonical question text of ``kind`` (a key of :data:`QUESTIONS`)."""
    return _fill(QUESTIONS, kind, slots)


def instruction(kind: str, **slots: str) -> str:
    """Canonical edit instruction of ``kind`` (a key of :data:`INSTRUCTIONS`)."""
    return _fill(INSTRUCTIONS, kind, slots)


def _fill(templates: dict[str, str], kind: str, slots: dict[str, str]) -> str:
    if kind not in templates:
        raise ValueError(f"unknown kind {kind!r}; expected one of {tuple(templates)}")
    return templates[kind].format(**slots)


# ---- parsing ---------------------------------------------------------------------------------------

_POSITION_WORDS = sorted((p.split() for p in POSITIONS), key=len, reverse=True)  # two-word names first


class _Words:
    """A cursor over the words of one caption that reports where parsing failed."""

    def __init__(self, text: str):
        self.text = text
        self.words = text.split()
        self.i = 0

    def fail(self, expected: str) -> ValueError:
        got = repr(self.words[self.i]) if self.i < len(self.words) else "the end of the caption"
        return ValueError(f"cannot parse caption {self.text!r}: expected {expected} at word {self.i + 1}, got {got}")

    def take(self, choices: tuple[str, ...], name: str = "") -> str:
        """The next word if it is one of ``choices``; ``name`` describes them in the error."""
        if self.i < len(self.words) and self.words[self.i] in choices:
            self.i += 1
            return self.words[self.i - 1]
        options = " / ".join(repr(c) for c in choices)
        raise self.fail(f"{name} ({options})" if name else options)

    def take_position(self) -> str:
        for words in _POSITION_WORDS:
            if self.words[self.i : self.i + len(words)] == words:
                self.i += len(words)
                return " ".join(words)
        raise self.fail(f"a position ({' / '.join(POSITIONS)})")

    def done(self) -> bool:
        return self.i == len(self.words)


def parse_caption(text: str) -> Scene:
    """Parse a canonical caption into a validated :class:`Scene` (jitter 0).

    Tolerates surrounding whitespace, upper case and a trailing period. Raises ``ValueError`` naming the
    first word that does not fit the grammar, or the scene rule the caption breaks.
    """
    clean = text.strip().lower()
    clean = clean.removesuffix(".").rstrip()
    words = _Words(clean)
    objects = []
    while True:
        words.take(("a",))
        size = words.take(tuple(SIZES), "a size")
        color = words.take(tuple(COLORS), "a colour")
        shape = words.take(SHAPES, "a shape")
        words.take(("at",))
        words.take(("the",))
        objects.append(Obj(shape, color, size, words.take_position()))
        if words.done():
            break
        words.take(("and",), "the end or")
    try:
        return make_scene(objects)
    except ValueError as err:
        raise ValueError(f"caption {text!r} describes an {err}") from None


# ---- paraphrases (training wording only) ---------------------------------------------------------------

_POSITION_VARIANTS = {"center": ("center", "centre", "middle")}
_OBJECT_TEMPLATES = (
    "a {size} {color} {shape} at the {position}",
    "a {size} {color} {shape} in the {position}",
    "{article} {color} {shape}, {size}, at the {position}",
    "{article} {color} {shape} of {size} size at the {position}",
)
_SCENE_TEMPLATES = ("{objects}", "there is {objects}", "an image of {objects}", "this picture shows {objects}")
_JOINERS = (" and ", ", ", ", and also ")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _paraphrase_object(obj: Obj, rng: np.random.Generator) -> str:
    position = _pick(rng, _POSITION_VARIANTS.get(obj.position, (obj.position,)))
    article = "an" if obj.color[0] in "aeiou" else "a"
    template = _pick(rng, _OBJECT_TEMPLATES)
    return template.format(size=obj.size, color=obj.color, shape=obj.shape, position=position, article=article)


def paraphrase(scene: Scene, rng: np.random.Generator) -> str:
    """A random non-canonical description of the scene (same objects, free wording and order)."""
    order = rng.permutation(len(scene.objects))
    parts = [_paraphrase_object(scene.objects[i], rng) for i in order]
    objects = parts[0] if len(parts) == 1 else _pick(rng, _JOINERS).join(parts)
    return _pick(rng, _SCENE_TEMPLATES).format(objects=objects)
