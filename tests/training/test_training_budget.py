"""A minutes budget becomes a step count once, before training, and a resumed run reads it back."""

from __future__ import annotations

import json

from panglot.training.budget import BUDGET_FILE, fit_steps_to_minutes, median_step_seconds, steps_for_minutes


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
