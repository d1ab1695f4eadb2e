"""ShapesWorld metrics (spec "Metrics"): pure functions of scenes and strings, and their breakdown.

Every figure is reported per group (``seen`` / ``unseen`` prompts) and per object count (1, 2, 3), which
:class:`Breakdown` does: add one record per sample, read a nested, JSON-ready table of means and counts.

Definitions
-----------
- **scene accuracy** (text-to-image, editing): the parsed scene equals the target scene exactly: the same
  objects with every attribute (shape, colour, size, position), nothing missing and nothing extra; jitter
  is ignored. A generated image may break scene rules (two objects in a cell, ...); it is then simply wrong.
- **attribute accuracy** (text-to-image): prompt objects are matched one-to-one to parsed objects so that
  the total number of agreeing attributes is the largest possible (ties go to the earlier parsed object in
  reading order). For each attribute, the share of prompt objects whose match agrees on it; a prompt object
  left without a match (fewer parsed objects than prompt objects) is wrong on every attribute. ``object``
  is the share of prompt objects whose match agrees on all four; ``count`` whether the image holds exactly
  as many objects as the prompt. Matching by best agreement rather than by cell keeps ``position``
  meaningful (a right object in the wrong cell is wrong on position only).
- **caption accuracy**: the caption parses by the canonical grammar into exactly the true scene;
  an unparsable caption is wrong.
- **VQA accuracy**: exact match of the answer word after :func:`normalize_answer` (case, surrounding
  spaces and one trailing ``.``, ``!`` or ``?`` are not part of the answer).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

from panglot.world.scene import Obj, Scene

ATTRIBUTES = ("shape", "color", "size", "position")
GROUPS = ("seen", "unseen")
OBJECT_COUNTS = (1, 2, 3)
ALL = "all"


def scene_equal(parsed: Scene, target: Scene) -> bool:
    """True when ``parsed`` holds exactly the objects of ``target`` (order and jitter ignored)."""
    return Counter(parsed.objects) == Counter(target.objects)


def _agreement(a: Obj, b: Obj) -> int:
    return sum(getattr(a, k) == getattr(b, k) for k in ATTRIBUTES)


def match_objects(target: Scene, parsed: Scene) -> list[Obj | None]:
    """For each target object, its one-to-one match among the parsed objects (None when none is left).

    Maximises the total number of agreeing attributes exactly: a dynamic programme over the parsed
    objects with the set of already matched target objects as state (targets hold at most 3 objects).
    """
    n = len(target.objects)
    # best[mask] = (score, assignment) using the parsed objects seen so far; mask = matched targets
    best: dict[int, tuple[int, tuple[int, ...]]] = {0: (0, (-1,) * n)}
    for j, p in enumerate(parsed.objects):
        nxt = dict(best)
        for mask, (score, assign) in best.items():
            for i, t in enumerate(target.objects):
                if mask & (1 << i):
                    continue
                cand = (score + _agreement(t, p), (*assign[:i], j, *assign[i + 1 :]))
                key = mask | (1 << i)
                if key not in nxt or cand[0] > nxt[key][0]:
                    nxt[key] = cand
        best = nxt
    top = max(score for score, _ in best.values())
    # among the best scores, prefer matching more targets, then earlier parsed objects
    _, assign = min(
        (v for v in best.values() if v[0] == top),
        key=lambda v: (sum(a < 0 for a in v[1]), v[1]),
    )
    return [parsed.objects[a] if a >= 0 else None for a in assign]


def attribute_accuracy(target: Scene, parsed: Scene) -> dict[str, float]:
    """Per-image attribute figures (module docstring): ``shape``, ``color``, ``size``, ``position`` and
    ``object`` as shares of the target's objects, ``count`` as 0/1."""
    matches = match_objects(target, parsed)
    n = len(target.objects)
    out = {
        k: sum(m is not None and getattr(m, k) == getattr(t, k) for t, m in zip(target.objects, matches)) / n
        for k in ATTRIBUTES
    }
    out["object"] = sum(m is not None and _agreement(t, m) == 4 for t, m in zip(target.objects, matches)) / n
    out["count"] = float(len(parsed.objects) == n)
    return out


def text_to_image_scores(target: Scene, parsed: Scene) -> dict[str, float]:
    """All text-to-image figures of one generated image: ``scene`` (0/1) and :func:`attribute_accuracy`."""
    return {"scene": float(scene_equal(parsed, target)), **attribute_accuracy(target, parsed)}


def caption_correct(caption: str, truth: Scene, parse_caption: Callable[[str], Scene]) -> bool:
    """True when ``caption`` parses (``parse_caption`` raises ``ValueError`` otherwise) into ``truth``."""
    try:
        parsed = parse_caption(caption)
    except ValueError:
        return False
    return scene_equal(parsed, truth)


def normalize_answer(answer: str) -> str:
    answer = answer.strip().lower()
    if answer[-1:] in (".", "!", "?"):
        answer = answer[:-1].rstrip()
    return answer


def vqa_correct(predicted: str, answer: str) -> bool:
    return normalize_answer(predicted) == normalize_answer(answer)


def edit_correct(parsed: Scene, expected: Scene) -> bool:
    """An edit is right when the edited image parses into exactly the expected scene."""
    return scene_equal(parsed, expected)


class Breakdown:
    """Means of per-sample figures by (group, object count), with counts.

    ``add("seen", 2, {"scene": 1.0})`` records one sample; :meth:`table` gives
    ``{"seen": {"1": {"scene": .., "n": 40}, "2": .., "3": .., "all": ..}, "unseen": .., "all": ..}``
    where ``n`` is the number of samples and ``all`` cells average over every sample they hold. Cells
    with no sample are left out. Every sample must carry the same figures.
    """

    def __init__(self) -> None:
        self._sums: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._counts: Counter[tuple[str, int]] = Counter()
        self._names: tuple[str, ...] | None = None

    def add(self, group: str, n_objects: int, values: Mapping[str, float]) -> None:
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; expected one of {GROUPS}")
        if n_objects not in OBJECT_COUNTS:
            raise ValueError(f"n_objects must be one of {OBJECT_COUNTS}, got {n_objects!r}")
        if self._names is None:
            self._names = tuple(values)
        elif set(values) != set(self._names):
            raise ValueError(f"figures {sorted(values)} differ from earlier samples' {sorted(self._names)}")
        sums = self._sums[group, n_objects]
        for k, v in values.items():
            sums[k] += float(v)
        self._counts[group, n_objects] += 1

    def __len__(self) -> int:
        return sum(self._counts.values())

    def _cell(self, keys: Iterable[tuple[str, int]]) -> dict[str, float] | None:
        keys = [k for k in keys if self._counts[k]]
        if not keys:
            return None
        n = sum(self._counts[k] for k in keys)
        cell = {name: sum(self._sums[k][name] for k in keys) / n for name in self._names}
        cell["n"] = n
        return cell

    def table(self) -> dict:
        out: dict = {}
        for group in GROUPS:
            cells = {str(n): self._cell([(group, n)]) for n in OBJECT_COUNTS}
            cells[ALL] = self._cell([(group, n) for n in OBJECT_COUNTS])
            cells = {k: v for k, v in cells.items() if v is not None}
            if cells:
                out[group] = cells
        total = self._cell(list(self._counts))
        if total is not None:
            out[ALL] = total
        return out
