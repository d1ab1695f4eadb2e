"""A fixed, seeded ShapesWorld evaluation suite and the task runners that score a model on it.

The model is anything with the evaluation API (``panglot.model`` follows it)::

    draw(prompts: list[str], seed=0, cfg=None, n=1) -> list[PIL.Image]  # len(prompts) * n, grouped by prompt
    caption(images: list[PIL.Image]) -> list[str]
    ask(images: list[PIL.Image], questions: list[str]) -> list[str]      # one question per image

Runners pass whole lists of up to ``batch_size`` items per call (the model batches inside) and report
progress per call. Each returns a :class:`TaskResult`: JSON-ready metrics (see ``metrics.py``) and the
per-sample records the report draws from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from panglot.evaluation.metrics import (
    ALL,
    GROUPS,
    OBJECT_COUNTS,
    Breakdown,
    caption_correct,
    text_to_image_scores,
    vqa_correct,
)
from panglot.world import language, vqa
from panglot.world.oracle import parse_images
from panglot.world.render import render
from panglot.world.scene import CANVAS, Scene
from panglot.world.splits import SPLITS, sample_scene

# suite split -> the world split each group's scenes come from. ``val`` holds no held-out pair (only the
# test split does), so tuning on ``val`` sees ``seen`` prompts only and never peeks at ``unseen`` ones.
SUITE_SPLITS: dict[str, dict[str, str]] = {
    "val": {"seen": "val"},
    "test": {"seen": "test-seen", "unseen": "test-unseen"},
}
TASKS = ("t2i", "caption", "vqa")

Progress = Callable[[str, int, int], None]
"""Called as ``progress(task, done, total)`` before a task's first model call and after every call."""


class EvalModel(Protocol):
    def draw(
        self, prompts: list[str], seed: int = 0, cfg: float | None = None, n: int = 1
    ) -> list[Image.Image]: ...  # sweeps may also pass temperature= and candidates=, which a model may lack

    def caption(self, images: list[Image.Image]) -> list[str]: ...  # sweeps may also pass candidates=

    def ask(self, images: list[Image.Image], questions: list[str]) -> list[str]: ...


@dataclass(frozen=True)
class EvalItem:
    """One scene of the suite: its canonical prompt, clean image and questions."""

    group: str  # "seen" | "unseen"
    scene: Scene
    prompt: str  # canonical caption of the scene
    image: np.ndarray = field(repr=False)  # clean render (64, 64, 3) uint8
    qa: tuple[tuple[str, str, str], ...]  # (kind, question, answer)

    @property
    def n_objects(self) -> int:
        return len(self.scene)

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


class EvalSuite:
    """``n_per_cell`` scenes for each group (seen / unseen) and object count (1, 2, 3), each with
    ``questions_per_image`` kind-balanced questions (``world.vqa.questions``).

    ``split="test"``: seen scenes from ``test-seen``, unseen from ``test-unseen``; ``split="val"``: seen
    scenes from ``val`` only (for tuning). Fully determined by ``(split, n_per_cell, seed)``: each cell
    draws scenes and questions from its own seeded stream, so a larger ``n_per_cell`` extends every
    cell without changing its first items. Items are ordered by group, then object count.
    """

    def __init__(
        self, split: str = "test", n_per_cell: int = 50, seed: int = 0, questions_per_image: int = 6
    ) -> None:
        if split not in SUITE_SPLITS:
            raise ValueError(f"unknown suite split {split!r}; expected one of {tuple(SUITE_SPLITS)}")
        if n_per_cell < 1 or questions_per_image < 1:
            raise ValueError(
                f"n_per_cell and questions_per_image must be at least 1, got {n_per_cell} and {questions_per_image}"
            )
        self.split, self.n_per_cell, self.seed = split, n_per_cell, seed
        self.questions_per_image = questions_per_image
        self.items: tuple[EvalItem, ...] = tuple(
            item
            for group, source in SUITE_SPLITS[split].items()
            for n in OBJECT_COUNTS
            for item in _cell_items(group, source, n, n_per_cell, seed, questions_per_image)
        )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(SUITE_SPLITS[self.split])

    def describe(self) -> dict:
        return {
            "split": self.split,
            "n_per_cell": self.n_per_cell,
            "seed": self.seed,
            "questions_per_image": self.questions_per_image,
            "items": len(self),
        }


