import json

import pytest
import torch
from torch import nn
from training_toys import TinyLM, TinyMLP, counting_sequences, lm_loss, mse_loss, regression_data

from panglot.data.loader import StatefulLoader
from panglot.training import METRICS_FILE, OptimConfig, TrainConfig, Trainer, every, seed_everything


def _cfg(**overrides) -> TrainConfig:
    optim = OptimConfig(lr=1e-2, warmup_steps=2, weight_decay=0.01)
    base = dict(optim=optim, max_steps=6, precision="fp32", log_every=1, ckpt_every=0, keep_last=2)
    return TrainConfig(**{**base, **overrides})


def _mlp_trainer(tmp_path, cfg, batch_size=8, model_seed=0, dropout=0.0, **kwargs) -> Trainer:
    seed_everything(model_seed)
    model = TinyMLP(dropout=dropout)
    data = StatefulLoader(regression_data(n=64), batch_size=batch_size, seed=1)
    return Trainer(cfg, model, mse_loss, data, tmp_path, **kwargs)


def _records(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / METRICS_FILE).read_text().splitlines()]


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    accumulated = _mlp_trainer(tmp_path / "a", _cfg(grad_accum=2), batch_size=4)
    big_batch = _mlp_trainer(tmp_path / "b", _cfg(grad_accum=1), batch_size=8)
    summary_a, summary_b = accumulated.train(), big_batch.train()
    assert summary_a.final_loss == pytest.approx(summary_b.final_loss, rel=1e-5)
    for a, b in zip(accumulated.model.parameters(), big_batch.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(accumulated.model.inp.weight, TinyMLP().inp.weight)


def test_frozen_parameters_stay_put_and_are_not_optimized(tmp_path):
    trainer = _mlp_trainer(tmp_path, _cfg(freeze=["inp", "norm.bias"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    summary = trainer.train()
    after = dict(trainer.model.named_parameters())
    for name in ("inp.weight", "inp.bias", "norm.bias"):
        assert torch.equal(after[name], before[name]) and not after[name].requires_grad
    for name in ("norm.weight", "out.weight", "out.bias"):
        assert not torch.equal(after[name], before[name])
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(after[n]) for n in ("norm.weight", "out.weight", "out.bias")}
    assert (summary.frozen_params, summary.trainable_params) == (4 * 16 + 16 + 16, 16 + 16 + 1)


def test_reported_grad_norm_is_before_clipping(tmp_path):
    trainer = _mlp_trainer(tmp_path, _cfg(max_steps=1, optim=OptimConfig(grad_clip=1e-3)))
    expected_model = TinyMLP()
    expected_model.load_state_dict(trainer.model.state_dict())
    batch = StatefulLoader(regression_data(n=64), batch_size=8, seed=1).__next__()
    mse_loss(expected_model, batch)[0].backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in expected_model.parameters()]))
    trainer.train()
    (record,) = _records(tmp_path)
    assert record["grad_norm"] == pytest.approx(expected.item(), rel=1e-5)
    assert record["grad_norm"] > 1e-2  # well above the clip, so clipping had work to do


def test_bf16_autocast_trains_a_toy_regression(tmp_path):
    seen_dtypes = set()

    def loss_fn(model, batch):
        x, y = batch
        pred = model(x)
        seen_dtypes.add(pred.dtype)
        return nn.functional.mse_loss(pred.float(), y), {"tokens": float(len(x))}

    seed_everything(0)
    data = StatefulLoader(regression_data(n=64), batch_size=16, seed=1)
    cfg = _cfg(precision="bf16", max_steps=40, log_every=10, optim=OptimConfig(lr=2e-2, warmup_steps=5))
    summary = Trainer(cfg, TinyMLP(), loss_fn, data, tmp_path).train()
    assert seen_dtypes == {torch.bfloat16}
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert records[0].keys() >= {"loss", "lr", "grad_norm", "tokens_per_s", "step_time_s"}
    assert summary.tokens == 40 * 16 and summary.checkpoint.name == "step_00000040"
    assert [r["tokens"] for r in records] == [10 * 16] * 4  # each record: the tokens of its window


