"""The unified recipe trained by two data-parallel processes (``processes: 2``): a budget fitted and followed by
both, one export that loads and serves, and a checkpoint with both processes' data positions."""

from __future__ import annotations

import json

import pytest

import panglot
from panglot.config import load_config
from panglot.world.dataset import split_scenes
from panglot.world.render import render_batch
from recipes import train_unified


def test_two_processes_train_a_run_that_loads_and_serves(tmp_path, debug_config):
    cfg = debug_config(tmp_path, "processes=2", "threads=1", "packing.enabled=true")
    train_unified.run(cfg, minutes=5.0)  # a budget both processes probe and fit to (30 steps fit)
    run = tmp_path / "run"
    assert json.loads((run / "train_budget.json").read_text())["max_steps"] == 30
    state = json.loads((run / "train" / "step_00000030" / "state.json").read_text())
    assert [r["data"]["order"]["shard"] for r in state["ranks"]] == [[0, 2], [1, 2]]
    losses = [json.loads(line)["loss"] for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < losses[0]
    m = panglot.load(run)
    image = render_batch(split_scenes("test-seen", 1, 0))[0]
    assert isinstance(m.caption([image])[0], str) and len(m.draw(["a red circle"], seed=0)) == 1
    with pytest.raises(ValueError, match="processes must be >= 1"):
        train_unified.run(load_config(train_unified.UnifiedRecipe, None, ["processes=0"]))