def _cell_items(
    group: str, source: str, n_objects: int, count: int, seed: int, k_questions: int
) -> list[EvalItem]:
    stream = [seed, SPLITS.index(source), n_objects]
    scene_rng = np.random.default_rng([*stream, 0])
    qa_rng = np.random.default_rng([*stream, 1])
    items = []
    for _ in range(count):
        scene = sample_scene(scene_rng, source, n_objects)
        qa = tuple(tuple(q) for q in vqa.questions(scene, qa_rng, k=k_questions, split=source))
        items.append(EvalItem(group, scene, language.caption(scene), render(scene), qa))
    return items


@dataclass(frozen=True)
class T2ISample:
    item: EvalItem
    image: np.ndarray = field(repr=False)  # generated (64, 64, 3) uint8
    parsed: Scene  # what the oracle saw in it (may break scene rules)
    scores: dict[str, float]

    @property
    def correct(self) -> bool:
        return self.scores["scene"] == 1.0


@dataclass(frozen=True)
class CaptionSample:
    item: EvalItem
    caption: str
    correct: bool


@dataclass(frozen=True)
class VQASample:
    item: EvalItem
    kind: str
    question: str
    answer: str
    predicted: str
    correct: bool


@dataclass
class TaskResult:
    metrics: dict  # JSON-ready
    samples: list = field(default_factory=list)


