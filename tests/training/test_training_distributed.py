"""Data-parallel training over processes (panglot.training.distributed): the group takes the same steps as one
process over the whole batch, resumes exactly, and agrees on every decision rank 0 makes."""

import json

import pytest
import torch
from safetensors.torch import load_file
from training_toys import TinyMLP, data_parallel_mlp, mse_loss, regression_data

from panglot.data.loader import StatefulLoader
from panglot.training import OptimConfig, TrainConfig, Trainer, distributed, seed_everything

TIMEOUT_S = 120  # a collective that waits this long raises: a group out of step fails instead of hanging


def _cfg(**overrides) -> TrainConfig:
    optim = OptimConfig(lr=1e-2, warmup_steps=2, weight_decay=0.01)
    base = dict(optim=optim, max_steps=6, precision="fp32", log_every=1, ckpt_every=0, keep_last=2)
    return TrainConfig(**{**base, **overrides})


def _launch(out_dir, cfg, batch_size=8, **kwargs) -> None:
    distributed.launch(data_parallel_mlp, 2, out_dir, cfg, batch_size, *kwargs.values(), timeout_s=TIMEOUT_S)


def _weights(out_dir, rank: int) -> dict[str, torch.Tensor]:
    return load_file(out_dir / f"rank{rank}.safetensors")


def _record(out_dir, rank: int) -> dict:
    return json.loads((out_dir / f"rank{rank}.json").read_text())


def test_outside_a_group_the_helpers_are_one_process():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.from_main([3, 1]) == [3, 1] and distributed.slowest(0.5) == 0.5
    assert distributed.gather({"a": 1}) == [{"a": 1}]
    rows = torch.ones(2, 3, requires_grad=True)
    assert distributed.gather_rows(rows) is rows
    with pytest.raises(ValueError, match="processes must be >= 1"):
        distributed.launch(print, 0)


def test_two_processes_over_half_batches_take_the_steps_of_one_over_the_whole(tmp_path):
    """The two shards of each batch are the single process's batch, split; the mean of the two halves' mean
    losses is the whole batch's, so the averaged gradients, and the updates, are the same."""
    cfg = _cfg(ckpt_every=3)
    _launch(tmp_path / "dp", cfg, batch_size=8)
    seed_everything(0)
    single = Trainer(cfg, TinyMLP(), mse_loss, StatefulLoader(regression_data(n=64), 8, seed=1), tmp_path / "one")
    single.train()
    rank0, rank1 = _weights(tmp_path / "dp", 0), _weights(tmp_path / "dp", 1)
    for name, value in single.model.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), f"{name}: the processes drifted apart"
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(rank0["inp.weight"], TinyMLP().inp.weight)  # it trained
    # rank 0 alone logs; the checkpoints hold both processes' data positions
    logged = [json.loads(line) for line in (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    state = json.loads((tmp_path / "dp" / "step_00000006" / "state.json").read_text())
    assert [r["data"]["shard"] for r in state["ranks"]] == [[0, 2], [1, 2]]


def test_a_crashed_group_resumes_exactly(tmp_path):
    cfg = _cfg(max_steps=8, ckpt_every=2)
    _launch(tmp_path / "ref", cfg, batch_size=8, dropout=0.3)
    with pytest.raises(Exception, match="crash at call 7"):  # both processes fail at step 7, after checkpoint 6
        _launch(tmp_path / "run", cfg, batch_size=8, dropout=0.3, resume=False, crash_at_call=7)
    _launch(tmp_path / "run", cfg, batch_size=8, dropout=0.3, resume=True)
    assert _record(tmp_path / "run", 0)["resumed_from"] == 6
    for rank in (0, 1):
        reference, resumed = _weights(tmp_path / "ref", rank), _weights(tmp_path / "run", rank)
        for name, value in reference.items():
            assert torch.equal(value, resumed[name]), f"rank {rank}: {name}"
    # a group's checkpoint does not resume in one process: its data shards and RNG states are per process
    seed_everything(0)
    data = StatefulLoader(regression_data(n=64), 8, seed=1)
    with pytest.raises(ValueError, match=r"written by 2 training process\(es\), this run has 1"):
        Trainer(cfg, TinyMLP(dropout=0.3), mse_loss, data, tmp_path / "run").train(resume=True)


def test_rank_0s_budget_refit_is_every_process_s(tmp_path):
    """A budgeted run's re-fit (here: to its step cap, 20 of 40, at step 8) is made by rank 0 and followed by the
    other process; one that kept its own steps would wait at a collective with no partner and time out."""
    cfg = _cfg(max_steps=40, budget_minutes=10.0, budget_cap=20, optim=OptimConfig(lr=1e-2, warmup_steps=2))
    _launch(tmp_path / "dp", cfg, batch_size=8)
    assert _record(tmp_path / "dp", 0) == _record(tmp_path / "dp", 1) == {
        "steps": 20, "max_steps": 20, "resumed_from": None
    }  # fmt: skip
    refits = json.loads((tmp_path / "dp" / "train_budget_refit.json").read_text())["refits"]
    assert [(r["at_step"], r["max_steps"]) for r in refits] == [(8, 20)]
