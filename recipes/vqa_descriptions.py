"""Experiment: how right is what a describing run writes before its answers? (issue 3's VQA target)

    python recipes/vqa_descriptions.py runs/s17/ab_marks --scenes 60 --split test-seen [--from-caption]

For a run trained with ``model.vqa_describe`` (and, for marks, ``data.vqa_description=marked``), asks
``--per-scene`` kind-balanced questions about each of ``--scenes`` scenes and compares, per question kind, what
``Panglot.explain`` returns with the truth: ``description`` (the caption's words right, marks aside), ``marks``
(among right descriptions, every ``yes`` / ``no`` mark right; ``panglot.world.vqa.marked_caption``, or
``field_marked_caption`` for a run trained with ``data.vqa_description=fields``: the run's own ``marking``) and
``answer``. It tells a model that cannot see (wrong descriptions) from one that cannot compare (right descriptions,
wrong marks) from one that cannot read its own marks (right marks, wrong answer). Prints a table; ``--out FILE``
writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict

import numpy as np

import panglot
from panglot.evaluation.metrics import vqa_correct
from panglot.files import atomic_write_json
from panglot.world.dataset import make_example
from panglot.world.vqa import KINDS, MARKINGS, MARKS, marked_caption, questions


def _words(text: str, keep_marks: bool) -> list[str]:
    return [w for w in text.split() if (w in MARKS) == keep_marks]


def trained_marks(run):
    """The marked description ``run`` (a :class:`panglot.Panglot`) was trained to write (``DrawDefaults.marking``,
    which ``panglot.load`` reads from its recipe); ``marked`` for a plain caption, whose marks are then all wrong
    where it writes none."""
    return MARKINGS.get(run.defaults.marking, marked_caption)


def measure(
    run, split: str = "test-seen", scenes: int = 60, per_scene: int = 6, seed: int = 0, marker=marked_caption
) -> dict:
    """Per kind: ``n``, ``description``, ``marks`` (among right descriptions, ``None`` if none) and ``answer``
    accuracy of ``run`` (a :class:`panglot.Panglot`) on the questions about ``scenes`` scenes of ``split``; the true
    description is ``marker(scene, qa)``."""
    rng = np.random.default_rng(seed)
    images, asked, truth = [], [], []
    for i in range(scenes):
        ex = make_example(split, seed, i)
        for qa in questions(ex.scene, rng, k=per_scene, split=split):
            images.append(ex.image)
            asked.append(qa.question)
            truth.append((qa, marker(ex.scene, qa)))
    right = defaultdict(lambda: defaultdict(list))
    for (description, answer), (qa, true) in zip(run.explain(images, asked), truth, strict=True):
        seen = _words(description, False) == _words(true, False)
        right[qa.kind]["description"].append(seen)
        if seen:
            right[qa.kind]["marks"].append(_words(description, True) == _words(true, True))
        right[qa.kind]["answer"].append(vqa_correct(answer, qa.answer))
    out = {}
    for kind in (k for k in KINDS if k in right):
        figures = right[kind]
        out[kind] = {"n": len(figures["answer"])} | {
            name: (float(np.mean(figures[name])) if figures[name] else None) for name in ("description", "marks", "answer")
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--split", default="test-seen")
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--per-scene", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    parser.add_argument(
        "--from-caption", action=argparse.BooleanOptionalAction, default=None,
        help="describe with the run's own caption (DrawDefaults.answer_from_caption; default: the run's setting)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    run = panglot.load(args.run)
    marker = trained_marks(run)
    if args.from_caption is not None:
        run.defaults = dataclasses.replace(run.defaults, answer_from_caption=args.from_caption)
    figures = measure(run, args.split, args.scenes, args.per_scene, args.seed, marker)
    print(f"{'kind':<9} {'n':>4} {'description':>12} {'marks':>7} {'answer':>7}")
    for kind, f in figures.items():
        cells = [f"{f[name]:.1%}" if f[name] is not None else "-" for name in ("description", "marks", "answer")]
        print(f"{kind:<9} {f['n']:>4} {cells[0]:>12} {cells[1]:>7} {cells[2]:>7}")
    if args.out:
        atomic_write_json(args.out, {"run": args.run, "split": args.split, "figures": figures})
    return figures


if __name__ == "__main__":
    main()
