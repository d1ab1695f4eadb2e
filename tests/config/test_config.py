from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from panglot.config import ConfigError, from_dict, load_config, merge_dicts, parse_overrides, to_dict


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Train:
    steps: int = 10
    precision: Literal["bf16", "fp32"] = "bf16"
    freeze: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)


@dataclass
class Recipe:
    name: str
    train: Train = field(default_factory=Train)
    note: str | None = None
    probs: dict[str, float] = field(default_factory=dict)


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: demo\ntrain:\n  steps: 5\n  optim:\n    lr: 0.01\n")
    cfg = load_config(Recipe, path, ["train.optim.lr=3e-4", "train.freeze=[enc.*]", "note=hi"])
    assert cfg.train.steps == 5
    assert cfg.train.optim.lr == pytest.approx(3e-4)
    assert cfg.train.freeze == ["enc.*"]
    assert cfg.note == "hi"
    assert to_dict(cfg)["train"]["optim"]["betas"] == (0.9, 0.95)


def test_a_mapping_given_whole_replaces_the_yamls_and_a_dotted_key_merges(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: demo\nprobs: {a: 0.4, b: 0.6}\n")
    assert load_config(Recipe, path, ["probs={b: 1.0}"]).probs == {"b": 1.0}
    assert load_config(Recipe, path, ["probs.b=1.0"]).probs == {"a": 0.4, "b": 1.0}
    assert load_config(Recipe, path, ["probs={c: 1.0}", "probs.d=2"]).probs == {"c": 1.0, "d": 2}
    # a whole section given as a mapping replaces it too: its other fields take their defaults
    assert load_config(Recipe, path, ["train={steps: 3}"]).train == Train(steps=3)


def test_a_mapping_given_whole_stays_whole_through_a_merge_of_overrides():
    # a stage's own overrides merged into another layer first, then onto the config: still a replacement
    layer = merge_dicts({"probs": parse_overrides(["probs={a: 1.0}"])["probs"]}, parse_overrides(["probs={b: 1.0}"]))
    merged = merge_dicts({"name": "x", "probs": {"a": 0.4, "c": 0.6}}, layer)
    assert merged["probs"] == {"b": 1.0}
    cfg = from_dict(Recipe, merged)
    assert cfg.probs == {"b": 1.0} and type(cfg.probs) is dict  # the config holds a plain mapping


def test_unknown_key_names_it_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        from_dict(Recipe, {"name": "x", "train": {"stpes": 3}})
    msg = str(err.value)
    assert "train.stpes" in msg and "did you mean 'steps'" in msg and "precision" in msg


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as err:
        from_dict(Recipe, {"train": {"steps": "many", "precision": "fp8", "optim": {"lr": "fast"}}})
    errors = err.value.errors
    assert len(errors) == 4  # steps, precision, optim.lr, missing name
    assert any("train.precision" in e and "fp8" in e for e in errors)
    assert any("missing required key 'name'" in e for e in errors)


def test_int_is_not_bool_and_float_accepts_int():
    assert from_dict(Recipe, {"name": "x", "train": {"optim": {"lr": 1}}}).train.optim.lr == 1.0
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(Recipe, {"name": "x", "train": {"steps": True}})


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        parse_overrides(["train.steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Recipe, tmp_path / "nope.yaml")
