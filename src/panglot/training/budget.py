"""Wall-clock budgets turned into step counts: fitted before training, re-fitted at a fifth, half and 4/5 of the way.

A recipe with ``max_minutes`` times a few real training steps on this machine, converts the budget to
``min(max_steps, steps that fit)`` and writes the result to ``train_budget.json`` in its output directory, so
a resumed run trains exactly as many steps as the run it continues (it reads the file instead of timing again).

That probe times a handful of steps before training, and read 10-40 % slow on the quickstart's stages (the codec's
probe renders its batches in the loop, the trainer's data comes ready; the first steps after compiling run slow):
a 3-minute codec budget trained for 129 s, the unified model's 9.5 minutes for 8.4. So the trainer re-fits
``max_steps`` (`StepRefit`) from its own steps, a fifth, half and four fifths of the way in: the learning-rate cosine
goes on from each re-fit over the new length (no jump, nothing already trained changes), and the re-fits are
recorded (``train_budget_refit.json`` in the trainer's directory) for a resumed run to read. After those, late
re-fits shorten a run whose steps slowed down, and a job's `Deadline` can shorten a stage to leave time for the work
after it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Deadline:
    """The wall-clock end of a whole job (``end``, a ``time.perf_counter()`` value) that a budgeted training stage
    shares with the work after it (tuning, evaluation), which is reckoned as ``reserve_steps`` of the stage's own
    training steps: timed the same way, it grows on a slower machine as the steps do. `StepRefit` fits the steps
    left to whichever ends first, the stage's budget or the deadline less that reserve, but never to less than
    ``min_share`` of the budget: a stage cut to a tenth of its steps trains a useless model, a worse failure than a
    job that ends a few minutes late (a quickstart beside another job read 1.14 s/step at its first re-fit, and the
    deadline alone would have stopped it at step 101 of 464). The steps fitted before training (from a probe of a
    few steps, which has read 2x slow) do not use it."""

    end: float
    reserve_steps: float
    min_share: float = 0.5

    def seconds_left(self, per_step_s: float, now: float) -> float:
        """Seconds the stage may still train at ``per_step_s`` for the job to end by the deadline."""
        return self.end - now - self.reserve_steps * per_step_s


REFIT_FILE = "train_budget_refit.json"
# The re-fits come after these shares of the run (as fitted at the time; the first at least after the warmup). One
# re-fit at a fifth left 16 % of a 9-minute budget unused when the machine sped up after it (2026-12-02, 0.61 s/step
# in its window, 0.50 on average): the later ones time the steps since the one before and fit what is left again.
REFIT_AT = (0.2, 0.5, 0.8)
REFIT_MIN_STEPS = 8  # a re-fit that would time fewer steps than this is not made
# After the scheduled re-fits, every this share of the run (at least REFIT_MIN_STEPS steps) the steps since the last
# look are timed, and if the steps left would overrun what is left (of the budget, or before a deadline) by more
# than LATE_SLACK of the budget, the run is shortened there. A quickstart on 2026-12-03 09:40 re-fitted to 781 steps at
# 0.47 s/step, then ran at 0.9 s/step, and its 1.1x wall-clock guard cut it at step ~570, mid-cosine.
LATE_CHECK = 0.05
LATE_SLACK = 0.05


def recorded_refits(out_dir: str | Path) -> list[tuple[int, int, int]]:
    """``(max_steps, at_step, fitted_max_steps)`` of each re-fit a run in ``out_dir`` recorded (`StepRefit`), in
    order; ``[]`` if none. Reads the one-record file of earlier runs too."""
    path = Path(out_dir) / REFIT_FILE
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    records = record.get("refits", [record])
    return [(int(r["max_steps"]), int(r["at_step"]), int(r["fitted_max_steps"])) for r in records]


class StepRefit:
    """The trainer's re-fits of a budgeted run's ``max_steps`` (``TrainConfig.budget_minutes``).

    The first comes at step ``at`` = ``REFIT_AT[0]`` of the fitted steps (at least the warmup) and gives ``at +
    (budget left) / (seconds per step)``, timed over steps ``at / 4`` to ``at`` (the first ones pay compilation and
    warm caches; a window of a fifth of the run, because minute-to-minute speed on a shared machine moves by 10-30 %:
    a re-fit over the warmup's 75 steps once read 0.41 s/step where the run then averaged 0.33). Each later one comes
    at its share of the length the re-fit before gave, timed over the steps since that one. Each is capped by
    ``TrainConfig.budget_cap`` and gives at least one more step; the budget counts from this object's creation (in
    ``Trainer.train``, after any resume). The trainer continues the learning-rate cosine from each re-fit over the new
    length (`panglot.training.optim.lr_at`'s ``resized``), so the rate never jumps. The re-fits are written to
    ``out_dir/train_budget_refit.json`` as they come; a run that finds that file (a resumed one) trains the recorded
    schedule (`recorded_refits`) and re-fits nothing more. A run that starts past the first timed window, or would
    re-fit before ``REFIT_MIN_STEPS``, keeps the fitted ``max_steps``. With a ``deadline`` (`Deadline`) each re-fit
    fits the steps to the budget or to the deadline, whichever leaves less. After the scheduled re-fits the run is
    watched: every ``LATE_CHECK`` of it, if the machine has slowed so that the steps left would overrun by more than
    ``LATE_SLACK`` of the budget, a late re-fit shortens it (recorded with ``"late": true``; never lengthens), so the
    cosine still ends at the floor instead of the wall-clock guard cutting the run mid-way."""

    def __init__(
        self,
        out_dir: str | Path,
        cfg: TrainConfig,
        start_step: int,
        clock: Callable[[], float] = time.perf_counter,
        deadline: Deadline | None = None,
    ) -> None:
        self.path = Path(out_dir) / REFIT_FILE
        self.deadline = deadline
        self.minutes, self.cap = cfg.budget_minutes, cfg.budget_cap or cfg.max_steps
        self.at = max(cfg.optim.warmup_steps, int(REFIT_AT[0] * cfg.max_steps))
        self.begin = max(1, self.at // 4)
        self.clock = clock
        self.start = clock()
        self.begun_at: float | None = None
        self.records: list[dict[str, float]] = []
        self.done = self.path.is_file() or start_step >= self.begin or self.at < REFIT_MIN_STEPS
        self.watching = False  # the scheduled re-fits are made: late checks only

    def after_step(self, step: int, max_steps: int) -> int | None:
        """Called after every step (``step`` updates done): the new ``max_steps`` at a re-fit step, else None."""
        if self.done:
            return None
        if step == self.begin:
            self.begun_at = self.clock()
        if step < self.at or self.begun_at is None:
            return None
        now = self.clock()
        per_step = max(1e-6, (now - self.begun_at) / max(1, step - self.begin))
        if self.watching:
            return self._late_check(step, max_steps, per_step, now)
        record, left = self._left(step, max_steps, per_step, now)
        steps = max(step + 1, min(self.cap, step + int(left / per_step)))
        self._record(record, steps, per_step, max_steps)
        following = REFIT_AT[len(self.records)] if len(self.records) < len(REFIT_AT) else None
        if following is None or int(following * steps) - step < REFIT_MIN_STEPS:
            self.watching = True
            self.begin, self.begun_at, self.at = step, now, step + self._check_every(steps)
        else:  # the next window: the steps from this re-fit to the next
            self.begin, self.begun_at, self.at = step, now, int(following * steps)
        return steps

    def _check_every(self, max_steps: int) -> int:
        return max(REFIT_MIN_STEPS, int(LATE_CHECK * max_steps))

    def _late_check(self, step: int, max_steps: int, per_step: float, now: float) -> int | None:
        """A look after the scheduled re-fits: shorten the run if its steps left now overrun what is left."""
        self.begin, self.begun_at, self.at = step, now, step + self._check_every(max_steps)
        if step >= max_steps:
            return None
        record, left = self._left(step, max_steps, per_step, now)
        if (max_steps - step) * per_step <= left + LATE_SLACK * self.minutes * 60:
            return None
        steps = max(step + 1, min(self.cap, step + int(max(left, 0.0) / per_step)))
        if steps >= max_steps:
            return None
        self._record({**record, "late": True}, steps, per_step, max_steps)
        return steps

    def _record(self, record: dict, steps: int, per_step: float, max_steps: int) -> None:
        self.records.append({**record, "max_steps": steps})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"refits": self.records})
        logger.info(
            "budget re-fit %d at step %d%s: %.3f s/step measured, %d steps instead of %d (cap %d)",
            len(self.records), record["at_step"], " (late)" if record.get("late") else "", per_step, steps,
            max_steps, self.cap,
        )  # fmt: skip
        if self.deadline is not None and record["seconds_left"]["deadline"] < record["seconds_left"]["budget"]:
            logger.info(
                "the deadline leaves %.0f s of the budget's %.0f (%.0f steps' time reserved after training; the stage "
                "trains at least %.0f %% of its budget)", record["seconds_left"]["deadline"],
                record["seconds_left"]["budget"], self.deadline.reserve_steps, 100 * self.deadline.min_share,
            )  # fmt: skip

    def _left(self, step: int, max_steps: int, per_step: float, now: float) -> tuple[dict, float]:
        """The record of a re-fit at ``step`` and the seconds it may still train: what is left of the budget, or of
        the time before the deadline less its reserve (not below its floor), whichever is less."""
        left = self.minutes * 60 - (now - self.start)
        record = {"at_step": step, "seconds_per_step": round(per_step, 4), "fitted_max_steps": max_steps}
        if self.deadline is not None:
            by_deadline = self.deadline.seconds_left(per_step, now)
            floor = self.deadline.min_share * self.minutes * 60 - (now - self.start)
            record["seconds_left"] = {"budget": round(left, 1), "deadline": round(by_deadline, 1)}
            left = min(left, max(by_deadline, floor))
        return record, left