def test_callbacks_and_log_records(tmp_path):
    calls = []

    def evaluate(trainer, metrics):
        calls.append(trainer.step)
        return {"eval/loss": float(trainer.step)}

    _mlp_trainer(tmp_path, _cfg(log_every=4), callbacks=[every(2, evaluate)]).train()
    assert calls == [2, 4, 6]
    records = _records(tmp_path)
    evals = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]
    assert evals == [(2, 2.0), (4, 4.0), (6, 6.0)]
    assert [r["step"] for r in records if "loss" in r] == [4, 6]  # the last, partial window is logged too


def test_tensorboard_events_are_written(tmp_path):
    _mlp_trainer(tmp_path, _cfg(max_steps=2, tensorboard=True)).train()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("algorithm", ["adamw", "muon"])
def test_in_process_resume_after_a_crash_is_bitwise_identical(tmp_path, algorithm):
    def lm_trainer(out_dir, callbacks=()):
        seed_everything(0)
        data = StatefulLoader(counting_sequences(n=24), batch_size=4, seed=2)
        optim = OptimConfig(lr=1e-2, warmup_steps=2, weight_decay=0.01, algorithm=algorithm)
        cfg = _cfg(optim=optim, precision="bf16", grad_accum=2, max_steps=6, ckpt_every=3, seed=5)
        return Trainer(cfg, TinyLM(dropout=0.3), lm_loss, data, out_dir, callbacks=callbacks)

    reference = lm_trainer(tmp_path / "ref")
    reference.train()

    def crash(trainer, metrics):
        if trainer.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lm_trainer(tmp_path / "run", callbacks=[crash]).train()
    resumed = lm_trainer(tmp_path / "run")  # fresh model, optimizer and loader
    summary = resumed.train(resume=True)
    assert summary.resumed_from == 3 and summary.steps == 6
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in _records(tmp_path / "ref")] == [r["loss"] for r in _records(tmp_path / "run")]


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    summary = _mlp_trainer(tmp_path, _cfg(max_steps=2)).train(resume=True)
    assert summary.resumed_from is None and summary.steps == 2


def test_finite_data_ends_training_early_with_a_checkpoint(tmp_path):
    seed_everything(0)
    data = StatefulLoader(regression_data(n=16), batch_size=8, epochs=1)
    summary = Trainer(_cfg(max_steps=10), TinyMLP(), mse_loss, data, tmp_path).train()
    assert summary.data_exhausted and summary.steps == 2
    assert summary.checkpoint.name == "step_00000002"


def test_the_wall_clock_guard_stops_early_with_a_checkpoint_and_a_resume_finishes(tmp_path, monkeypatch):
    import panglot.training.trainer as trainer_module

    class Clock:  # every reading of the trainer's clock is 10 s later: the 1-minute guard passes within steps
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 10.0
            return self.now

    monkeypatch.setattr(trainer_module, "time", Clock())
    cfg = _cfg(max_steps=40, max_wall_minutes=1.0)
    summary = _mlp_trainer(tmp_path, cfg).train()
    assert summary.out_of_time and 1 <= summary.steps < 40
    assert summary.checkpoint.name == f"step_{summary.steps:08d}"
    lrs = [r["lr"] for r in _records(tmp_path)]
    monkeypatch.undo()
    resumed = _mlp_trainer(tmp_path, _cfg(max_steps=40)).train(resume=True)
    assert resumed.steps == 40 and not resumed.out_of_time and resumed.resumed_from == summary.steps
    _mlp_trainer(tmp_path / "ref", _cfg(max_steps=40)).train()
    assert [r["lr"] for r in _records(tmp_path / "ref")][: len(lrs)] == lrs  # the schedule of max_steps


def test_non_finite_loss_stops_training(tmp_path):
    def nan_loss(model, batch):
        return model(batch[0]).sum() * float("nan"), {}

    seed_everything(0)
    data = StatefulLoader(regression_data(n=16), batch_size=8)
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        Trainer(_cfg(), TinyMLP(), nan_loss, data, tmp_path).train()
