"""A trained unified model on disk: ``RUN/model/`` holds everything needed to load it, nothing pickled.

    RUN/model/run.json           kind, format version, backbone config, vocabulary layout, defaults
    RUN/model/model.safetensors  backbone weights
    RUN/model/tokenizer/         the text tokenizer (tokenizer.json, words.json, ...)
    RUN/model/codec/             the image codec (codec.safetensors, codec.json)

The directory is written under a temporary name and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import panglot
from panglot.backbone import Transformer, TransformerConfig
from panglot.codecs import load_codec
from panglot.codecs.text import TextTokenizer
from panglot.files import atomic_write_json
from panglot.model.unified import UnifiedModel
from panglot.multimodal import UnifiedVocab
from panglot.nn.factored_rows import plain_state_dict

KIND = "panglot.unified_model"
FORMAT_VERSION = 1
MODEL_DIR = "model"


class RunLoadError(ValueError):
    """A run directory that cannot be loaded: names the path, what was expected and what was found."""


def save_model(run_dir: str | os.PathLike, model: UnifiedModel, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (backbone, vocabulary, tokenizer, codec) to ``RUN/model/`` atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / MODEL_DIR
    tmp = run_dir / f".{MODEL_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # parametrized rows (UnifiedModelConfig.code_factors) are written as the computed matrix
        weights = {k: v.detach().cpu().contiguous() for k, v in plain_state_dict(model.backbone).items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"kind": KIND})
        model.vocab.text.save(tmp / "tokenizer")
        model.codec.save(tmp / "codec", metrics=getattr(model.codec, "metrics", None))
        meta = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "panglot_version": panglot.__version__,
            "backbone": dataclasses.asdict(model.backbone.cfg),
            "vocab": model.vocab.to_json(),
            "image_slot": model.image_slot,
            "layout": model.layout.options,
            **(extra or {}),
        }
        (tmp / "run.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        old = run_dir / f".{MODEL_DIR}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_run_meta(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The validated ``run.json`` of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunLoadError(f"run directory {run_dir} does not exist")
    path = run_dir / MODEL_DIR / "run.json"
    if not path.is_file():
        raise RunLoadError(f"{run_dir} is not a trained panglot run: {path} is missing (train one first)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunLoadError(f"{path} is not valid JSON: {exc}") from exc
    if meta.get("kind") != KIND:
        raise RunLoadError(f"{path}: expected kind {KIND!r}, found {meta.get('kind')!r}")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise RunLoadError(
            f"{path}: format version {meta.get('format_version')!r} is newer than this panglot reads "
            f"({FORMAT_VERSION}); upgrade panglot"
        )
    return meta


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UnifiedModel, dict]:
    """Load ``RUN/model/`` -> (UnifiedModel in eval mode, run.json)."""
    meta = read_run_meta(run_dir)
    root = Path(run_dir) / MODEL_DIR
    tokenizer = TextTokenizer.load(root / "tokenizer")
    codec = load_codec(root / "codec", map_location=device)
    vocab = UnifiedVocab.from_json(tokenizer, meta["vocab"])
    backbone = Transformer(TransformerConfig(**meta["backbone"]))
    state = load_file(str(root / "model.safetensors"), device=str(device))
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunLoadError(f"{root / 'model.safetensors'}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    # runs saved before the layout switches have none: the layout's defaults are how they were trained
    model = UnifiedModel(backbone.to(device), vocab, codec, image_slot=meta["image_slot"], **meta.get("layout", {}))
    return model.eval(), meta


def update_run_meta(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``RUN/model/run.json`` (atomically), e.g. ``generation={"cfg_scale": 2.5}``."""
    meta = read_run_meta(run_dir)
    meta.update(fields)
    atomic_write_json(Path(run_dir) / MODEL_DIR / "run.json", meta, indent=2, sort_keys=True)
    return meta
