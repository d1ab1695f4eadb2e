"""Evaluate a model end to end: suite -> tasks -> (optional CFG sweep) -> ``metrics.json`` + report; tune a run's
drawing defaults on ``val``.

``evaluate_run(RUN)`` is what ``panglot eval RUN`` calls: it loads the run with ``panglot.load`` and
writes ``RUN/eval/`` (``report.md``, ``metrics.json``, figures; training curves from
``RUN/train/metrics.jsonl`` when the run has one). ``tune_sampling(m, RUN)`` is what ``panglot tune RUN`` and the
quickstart call: the guidance scale and temperature that draw ``val`` best become the run's defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import panglot
from panglot.evaluation.heldout import heldout_loss
from panglot.evaluation.metrics import ALL, GROUPS
from panglot.evaluation.report import write_report
from panglot.evaluation.suite import (
    TASKS,
    EvalModel,
    EvalSuite,
    cfg_sweep,
    run_tasks,
    sampling_sweep,
    tqdm_progress,
)
from panglot.files import atomic_write_json
from panglot.model.run import update_run_meta
from panglot.model.unified import UnifiedModel

if TYPE_CHECKING:
    from panglot.pipeline import Panglot

HEADLINE = {"t2i": "scene", "caption": "accuracy", "vqa": "accuracy"}  # task -> its headline figure
TRAIN_METRICS = Path("train") / "metrics.jsonl"
TUNING_FILE = "sampling_tuning.json"
# The grid `tune_sampling` searches by default. Scale 4 until session 13, which no recorded quickstart chose;
# the temperatures since then: the 2026-12-02 20:37 quickstart drew 39 % of test scenes right at its tuned scale
# 2.0 and temperature 1, 51-54 % at scale 1.5 and temperature 0.55-0.4 (docs/quickstart_results.md "Sampling
# temperature").
TUNE_SCALES = (1.0, 1.5, 2.0, 3.0)
TUNE_TEMPERATURES = (1.0, 0.7, 0.5, 0.35)

logger = logging.getLogger(__name__)


def headline(table: dict, figure: str) -> dict:
    """One figure of a per-group table, for each group present and overall: ``{"seen": .., "all": ..}``."""
    row = {g: table[g][ALL][figure] for g in GROUPS if g in table}
    row[ALL] = table[ALL][figure]
    return row


def summary(metrics: dict) -> dict:
    """Headline figures of :func:`~panglot.evaluation.suite.evaluate`'s result: per task present, the
    headline figure for each group and overall, e.g. ``{"t2i_scene": {"seen": .., "unseen": .., "all": ..}}``."""
    out = {}
    for task, figure in HEADLINE.items():
        if task in metrics:
            out[f"{task}_{figure}" if task == "t2i" else task] = headline(metrics[task], figure)
    if "heldout_loss" in metrics:
        out["heldout_loss"] = metrics["heldout_loss"]
    return out


def evaluate_model(
    m: EvalModel,
    out_dir: str | os.PathLike,
    suite: EvalSuite,
    tasks: Sequence[str] = TASKS,
    cfg: float | None = None,
    seed: int = 0,
    sweep_scales: Sequence[float] | None = None,
    sampling: Mapping[str, float] | None = None,
    metrics_jsonl: str | os.PathLike | None = None,
    title: str = "ShapesWorld evaluation",
    progress: bool = True,
    heldout: bool = True,
    sweep_sampling: Mapping[str, float] | None = None,
) -> dict:
    """Run ``tasks`` (and a CFG sweep over ``sweep_scales``) on ``suite`` and write the report into ``out_dir``.
    The drawings are made with ``sampling`` (``temperature``, ``candidates``; None: the model's defaults), the
    sweep's with ``sweep_sampling`` (None: ``sampling``, and then, with ``cfg`` given, the sweep takes the main
    figures at that scale instead of drawing it again); the sweep records its sampling. Returns the metrics (as in
    ``metrics.json``) with a ``summary`` of headline figures. With ``heldout`` and a unified model behind ``m``
    (``m.model``, as ``panglot.load`` gives), also the loss per task on `val` documents
    (``panglot.evaluation.heldout``), under ``heldout_loss``."""
    show = tqdm_progress() if progress else None
    results = run_tasks(m, suite, tasks, cfg=cfg, seed=seed, progress=show, sampling=sampling)
    sweep = None
    if sweep_scales:
        same = sweep_sampling is None and cfg is not None and "t2i" in results
        known = {float(cfg): results["t2i"].metrics} if same else {}
        drawn = sampling if sweep_sampling is None else sweep_sampling
        sweep = cfg_sweep(m, suite, sweep_scales, seed=seed, progress=show, known=known, **(drawn or {}))
    model = getattr(m, "model", None)
    losses = None
    if heldout and isinstance(model, UnifiedModel):
        defaults = getattr(m, "defaults", None)
        marking = getattr(defaults, "marking", "") or "caption"
        # a run that answers from its caption and drew no image VQA documents trained the lookup as vqa_text ones
        text_only = model.layout.vqa_describe and not getattr(defaults, "answer_with_image", True)
        held = tuple("vqa_text" if t == "vqa" and text_only else t for t in tasks)
        losses = heldout_loss(model, tasks=held, vqa_description=marking if model.layout.vqa_describe else "caption")
    write_report(
        out_dir,
        results,
        sweep=sweep,
        metrics_jsonl=metrics_jsonl,
        title=title,
        suite=suite.describe(),
        heldout=losses,
    )
    metrics = {"suite": suite.describe(), **{t: r.metrics for t, r in results.items()}}
    if sweep is not None:
        metrics["cfg_sweep"] = sweep
    if losses is not None:
        metrics["heldout_loss"] = losses
    metrics = {"summary": summary(metrics), **metrics}
    atomic_write_json(Path(out_dir) / "metrics.json", metrics, indent=2)  # the report's, with the summary
    return metrics


def evaluate_run(
    run_dir: str | os.PathLike,
    n_per_cell: int = 50,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    cfg: float | None = None,
    sweep_scales: Sequence[float] | None = None,
    device: str = "cpu",
    progress: bool = True,
    compile: bool = False,
    temperature: float | None = None,
    candidates: int | None = None,
) -> dict:
    """Load ``run_dir`` and evaluate it on the test suite (``n_per_cell`` scenes per seen/unseen x 1/2/3
    objects cell); writes into ``out_dir`` (default ``RUN/eval``). ``cfg``, ``temperature``, ``candidates``:
    None uses the run's drawing defaults (``panglot.pipeline.DrawDefaults``); ``sweep_scales=None`` sweeps scale 1
    and the scale evaluated (``[]``: no sweep), at that temperature and candidates; ``compile`` decodes with
    compiled steps (``panglot.load(..., compile=True)``)."""
    run_dir = Path(run_dir)
    m = panglot.load(run_dir, device=device, compile=compile)
    sampling = {k: v for k, v in {"temperature": temperature, "candidates": candidates}.items() if v is not None}
    m.defaults = dataclasses.replace(m.defaults, **sampling)
    cfg = m.defaults.cfg_scale if cfg is None else float(cfg)
    if sweep_scales is None:
        sweep_scales = sorted({1.0, cfg})
    curves = run_dir / TRAIN_METRICS
    return evaluate_model(
        m,
        run_dir / "eval" if out_dir is None else out_dir,
        EvalSuite("test", n_per_cell=n_per_cell, seed=seed),
        cfg=cfg,
        seed=seed,
        sweep_scales=sweep_scales,
        sampling={"temperature": m.defaults.temperature, "candidates": m.defaults.candidates},
        metrics_jsonl=curves if curves.is_file() else None,
        title=f"ShapesWorld evaluation of `{run_dir}`",
        progress=progress,
    )


def tune_sampling(
    m: Panglot,
    run_dir: str | os.PathLike,
    scales: Sequence[float] = TUNE_SCALES,
    temperatures: Sequence[float] = TUNE_TEMPERATURES,
    n_per_cell: int = 24,
    seed: int = 0,
    progress: bool = True,
    defaults: Mapping[str, float | bool] | None = None,
) -> dict:
    """Draw the ``val`` suite (seen prompts, ``n_per_cell`` per object count) at every guidance scale x sampling
    temperature (:func:`~panglot.evaluation.suite.sampling_sweep`, one sample per prompt), make the best pair the
    run's drawing defaults (``RUN/model/run.json``'s ``generation``, and ``m.defaults``) together with the other
    ``defaults`` given (``panglot.pipeline.DrawDefaults`` fields such as ``candidates``), and write the grid to
    ``RUN/sampling_tuning.json``. Returns the sweep."""
    suite = EvalSuite("val", n_per_cell=n_per_cell, seed=seed)
    show = tqdm_progress() if progress else None
    # the sweep draws with the given defaults (e.g. cfg_plausibility), one sample per prompt whatever `candidates`
    m.defaults = dataclasses.replace(m.defaults, **(defaults or {}))
    sweep = sampling_sweep(m, suite, scales, temperatures, progress=show, candidates=1)
    best = {"cfg_scale": sweep["best_scale"], "temperature": sweep["best_temperature"]}
    meta = update_run_meta(run_dir, generation={**dataclasses.asdict(m.defaults), **best})
    m.defaults = dataclasses.replace(m.defaults, **{k: meta["generation"][k] for k in best})
    atomic_write_json(Path(run_dir) / TUNING_FILE, sweep, indent=2)
    logger.info("tuned on val: %s", {**(defaults or {}), **best})
    return sweep
