"""A minutes budget becomes a step count once, before training, and a resumed run reads it back."""

from __future__ import annotations

import json

from panglot.training import TrainConfig
from panglot.training.budget import (
    BUDGET_FILE,
    WALL_GUARD,
    budgeted,
    fit_steps_to_minutes,
    median_step_seconds,
    steps_for_minutes,
)


def test_steps_for_minutes_is_capped_by_max_steps():
    assert steps_for_minutes(1.0, per_step_s=0.5, max_steps=1000) == 120
    assert steps_for_minutes(1.0, per_step_s=0.5, max_steps=50) == 50
    assert steps_for_minutes(0.001, per_step_s=0.5, max_steps=50) == 1


def test_median_step_seconds_skips_warmup_and_takes_the_median():
    calls = []
    assert median_step_seconds(lambda: calls.append(1), probe_steps=5, warmup=3) >= 0
    assert len(calls) == 8


def test_the_budget_is_fitted_once_and_recorded(tmp_path):
    probes = []

    def probe() -> float:
        probes.append(1)
        return 0.5

    steps = fit_steps_to_minutes(tmp_path, 1.0, 10_000, probe)
    assert steps == int(60 / (0.5 * 1.1)) and len(probes) == 1
    assert json.loads((tmp_path / BUDGET_FILE).read_text())["max_steps"] == steps
    assert fit_steps_to_minutes(tmp_path, 1.0, 10_000, probe) == steps and len(probes) == 1  # read back
    assert fit_steps_to_minutes(tmp_path / "x", None, 7, probe) == 7 and len(probes) == 1
    assert not (tmp_path / "x").exists()


def test_budgeted_fits_the_steps_and_arms_the_wall_clock_guard(tmp_path):
    cfg = TrainConfig(max_steps=10_000)
    fitted = budgeted(cfg, tmp_path / "a", 2.0, lambda: 0.5)
    assert fitted.max_steps == int(120 / (0.5 * 1.1)) and fitted.max_wall_minutes == 2.0 * WALL_GUARD
    assert cfg.max_steps == 10_000 and cfg.max_wall_minutes is None  # a new config; the given one is untouched
    own_guard = budgeted(TrainConfig(max_steps=10_000, max_wall_minutes=5.0), tmp_path / "b", 2.0, lambda: 0.5)
    assert own_guard.max_wall_minutes == 5.0  # a guard the recipe set is kept
    assert budgeted(cfg, tmp_path / "c", None, lambda: 1 / 0) is cfg  # no budget: no probe, nothing changed
