"""A minutes budget becomes a step count before training, is re-fitted as the run goes, and a resumed run
reads both back."""

from __future__ import annotations

import json

import pytest
from training_toys import TinyMLP, mse_loss, regression_data

from panglot.data.loader import StatefulLoader
from panglot.training import OptimConfig, TrainConfig, Trainer, seed_everything
from panglot.training.budget import (
    BUDGET_FILE,
    REFIT_FILE,
    WALL_GUARD,
    Deadline,
    StepRefit,
    budgeted,
    fit_steps_to_minutes,
    median_step_seconds,
    recorded_refits,
    steps_for_minutes,
)
from panglot.training.metrics_log import METRICS_FILE
from panglot.training.optim import lr_at


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
    assert (fitted.budget_minutes, fitted.budget_cap) == (2.0, 10_000)  # for the trainer's re-fit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drive(refit: StepRefit, clock: FakeClock, seconds, last_step: int, max_steps: int = 40) -> dict[int, int]:
    """Steps 1..last_step taking ``seconds(step)`` each on ``clock``; the re-fits made, {step: new max_steps}."""
    new = {}
    for step in range(1, last_step + 1):
        clock.now += seconds(step)
        if (steps := refit.after_step(step, max_steps)) is not None:
            new[step], max_steps = steps, steps
    return new


def test_the_refits_time_a_fifth_of_the_run_then_the_steps_since_and_fit_the_budget_left(tmp_path):
    """1-minute budget, 40 fitted steps: the first re-fit at step 8 (a fifth), steps 2..8 timed at 0.25 s each (the
    first step paid 4 s of compilation); 60 - 5.75 s are left: 217 more steps, 225 in all. Then the machine speeds
    up to 0.2 s: the second re-fit at half of 225 (step 112) times steps 8..112 at 0.2 s and fits 33.45 s into 167
    more; the third at 4/5 of 279 (step 223) finds the run on time. Recorded as they come, and a second run in
    the directory re-fits nothing."""
    clock = FakeClock()
    cfg = TrainConfig(optim=OptimConfig(warmup_steps=4), max_steps=40, budget_minutes=1.0, budget_cap=10_000)
    refit = StepRefit(tmp_path, cfg, start_step=0, clock=clock)
    new = drive(refit, clock, lambda step: 4.0 if step == 1 else 0.25 if step <= 8 else 0.2, 299)
    assert new == {8: 8 + int((60 - 5.75) / 0.25), 112: 112 + int((60 - 26.55) / 0.2), 223: 223 + int(11.25 / 0.2)}
    record = json.loads((tmp_path / REFIT_FILE).read_text())
    assert record["refits"][0] == {"at_step": 8, "seconds_per_step": 0.25, "fitted_max_steps": 40, "max_steps": 225}
    assert [r["seconds_per_step"] for r in record["refits"]] == [0.25, 0.2, 0.2]
    assert recorded_refits(tmp_path) == [(225, 8, 40), (279, 112, 225), (279, 223, 279)]
    again = StepRefit(tmp_path, cfg, start_step=0, clock=clock)
    assert all(again.after_step(step, 225) is None for step in range(1, 300))
    capped_cfg = TrainConfig(optim=OptimConfig(warmup_steps=8), max_steps=40, budget_minutes=1.0, budget_cap=50)
    capped = StepRefit(tmp_path / "cap", capped_cfg, 0, clock)
    fits = []
    for step in range(1, 9):
        clock.now += 0.25
        fits.append(capped.after_step(step, 1000))
    assert fits[-1] == 50
    late = StepRefit(tmp_path / "late", cfg, start_step=5, clock=clock)  # resumed past the timed steps: no re-fit
    assert all(late.after_step(step, 100) is None for step in range(6, 12))
    short = TrainConfig(optim=OptimConfig(warmup_steps=4), max_steps=20, budget_minutes=1.0)  # re-fit at 4: too early
    assert all(StepRefit(tmp_path / "short", short, 0, clock).after_step(s, 100) is None for s in range(1, 6))


