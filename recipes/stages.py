"""The pipeline's training stages and what each one needs, shared by the quickstart and the experiments.

A stage is a recipe (the ``recipes.<module>.main(argv)`` the CLI's ``panglot train`` runs) with its YAML in
``configs/``; it writes its output directory and depends on the directories of the stages it ``needs``
(passed as overrides, e.g. ``teacher_dir=...``). The image codec is a config choice:

    pixel_vq     pixel VQ (64 ids)                       needs nothing
    semantic_vq  ILLUME semantic VQ (64 ids)             needs the dual encoder (teacher)
    qformer      SEED causal Q-Former (32 ids) + DDIM    needs the dual encoder and the pixel VQ codec
    qformer_layout  the same reading the pixel codes too, with a raster prior (beyond SEED; docs/codecs.md)

``build(name, root, overrides)`` trains a stage and everything it needs under ``root/<stage>/``, reusing
any stage whose output is already complete, so an interrupted pipeline continues where it stopped.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import configs

logger = logging.getLogger("panglot.recipes.stages")


@dataclass(frozen=True)
class Stage:
    module: str  # recipes.<module> with main(argv)
    config: str  # YAML in configs/
    done_file: str  # the file whose presence marks a complete output directory
    needs: Mapping[str, str] = field(default_factory=dict)  # override key -> stage name


STAGES: dict[str, Stage] = {
    "dual_encoder": Stage("recipes.train_dual_encoder", "dual_encoder.yaml", "encoder.json"),
    "pixel_vq": Stage("recipes.train_codec", "codec_pixel_vq.yaml", "codec.json"),
    "semantic_vq": Stage(
        "recipes.train_semantic_codec", "codec_semantic_vq.yaml", "codec.json", {"teacher_dir": "dual_encoder"}
    ),
    "qformer": Stage(
        "recipes.train_qformer_codec",
        "codec_qformer.yaml",
        "codec.json",
        {"teacher_dir": "dual_encoder", "pixel_codec_dir": "pixel_vq"},
    ),
    "qformer_layout": Stage(
        "recipes.train_qformer_codec",
        "codec_qformer_layout.yaml",
        "codec.json",
        {"teacher_dir": "dual_encoder", "pixel_codec_dir": "pixel_vq"},
    ),
}
IMAGE_CODECS = ("pixel_vq", "semantic_vq", "qformer", "qformer_layout")


def config_path(name: str) -> str:
    """Path of a YAML shipped in ``configs/`` (works from a checkout and from an installed wheel)."""
    return str(resources.files(configs).joinpath(name))


def flatten(overrides: Mapping, prefix: str = "") -> list[str]:
    """``{"train": {"max_minutes": 1}}`` -> ``["train.max_minutes=1"]`` (the recipes' dotted overrides)."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={_yaml_scalar(value)}")
    return out


def _yaml_scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_yaml_scalar(v) for v in value) + "]"
    return str(value)


def build(
    name: str, root: str | Path, overrides: Mapping[str, Mapping] | None = None, resume: bool = True
) -> Path:
    """Train stage ``name`` (and first every stage it needs) under ``root``; returns its directory.

    ``overrides`` maps stage names to nested overrides of their YAML (``{"pixel_vq": {"train":
    {"max_minutes": 1}}}``); a stage whose ``done_file`` exists is reused as it is.
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    stage, overrides = STAGES[name], overrides or {}
    out = Path(root) / name
    if (out / stage.done_file).is_file():
        logger.info("%s: reusing %s", name, out)
        return out
    argv = [config_path(stage.config), f"out_dir={out}"]
    argv += [f"{key}={build(dep, root, overrides, resume)}" for key, dep in stage.needs.items()]
    argv += flatten(overrides.get(name, {}))
    logger.info("%s: training (%s)", name, " ".join(argv[1:]))
    importlib.import_module(stage.module).main(argv + (["--resume"] if resume else []))
    return out
