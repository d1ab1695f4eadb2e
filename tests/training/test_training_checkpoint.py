import json

import pytest
import torch
from torch import nn
from training_toys import TinyMLP

from panglot.training import (
    CHECKPOINT_KIND,
    FORMAT_VERSION,
    CheckpointError,
    OptimConfig,
    build_optimizer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from panglot.training import checkpoint as ckpt_module
from panglot.training.checkpoint import prune_checkpoints, remove_stale_temporaries


def _trained_model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyMLP()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2))
    for _ in range(2):
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_and_state(tmp_path):
    model, optimizer = _trained_model_and_optimizer()
    path = save_checkpoint(tmp_path, 7, model, optimizer, {"data": {"epoch": 1, "position": 3}})
    assert path == tmp_path / "step_00000007" == latest_checkpoint(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors", "optimizer.json", "optimizer.safetensors", "state.json",
    ]  # fmt: skip

    fresh, fresh_opt = _trained_model_and_optimizer(seed=1)
    state = load_checkpoint(path, fresh, fresh_opt)
    assert state["kind"] == CHECKPOINT_KIND and state["format_version"] == FORMAT_VERSION
    assert state["step"] == 7 and state["data"] == {"epoch": 1, "position": 3}
    assert set(state["versions"]) >= {"panglot", "torch", "safetensors"}
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    saved, loaded = optimizer.state_dict(), fresh_opt.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)


def test_tied_weights_are_stored_once_and_reloaded(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(6, 4)
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    path = save_checkpoint(tmp_path, 1, model, build_optimizer(model, OptimConfig()), {})
    fresh = Tied()
    load_checkpoint(path, fresh)
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_a_write_that_dies_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _trained_model_and_optimizer()
    first = save_checkpoint(tmp_path, 1, model, optimizer, {})

    def die(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "_write_json", die)  # dies after the safetensors files are written
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model, optimizer, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]
    assert latest_checkpoint(tmp_path) == first


def test_temporaries_of_a_killed_writer_are_ignored_then_removed(tmp_path):
    model, optimizer = _trained_model_and_optimizer()
    save_checkpoint(tmp_path, 1, model, optimizer, {})
    (tmp_path / ".tmp-step_00000002-abc").mkdir()  # what SIGKILL mid-write leaves
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]


def test_keep_last_prunes_oldest(tmp_path):
    model, optimizer = _trained_model_and_optimizer()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, optimizer, {})
    prune_checkpoints(tmp_path, keep_last=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert latest_checkpoint(tmp_path).name == "step_00000004"


def _rewrite_state(path, **changes):
    state_file = path / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), **changes}))
    return state_file


def test_wrong_kind_is_a_clear_error(tmp_path):
    model, optimizer = _trained_model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, model, optimizer, {})
    state_file = _rewrite_state(path, kind="panglot.codec")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model)
    assert str(err.value) == f"{state_file}: expected kind 'panglot.train_state', found 'panglot.codec'"


def test_newer_format_version_is_a_clear_error(tmp_path):
    model, optimizer = _trained_model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, model, optimizer, {})
    state_file = _rewrite_state(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(
        CheckpointError, match=rf"{state_file}: format version {FORMAT_VERSION + 1} .* <= {FORMAT_VERSION}"
    ):
        load_checkpoint(path, model)


def test_missing_checkpoint_and_mismatched_model_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"state.json: not found; expected a 'panglot.train_state'"):
        load_checkpoint(tmp_path, TinyMLP())
    model, optimizer = _trained_model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, model, optimizer, {})
    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot load into TinyMLP"):
        load_checkpoint(path, TinyMLP(hidden=8))
    model.out.requires_grad_(False)  # a different freeze: the optimizer groups no longer match
    with pytest.raises(CheckpointError, match=r"optimizer.json: optimizer parameter groups do not match"):
        load_checkpoint(path, model, build_optimizer(model, OptimConfig()))