def _batches(n: int, batch_size: int, task: str, progress: Progress | None) -> Iterator[slice]:
    """Slices of at most ``batch_size`` over ``n`` items; reports progress before the first call and
    after each."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if progress is not None:
        progress(task, 0, n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield slice(start, stop)
        if progress is not None:
            progress(task, stop, n)


def _as_array(img: Image.Image | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    if arr.shape != (CANVAS, CANVAS, 3) or arr.dtype != np.uint8:
        raise ValueError(f"{what}: expected a 64 x 64 RGB image, got {arr.dtype} array of shape {arr.shape}")
    return arr


def _check_len(got: Sequence, want: int, what: str) -> None:
    if len(got) != want:
        raise ValueError(f"model.{what} returned {len(got)} results for {want} inputs")


def eval_text_to_image(
    m: EvalModel,
    suite: EvalSuite,
    cfg: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: Progress | None = None,
    temperature: float | None = None,
    candidates: int | None = None,
) -> TaskResult:
    """Draw every prompt once and judge the image with the oracle.

    A call for suite items ``start:stop`` passes ``seed + start``: with the API's per-row seeding (prompt
    ``i`` of a call samples with ``seed + i``) suite item ``k`` always draws with ``seed + k``, whatever
    ``batch_size`` is. ``temperature`` (sampling temperature) and ``candidates`` (best of K by the model's own
    reading) go to ``m.draw`` when given; None keeps the model's defaults.
    """
    sampling = {k: v for k, v in {"temperature": temperature, "candidates": candidates}.items() if v is not None}
    images: list[np.ndarray] = []
    for sl in _batches(len(suite), batch_size, "t2i", progress):
        prompts = [it.prompt for it in suite.items[sl]]
        drawn = m.draw(prompts, seed=seed + sl.start, cfg=cfg, n=1, **sampling)
        _check_len(drawn, len(prompts), "draw")
        images.extend(_as_array(img, "model.draw") for img in drawn)
    parsed = parse_images(np.stack(images))
    table, samples = Breakdown(), []
    for item, img, scene in zip(suite.items, images, parsed):
        scores = text_to_image_scores(item.scene, scene)
        table.add(item.group, item.n_objects, scores)
        samples.append(T2ISample(item, img, scene, scores))
    return TaskResult(table.table(), samples)


def eval_caption(
    m: EvalModel,
    suite: EvalSuite,
    batch_size: int = 64,
    progress: Progress | None = None,
    candidates: int | None = None,
) -> TaskResult:
    """Caption every clean image; right when the caption parses into exactly the true scene. ``candidates`` goes
    to ``m.caption`` when given (1: the greedy caption)."""
    reading = {} if candidates is None else {"candidates": candidates}
    captions: list[str] = []
    for sl in _batches(len(suite), batch_size, "caption", progress):
        images = [it.pil() for it in suite.items[sl]]
        out = m.caption(images, **reading)
        _check_len(out, len(images), "caption")
        captions.extend(out)
    table, samples = Breakdown(), []
    for item, text in zip(suite.items, captions):
        correct = caption_correct(text, item.scene, language.parse_caption)
        table.add(item.group, item.n_objects, {"accuracy": float(correct)})
        samples.append(CaptionSample(item, text, correct))
    return TaskResult(table.table(), samples)


def eval_vqa(
    m: EvalModel, suite: EvalSuite, batch_size: int = 256, progress: Progress | None = None
) -> TaskResult:
    """Ask every question of every clean image; exact-match accuracy overall and per question kind."""
    pairs = [(item, qa) for item in suite.items for qa in item.qa]
    predicted: list[str] = []
    for sl in _batches(len(pairs), batch_size, "vqa", progress):
        images = [item.pil() for item, _ in pairs[sl]]
        questions = [question for _, (_, question, _) in pairs[sl]]
        out = m.ask(images, questions)
        _check_len(out, len(questions), "ask")
        predicted.extend(out)
    overall, per_kind, samples = Breakdown(), {}, []
    for (item, (kind, question, answer)), pred in zip(pairs, predicted):
        correct = vqa_correct(pred, answer)
        overall.add(item.group, item.n_objects, {"accuracy": float(correct)})
        per_kind.setdefault(kind, Breakdown()).add(item.group, item.n_objects, {"accuracy": float(correct)})
        samples.append(VQASample(item, kind, question, answer, pred, correct))
    metrics = {**overall.table(), "per_kind": {k: b.table() for k, b in sorted(per_kind.items())}}
    return TaskResult(metrics, samples)


def run_tasks(
    m: EvalModel,
    suite: EvalSuite,
    tasks: Sequence[str] = TASKS,
    cfg: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    sampling: Mapping[str, float] | None = None,
) -> dict[str, TaskResult]:
    """Run the named tasks (any of ``t2i``, ``caption``, ``vqa``) and keep their samples; ``sampling``
    (``temperature``, ``candidates``) goes to the drawing."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; expected any of {TASKS}")
    runners: dict[str, Callable[[], TaskResult]] = {
        "t2i": lambda: eval_text_to_image(m, suite, cfg=cfg, seed=seed, progress=progress, **(sampling or {})),
        "caption": lambda: eval_caption(m, suite, progress=progress),
        "vqa": lambda: eval_vqa(m, suite, progress=progress),
    }
    return {t: runners[t]() for t in tasks}


