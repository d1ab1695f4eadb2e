"""Wall-clock budgets turned into step counts, once, before training.

A recipe with ``max_minutes`` times a few real training steps on this machine, converts the budget to
``min(max_steps, steps that fit)`` and writes the result to ``train_budget.json`` in its output directory, so
the learning-rate schedule is fixed from the first step and a resumed run trains exactly as many steps as
the run it continues (it reads the file instead of timing again).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from panglot.files import atomic_write_json
from panglot.training.config import TrainConfig

BUDGET_FILE = "train_budget.json"
OPTIMIZER_OVERHEAD = 1.1  # the probe times forward + backward; the optimizer step adds about this much
# A budgeted run also stops once this many times its budget has passed (``TrainConfig.max_wall_minutes``): the
# probe times a few steps at the start, and on a shared machine later steps ran up to 1.35x slower.
WALL_GUARD = 1.1

logger = logging.getLogger(__name__)


def median_step_seconds(step: Callable[[], None], probe_steps: int = 6, warmup: int = 2) -> float:
    """Median wall time of ``step()`` over ``probe_steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    elapsed = []
    for _ in range(probe_steps):
        start = time.perf_counter()
        step()
        elapsed.append(time.perf_counter() - start)
    elapsed.sort()
    return elapsed[len(elapsed) // 2]


def steps_for_minutes(minutes: float, per_step_s: float, max_steps: int) -> int:
    """Steps that fit in ``minutes`` at ``per_step_s`` each, at least 1 and at most ``max_steps``."""
    return max(1, min(max_steps, int(minutes * 60 / per_step_s)))


def fit_steps_to_minutes(
    out_dir: str | Path, minutes: float | None, max_steps: int, seconds_per_step: Callable[[], float]
) -> int:
    """``max_steps``, or with a ``minutes`` budget the steps that fit, measured by ``seconds_per_step()``
    (a probe of forward + backward; the optimizer's share is added here) the first time and read back from
    ``out_dir/train_budget.json`` afterwards. ``minutes=None`` means: exactly ``max_steps``."""
    if minutes is None:
        return max_steps
    path = Path(out_dir) / BUDGET_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        logger.info("%s: %d steps, as fitted when the run started", path, recorded["max_steps"])
        return int(recorded["max_steps"])
    per_step = seconds_per_step() * OPTIMIZER_OVERHEAD
    steps = steps_for_minutes(minutes, per_step, max_steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"minutes": minutes, "seconds_per_step": round(per_step, 4), "max_steps": steps, "cap": max_steps}
    atomic_write_json(path, record)
    logger.info("%.1f-minute budget at %.3f s/step: %d steps (cap %d)", minutes, per_step, steps, max_steps)
    return steps


Config = TypeVar("Config", bound=TrainConfig)


def budgeted(cfg: Config, out_dir: str | Path, minutes: float | None, seconds_per_step: Callable[[], float]) -> Config:
    """``cfg`` fitted to a ``minutes`` budget: ``max_steps`` from ``fit_steps_to_minutes`` (timed once per run) and,
    unless ``cfg.max_wall_minutes`` is set, the wall-clock guard ``minutes * WALL_GUARD`` that stops training with a
    checkpoint if later steps run slower than the probe's. ``minutes=None``: ``cfg`` as it is. Every budgeted
    recipe fits its steps through here, so every stage of a quickstart holds its time the same way."""
    if minutes is None:
        return cfg
    steps = fit_steps_to_minutes(out_dir, minutes, cfg.max_steps, seconds_per_step)
    guard = cfg.max_wall_minutes if cfg.max_wall_minutes is not None else minutes * WALL_GUARD
    return dataclasses.replace(cfg, max_steps=steps, max_wall_minutes=guard)
