"""Strict dataclass <- dict/YAML conversion with dotted overrides (``train.optim.lr=3e-4``)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not fit its schema; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = errors
        where = f" in {source}" if source else ""
        super().__init__(f"{len(errors)} config error(s){where}:\n  " + "\n  ".join(errors))


def _unknown_key(path: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{path}{key}'{hint}; valid keys: {', '.join(valid)}"


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    """Convert ``value`` to type ``tp``; append a message to ``errors`` and return None when it doesn't fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            errors.append(f"'{path}' must be a mapping of {tp.__name__} fields, got {type(value).__name__}")
            return None
        return _build(tp, value, path + ".", errors)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _convert(arg, value, path, trial)
            if not trial:
                return out
        errors.append(f"'{path}' expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            errors.append(f"'{path}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            errors.append(f"'{path}' expected a list, got {value!r}")
            return None
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"'{path}' expected a mapping, got {value!r}")
            return None
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _convert(val_tp, v, f"{path}.{k}", errors) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"'{path}' expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads '3e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"'{path}' expected a number, got {value!r}")
            return None
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"'{path}' expected an integer, got {value!r}")
            return None
        return value
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"'{path}' expected a string, got {value!r}")
            return None
        return value
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type[T], data: dict, prefix: str, errors: list[str]) -> T | None:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    valid = list(fields)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            errors.append(_unknown_key(prefix, str(key), valid))
            continue
        kwargs[key] = _convert(hints[key], value, prefix + key, errors)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    errors.extend(f"missing required key '{prefix}{name}'" for name in missing)
    if errors:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a dataclass's own __post_init__ validation
        errors.append(f"'{prefix.rstrip('.') or cls.__name__}': {exc}")
        return None


def from_dict(cls: type[T], data: dict | None, source: str | None = None) -> T:
    """Build dataclass ``cls`` from a plain dict, strictly (unknown keys and bad types are errors)."""
    errors: list[str] = []
    out = _build(cls, data or {}, "", errors)
    if errors:
        raise ConfigError(errors, source)
    return out  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict:
    """A dataclass config as plain, YAML/JSON-serialisable data."""
    return dataclasses.asdict(cfg)


class Whole(dict):
    """A mapping given whole on the command line (``data.task_probs={vqa: 1.0}``): it replaces the config's
    mapping instead of being merged into it, so keys it leaves out are gone (``data.task_probs.vqa=1.0`` sets one
    key and keeps the others)."""


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["train.optim.lr=3e-4", "model.size=small"]`` -> nested dict; values are parsed as YAML. A mapping value
    (``key={a: 1}``) is a `Whole`: `merge_dicts` puts it in place of the mapping it overrides."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"override {item!r} is not of the form key.path=value"])
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"override {item!r} sets a field inside a non-mapping value"])
        value = yaml.safe_load(raw) if raw.strip() else ""
        node[parts[-1]] = Whole(value) if isinstance(value, dict) else value
    return out


def merge_dicts(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, recursively for nested mappings (neither input is changed); a `Whole`
    mapping of ``extra`` replaces ``base``'s and stays a `Whole`, so merging a merge onto a config gives what merging
    each in turn gives (`from_dict` builds plain dicts from it)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Whole):
            out[key] = Whole(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Load ``cls`` from a YAML file (optional) with dotted ``key=value`` overrides applied on top."""
    data: dict = {}
    source = None
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file not found: {p}"], source)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from exc
        if not isinstance(data, dict):
            raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], source)
    data = merge_dicts(data, parse_overrides(list(overrides)))
    return from_dict(cls, data, source)
