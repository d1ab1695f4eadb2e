"""Wall-clock budgets turned into step counts: fitted before training, re-fitted once a fifth of the way in.

A recipe with ``max_minutes`` times a few real training steps on this machine, converts the budget to
``min(max_steps, steps that fit)`` and writes the result to ``train_budget.json`` in its output directory, so
a resumed run trains exactly as many steps as the run it continues (it reads the file instead of timing again).

That probe times a handful of steps before training, and read 10-40 % slow on the quickstart's stages (the codec's
probe renders its batches in the loop, the trainer's data comes ready; the first steps after compiling run slow):
a 3-minute codec budget trained for 129 s, the unified model's 9.5 minutes for 8.4. So the trainer re-fits
``max_steps`` once (`StepRefit`), from its own steps, a fifth of the way in: the learning-rate cosine goes on from
there over the new length (no jump, nothing already trained changes), and the re-fit is recorded
(``train_budget_refit.json`` in the trainer's directory) for a resumed run to read.
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
    return dataclasses.replace(
        cfg, max_steps=steps, max_wall_minutes=guard, budget_minutes=minutes, budget_cap=cfg.max_steps
    )


REFIT_FILE = "train_budget_refit.json"
REFIT_AT = 0.2  # the re-fit comes after this share of the fitted steps (or the warmup, if longer)
REFIT_MIN_STEPS = 8  # a run shorter than this to the re-fit times too few steps to re-fit by


def recorded_refit(out_dir: str | Path) -> tuple[int, int, int] | None:
    """``(max_steps, at_step, fitted_max_steps)`` of the re-fit a run in ``out_dir`` recorded (`StepRefit`), if any."""
    path = Path(out_dir) / REFIT_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return int(record["max_steps"]), int(record["at_step"]), int(record["fitted_max_steps"])


class StepRefit:
    """The trainer's one re-fit of a budgeted run's ``max_steps`` (``TrainConfig.budget_minutes``).

    At step ``at`` = ``REFIT_AT`` of the fitted steps (at least the warmup) it gives ``at + (budget left) /
    (seconds per step)``, timed over steps ``at / 4`` to ``at`` (the first ones pay compilation and warm caches;
    a window of a fifth of the run, because minute-to-minute speed on a shared machine moves by 10-30 %: a re-fit
    over the warmup's 75 steps once read 0.41 s/step where the run then averaged 0.33), capped by
    ``TrainConfig.budget_cap`` and at least one more step; the budget counts from this object's creation (in
    ``Trainer.train``, after any resume). The trainer continues the learning-rate cosine from ``at`` over the new length
    (`panglot.training.optim.lr_at`'s ``resized``), so the rate never jumps. The result is written to
    ``out_dir/train_budget_refit.json``; a run that finds that file (a resumed one) trains its recorded schedule
    (`recorded_refit`) and re-fits nothing. A run that starts past the timed window, or would re-fit before ``REFIT_MIN_STEPS``, keeps
    the fitted ``max_steps``."""

    def __init__(
        self, out_dir: str | Path, cfg: TrainConfig, start_step: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.path = Path(out_dir) / REFIT_FILE
        self.minutes, self.cap = cfg.budget_minutes, cfg.budget_cap or cfg.max_steps
        self.at = max(cfg.optim.warmup_steps, int(REFIT_AT * cfg.max_steps))
        self.begin = max(1, self.at // 4)
        self.clock = clock
        self.start = clock()
        self.begun_at: float | None = None
        self.done = self.path.is_file() or start_step >= self.begin or self.at < REFIT_MIN_STEPS

    def after_step(self, step: int, max_steps: int) -> int | None:
        """Called after every step (``step`` updates done): the new ``max_steps`` at the re-fit step, else None."""
        if self.done:
            return None
        if step == self.begin:
            self.begun_at = self.clock()
        if step < self.at or self.begun_at is None:
            return None
        self.done = True
        now = self.clock()
        per_step = max(1e-6, (now - self.begun_at) / max(1, step - self.begin))
        left = self.minutes * 60 - (now - self.start)
        steps = max(step + 1, min(self.cap, step + int(left / per_step)))
        record = {"at_step": step, "seconds_per_step": round(per_step, 4), "fitted_max_steps": max_steps, "max_steps": steps}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, record)
        logger.info(
            "budget re-fitted at step %d: %.3f s/step measured, %d steps instead of %d (cap %d)",
            step, per_step, steps, max_steps, self.cap,
        )  # fmt: skip
        return steps