def test_a_deadline_ends_the_refitted_steps_in_time_for_the_work_after_them(tmp_path):
    """A 1-minute budget in a job that ends 80 s after the stage starts, with 60 of the stage's steps reserved
    after training. First re-fit (step 8, 5.75 s in, 0.25 s/step): the budget leaves 54.25 s, the deadline
    80 - 5.75 - 60 x 0.25 = 59.25 s: the budget decides (225 steps, as without a deadline). Then the machine slows
    to 0.5 s/step, and so does the reserve: at the second re-fit (step 112, 57.75 s in) the budget leaves 2.25 s
    (116 steps), the deadline 80 - 57.75 - 30 < 0: one more step, 113. Both are recorded."""
    clock = FakeClock()
    t0 = clock.now
    cfg = TrainConfig(optim=OptimConfig(warmup_steps=4), max_steps=40, budget_minutes=1.0, budget_cap=10_000)
    deadline = Deadline(end=t0 + 80.0, reserve_steps=60, min_share=0)
    assert deadline.seconds_left(0.25, now=t0 + 5.75) == pytest.approx(59.25)
    runs = {"deadline": StepRefit(tmp_path, cfg, 0, clock, deadline), "none": StepRefit(tmp_path / "none", cfg, 0, clock)}
    fitted = {name: {} for name in runs}
    for step in range(1, 200):
        clock.now += 4.0 if step == 1 else 0.25 if step <= 8 else 0.5
        for name, refit in runs.items():
            if (steps := refit.after_step(step, [40, *fitted[name].values()][-1])) is not None:
                fitted[name][step] = steps
    assert fitted["none"] == {8: 225, 112: 116}  # the budget alone (no third re-fit: 4/5 of 116 is passed)
    assert fitted["deadline"] == {8: 225, 112: 113}
    record = json.loads((tmp_path / REFIT_FILE).read_text())["refits"]
    assert [r["seconds_left"] for r in record] == [
        {"budget": 54.2, "deadline": 59.2},
        {"budget": 2.2, "deadline": -7.8},
    ]  # rounded to 0.1 s


def test_a_run_that_slows_after_its_last_refit_is_shortened_by_a_late_one(tmp_path):
    """1-minute budget at 0.25 s/step: the scheduled re-fits (steps 8, 112, 180) each find 225 steps. Then the
    machine slows to 1 s/step; the first late look (5 % of the run later, step 191, 59.75 s in) finds 34 steps
    left against 0.25 s and shortens the run to one more step, recorded as late. A run that stays on time is never
    re-fitted late (the test above), and a late look never lengthens a run."""
    clock = FakeClock()
    cfg = TrainConfig(optim=OptimConfig(warmup_steps=4), max_steps=40, budget_minutes=1.0, budget_cap=10_000)
    refit = StepRefit(tmp_path, cfg, start_step=0, clock=clock)
    new = drive(refit, clock, lambda step: 4.0 if step == 1 else 0.25 if step <= 180 else 1.0, 192)
    assert new == {8: 225, 112: 225, 180: 225, 191: 192}
    late = json.loads((tmp_path / REFIT_FILE).read_text())["refits"][-1]
    assert late["late"] is True and late["seconds_per_step"] == 1.0 and late["fitted_max_steps"] == 225
    assert recorded_refits(tmp_path)[-1] == (192, 191, 225)  # a resumed run replays it like any other
    fast = StepRefit(tmp_path / "fast", cfg, start_step=0, clock=clock)  # faster after the last: no late re-fit
    new = drive(fast, clock, lambda step: 4.0 if step == 1 else 0.25 if step <= 180 else 0.1, 225)
    assert new == {8: 225, 112: 225, 180: 225}


