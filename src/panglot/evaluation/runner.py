"""Evaluate a model end to end: suite -> tasks -> (optional CFG sweep) -> ``metrics.json`` + report.

``evaluate_run(RUN)`` is what ``panglot eval RUN`` calls: it loads the run with ``panglot.load`` and
writes ``RUN/eval/`` (``report.md``, ``metrics.json``, figures; training curves from
``RUN/train/metrics.jsonl`` when the run has one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import panglot
from panglot.evaluation.heldout import heldout_loss
from panglot.evaluation.metrics import ALL, GROUPS
from panglot.evaluation.report import write_report
from panglot.evaluation.suite import TASKS, EvalModel, EvalSuite, cfg_sweep, run_tasks, tqdm_progress
from panglot.files import atomic_write_json
from panglot.model.unified import UnifiedModel

HEADLINE = {"t2i": "scene", "caption": "accuracy", "vqa": "accuracy"}  # task -> its headline figure
TRAIN_METRICS = Path("train") / "metrics.jsonl"


def summary(metrics: dict) -> dict:
    """Headline figures of :func:`~panglot.evaluation.suite.evaluate`'s result: per task present, the
    headline figure for each group and overall, e.g. ``{"t2i_scene": {"seen": .., "unseen": .., "all": ..}}``."""
    out = {}
    for task, figure in HEADLINE.items():
        if task in metrics:
            table = metrics[task]
            row = {g: table[g][ALL][figure] for g in GROUPS if g in table}
            row[ALL] = table[ALL][figure]
            out[f"{task}_{figure}" if task == "t2i" else task] = row
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
    metrics_jsonl: str | os.PathLike | None = None,
    title: str = "ShapesWorld evaluation",
    progress: bool = True,
    heldout: bool = True,
) -> dict:
    """Run ``tasks`` (and a CFG sweep over ``sweep_scales``) on ``suite`` and write the report into
    ``out_dir``. Returns the metrics (as in ``metrics.json``) with a ``summary`` of headline figures. With
    ``heldout`` and a unified model behind ``m`` (``m.model``, as ``panglot.load`` gives), also the loss per task
    on `val` documents (``panglot.evaluation.heldout``), under ``heldout_loss``."""
    show = tqdm_progress() if progress else None
    results = run_tasks(m, suite, tasks, cfg=cfg, seed=seed, progress=show)
    sweep = cfg_sweep(m, suite, sweep_scales, seed=seed, progress=show) if sweep_scales else None
    model = getattr(m, "model", None)
    losses = heldout_loss(model, tasks=tuple(tasks)) if heldout and isinstance(model, UnifiedModel) else None
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
) -> dict:
    """Load ``run_dir`` and evaluate it on the test suite (``n_per_cell`` scenes per seen/unseen x 1/2/3
    objects cell); writes into ``out_dir`` (default ``RUN/eval``). ``cfg=None`` uses the run's tuned scale;
    ``compile`` decodes with compiled steps (``panglot.load(..., compile=True)``)."""
    run_dir = Path(run_dir)
    m = panglot.load(run_dir, device=device, compile=compile)
    curves = run_dir / TRAIN_METRICS
    return evaluate_model(
        m,
        run_dir / "eval" if out_dir is None else out_dir,
        EvalSuite("test", n_per_cell=n_per_cell, seed=seed),
        cfg=cfg,
        seed=seed,
        sweep_scales=sweep_scales,
        metrics_jsonl=curves if curves.is_file() else None,
        title=f"ShapesWorld evaluation of `{run_dir}`",
        progress=progress,
    )
