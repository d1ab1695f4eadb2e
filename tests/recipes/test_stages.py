"""The stage graph: a stage trains what it needs first, gets its dependencies' directories as overrides,
and a finished stage is reused, not retrained."""

from __future__ import annotations

import json
import sys
import types

import pytest

from recipes import stages


def test_flatten_gives_the_recipes_dotted_overrides():
    nested = {"train": {"max_minutes": 1.0, "optim": {"betas": [0.9, 0.99]}}, "threads": None, "x": True}
    assert stages.flatten(nested) == ["train.max_minutes=1.0", "train.optim.betas=[0.9,0.99]", "threads=null", "x=true"]


def test_unknown_stage_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown stage 'pixel'.*pixel_vq"):
        stages.build("pixel", tmp_path)


@pytest.fixture
def recorded(monkeypatch):
    """Two toy recipes: ``leaf`` and ``top`` (which needs ``leaf`` as ``leaf_dir``); each records its argv
    and writes its completion file, as a real recipe's main(argv) would."""
    calls = []

    def make_main(name):
        def main(argv):
            calls.append((name, argv))
            out = next(a.split("=", 1)[1] for a in argv if a.startswith("out_dir="))
            (stages.Path(out)).mkdir(parents=True, exist_ok=True)
            (stages.Path(out) / "done.json").write_text(json.dumps(argv))

        return main

    for name in ("leaf", "top"):
        module = types.ModuleType(f"toy_recipe_{name}")
        module.main = make_main(name)
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(stages.STAGES, "leaf", stages.Stage("toy_recipe_leaf", "codec_pixel_vq.yaml", "done.json"))
    monkeypatch.setitem(
        stages.STAGES, "top", stages.Stage("toy_recipe_top", "codec_pixel_vq.yaml", "done.json", {"leaf_dir": "leaf"})
    )
    return calls


def test_dependencies_first_then_reuse(recorded, tmp_path):
    out = stages.build("top", tmp_path, {"top": {"train": {"max_steps": 3}}})
    assert out == tmp_path / "top"
    assert [name for name, _ in recorded] == ["leaf", "top"]
    top_argv = recorded[1][1]
    assert top_argv[0].endswith("codec_pixel_vq.yaml")
    assert f"out_dir={tmp_path / 'top'}" in top_argv and f"leaf_dir={tmp_path / 'leaf'}" in top_argv
    assert "train.max_steps=3" in top_argv and top_argv[-1] == "--resume"
    stages.build("top", tmp_path)
    assert len(recorded) == 2  # both complete: nothing retrained


def test_every_image_codec_is_a_stage():
    for name in stages.IMAGE_CODECS:
        stage = stages.STAGES[name]
        assert stages.Path(stages.config_path(stage.config)).is_file(), stage.config
        assert set(stage.needs.values()) <= set(stages.STAGES)