def test_a_tight_deadline_cuts_the_budget_down_to_its_floor(tmp_path):
    """A 10-minute budget in a job that ends 60 s after the stage starts, 20 steps of 0.5 s reserved: the first
    re-fit (step 8, 4 s in) fits (60 - 4 - 10) / 0.5 = 92 more steps, not the budget's (600 - 4) / 0.5 = 1192, when
    the deadline may cut it to nothing (``min_share=0``); by default it keeps half the budget."""
    clock = FakeClock()
    cfg = TrainConfig(optim=OptimConfig(warmup_steps=4), max_steps=40, budget_minutes=10.0, budget_cap=10_000)
    refit = StepRefit(tmp_path, cfg, 0, clock, Deadline(end=clock.now + 60.0, reserve_steps=20, min_share=0))
    assert drive(refit, clock, lambda step: 0.5, 8) == {8: 8 + 92}
    # With the default min_share of 0.5 the stage still trains half its budget: (300 - 4) / 0.5 = 592 more steps.
    floored = StepRefit(tmp_path / "floor", cfg, 0, clock, Deadline(end=clock.now + 60.0, reserve_steps=20))
    assert drive(floored, clock, lambda step: 0.5, 8) == {8: 8 + 592}


def test_a_refit_file_of_the_single_refit_format_still_reads(tmp_path):
    record = {"at_step": 8, "seconds_per_step": 0.25, "fitted_max_steps": 40, "max_steps": 225}
    (tmp_path / REFIT_FILE).write_text(json.dumps(record))
    assert recorded_refits(tmp_path) == [(225, 8, 40)] and recorded_refits(tmp_path / "none") == []


def _budgeted_trainer(out_dir, deadline: Deadline | None = None) -> Trainer:
    seed_everything(0)
    cfg = TrainConfig(
        optim=OptimConfig(lr=1e-2, warmup_steps=8), max_steps=10, precision="fp32", log_every=1, ckpt_every=0,
        budget_minutes=5.0, budget_cap=14,
    )  # fmt: skip
    data = StatefulLoader(regression_data(n=64), batch_size=8, seed=1)
    return Trainer(cfg, TinyMLP(), mse_loss, data, out_dir, deadline=deadline)


def test_a_budgeted_trainer_trains_the_refitted_steps_and_a_resumed_one_keeps_them(tmp_path):
    """Fast toy steps: 5 minutes hold far more than the cap, so the re-fit at the warmup's end (step 8) raises the
    fitted 10 steps to the cap, 14; the run trains them, and a resumed run reads them back instead of timing."""
    trainer = _budgeted_trainer(tmp_path)
    assert trainer.train().steps == 14 and recorded_refits(tmp_path) == [(14, 8, 10)]
    assert trainer.resized == [(8, 10)]  # the next re-fit would come at step 7 of 14: passed, none is made
    resumed = _budgeted_trainer(tmp_path)
    assert resumed.train(resume=True).steps == 14 and (resumed.cfg.max_steps, resumed.resized) == (14, [(8, 10)])


def test_a_trainer_given_a_passed_deadline_stops_at_its_first_refit(tmp_path):
    """The same toy run with a job deadline already passed: the re-fit at step 8 gives one more step, not the cap."""
    import time

    trainer = _budgeted_trainer(tmp_path, Deadline(end=time.perf_counter() - 1.0, reserve_steps=0, min_share=0))
    assert trainer.train().steps == 9 and recorded_refits(tmp_path) == [(9, 8, 10)]


def test_a_resumed_trainer_replays_every_recorded_refit_in_its_learning_rates(tmp_path):
    """A run that re-fitted twice (10 -> 20 steps at 8, -> 16 at 12) and was cut off: the resumed trainer trains to
    16 with the rates of that chain (logged per step), and re-fits nothing more."""
    (tmp_path / REFIT_FILE).write_text(json.dumps({"refits": [
        {"at_step": 8, "seconds_per_step": 0.1, "fitted_max_steps": 10, "max_steps": 20},
        {"at_step": 12, "seconds_per_step": 0.1, "fitted_max_steps": 20, "max_steps": 16},
    ]}))  # fmt: skip
    trainer = _budgeted_trainer(tmp_path)
    assert trainer.train(resume=True).steps == 16 and trainer.resized == [(8, 10), (12, 20)]
    logged = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    expected = [lr_at(s, trainer.cfg.optim, 16, resized=[(8, 10), (12, 20)]) for s in range(16)]
    assert [r["lr"] for r in logged] == pytest.approx(expected) and len(recorded_refits(tmp_path)) == 2
    assert expected[11] != pytest.approx(lr_at(11, trainer.cfg.optim, 16, resized=[(8, 10)]))  # the chain matters