def evaluate(
    m: EvalModel,
    suite: EvalSuite,
    tasks: Sequence[str] = TASKS,
    cfg: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """JSON-ready metrics of every task: ``{"suite": {...}, "t2i": {"seen": {"1": {...}, ..., "all":
    {...}}, "unseen": ..., "all": ...}, "caption": ..., "vqa": {..., "per_kind": {kind: ...}}}``."""
    results = run_tasks(m, suite, tasks, cfg=cfg, seed=seed, progress=progress)
    return {"suite": suite.describe(), **{t: r.metrics for t, r in results.items()}}


def cfg_sweep(
    m: EvalModel,
    suite: EvalSuite,
    scales: Sequence[float],
    seed: int = 0,
    progress: Progress | None = None,
    temperature: float | None = None,
    candidates: int | None = None,
    known: Mapping[float, dict] | None = None,
) -> dict:
    """Text-to-image figures at each CFG scale (same seeds for every scale), at ``temperature`` and
    ``candidates`` (None: the model's defaults). ``known``: figures already measured at some of the scales on the
    same suite, seed and sampling, used instead of drawing them again.

    Returns ``{"scales": [...], "t2i": [metrics per scale], "best_scale": s}`` (and ``"temperature"``,
    ``"candidates"`` when given); ``best_scale`` has the highest overall scene accuracy (the smallest such scale
    on ties).
    """
    if not scales:
        raise ValueError("cfg_sweep needs at least one scale")
    sampling = {k: v for k, v in {"temperature": temperature, "candidates": candidates}.items() if v is not None}
    known = known or {}
    def at(scale: float) -> dict:
        if scale in known:
            return known[scale]
        return eval_text_to_image(m, suite, cfg=scale, seed=seed, progress=progress, **sampling).metrics

    runs = [at(s) for s in scales]
    best = max(range(len(scales)), key=lambda i: (runs[i][ALL]["scene"], -scales[i]))
    return {"scales": [float(s) for s in scales], "t2i": runs, "best_scale": float(scales[best]), **sampling}


def sampling_sweep(
    m: EvalModel,
    suite: EvalSuite,
    scales: Sequence[float],
    temperatures: Sequence[float],
    seed: int = 0,
    progress: Progress | None = None,
    candidates: int | None = None,
) -> dict:
    """Text-to-image figures over the grid of CFG scales x sampling temperatures (same seeds in every cell): a
    :func:`cfg_sweep` per temperature (at ``candidates``, None: the model's default).

    Returns ``{"temperatures": [...], "sweeps": [cfg_sweep result per temperature], "best_scale": s,
    "best_temperature": t}``: the pair with the highest overall scene accuracy; on ties the smaller scale, then
    the higher temperature (the less the sampling is bent, the better).
    """
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"sampling_sweep needs temperatures > 0, got {list(temperatures)}")
    sweeps = [
        cfg_sweep(m, suite, scales, seed=seed, progress=progress, temperature=t, candidates=candidates)
        for t in temperatures
    ]
    _, neg_scale, temperature = max(
        (run[ALL]["scene"], -scale, sweep["temperature"])
        for sweep in sweeps
        for scale, run in zip(sweep["scales"], sweep["t2i"], strict=True)
    )
    return {
        "temperatures": [float(t) for t in temperatures],
        "sweeps": sweeps,
        "best_scale": -neg_scale,
        "best_temperature": temperature,
    }


def sweep_series(sweep: dict, group: str, cell: str, figure: str = "scene") -> list[float | None]:
    """One curve of a :func:`cfg_sweep` result: ``figure`` per scale for (``group``, ``cell``), where
    ``group`` is ``seen``, ``unseen`` or ``all`` and ``cell`` is ``1``-``3`` or ``all``; None where empty."""
    if group not in (*GROUPS, ALL):
        raise ValueError(f"unknown group {group!r}; expected one of {(*GROUPS, ALL)}")
    out = []
    for run in sweep["t2i"]:
        table = run.get(group, {})
        row = table if group == ALL else table.get(cell)
        out.append(None if row is None else row[figure])
    return out


def tqdm_progress() -> Progress:
    """A :data:`Progress` callback that shows one tqdm bar per task."""
    bars: dict[str, tqdm] = {}

    def update(task: str, done: int, total: int) -> None:
        bar = bars.get(task)
        if bar is None:
            bar = bars[task] = tqdm(total=total, desc=task, unit="item")
        bar.update(done - bar.n)
        if done >= total:
            bars.pop(task).close()

    return update
