"""``init_from``: a unified run that starts from another run's last training checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from panglot.training.checkpoint import CheckpointError


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def test_a_run_starts_from_the_weights_of_another(tmp_path, debug_run, debug_config, run_unified):
    # one step at a vanishing rate: the exported weights are the first run's
    cfg = debug_config(tmp_path / "b", f"init_from={debug_run}", "train.max_steps=1", "train.optim.lr=1e-12")
    run_unified(cfg)
    started, source = _weights(tmp_path / "b" / "run"), _weights(debug_run)
    for name, value in source.items():
        torch.testing.assert_close(started[name], value, atol=1e-6, rtol=0, msg=name)
    fresh = debug_config(tmp_path / "c", "train.max_steps=1", "train.optim.lr=1e-12")
    run_unified(fresh)
    other = _weights(tmp_path / "c" / "run")  # without init_from: the seed's fresh weights
    assert any(not torch.allclose(other[name], value) for name, value in source.items())


def test_a_run_takes_the_tokenizer_of_the_run_it_starts_from(tmp_path, debug_run, debug_config, run_unified):
    # on fewer scenes' texts a tokenizer of its own would differ; the weights it starts from know the source's ids
    own = debug_config(tmp_path / "own", "tokenizer_scenes=20", "train.max_steps=1")
    run_unified(own)
    source = (debug_run.parent / "run" / "tokenizer" / "tokenizer.json").read_text()
    assert (tmp_path / "own" / "run" / "tokenizer" / "tokenizer.json").read_text() != source
    cfg = debug_config(tmp_path / "b", f"init_from={debug_run}", "tokenizer_scenes=20", "train.max_steps=1")
    run_unified(cfg)
    assert (tmp_path / "b" / "run" / "tokenizer" / "tokenizer.json").read_text() == source
    assert (tmp_path / "b" / "run" / "model" / "tokenizer" / "tokenizer.json").read_text() == source


def test_a_run_that_does_not_fit_is_named(tmp_path, debug_run, debug_config, run_unified):
    other_size = debug_config(tmp_path / "d", f"init_from={debug_run}", "model.size=tiny", "train.max_steps=1")
    with pytest.raises(CheckpointError, match="cannot load into UnifiedModel"):
        run_unified(other_size)
    with pytest.raises(FileNotFoundError, match="holds no training checkpoint"):
        run_unified(debug_config(tmp_path / "e", f"init_from={tmp_path / 'nowhere'}", "train.max_steps=1"))
