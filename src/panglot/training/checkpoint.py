"""Self-describing, atomically written training checkpoints: safetensors + JSON, never pickle.

Layout of ``out_dir``::

    latest                      # text file: name of the newest complete checkpoint directory
    step_00000500/
      model.safetensors         # model weights (shared / tied tensors stored once)
      optimizer.safetensors     # optimizer state tensors, keyed "<param index>.<name>"
      optimizer.json            # optimizer param groups (with parameter names) and non-tensor state
      state.json                # kind, format version, step, config, data position, RNG states, versions

A checkpoint is written into a hidden temporary directory, fsynced, then renamed into place, and only
then is ``latest`` replaced (also atomically), so a run killed at any moment leaves either the previous
checkpoint or the new one, never a partial one.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from panglot.files import atomic_write_text, fsync_path

CHECKPOINT_KIND = "panglot.train_state"
FORMAT_VERSION = 1
LATEST = "latest"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
STATE_FILE = "state.json"
_TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, of another kind, too new, or does not fit the model/optimizer."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(
    out_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> Path:
    """Write ``out_dir/step_XXXXXXXX`` atomically, point ``latest`` at it, and return its path.

    ``state`` (JSON-serialisable: config, data position, RNG states, ...) is stored in ``state.json``
    next to the kind, format version, step and library versions.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=out_dir))
    try:
        _write_checkpoint(tmp, step, model, optimizer, state)
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            _remove_dir(final)
        os.rename(tmp, final)
        fsync_path(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(out_dir / LATEST, final.name + "\n", durable=True)
    return final


def _write_checkpoint(
    ckpt: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    save_model(model, str(ckpt / MODEL_FILE), force_contiguous=True)
    tensors, meta = _flatten_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(ckpt / OPTIMIZER_FILE))
    _write_json(ckpt / OPTIMIZER_META_FILE, meta)
    header = {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "step": step}
    _write_json(ckpt / STATE_FILE, {**header, **state, "versions": library_versions()})
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        fsync_path(ckpt / name)
    fsync_path(ckpt)


def load_checkpoint(
    ckpt_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict:
    """Load weights (and optimizer state when given) from ``ckpt_dir``; return the ``state.json`` content."""
    ckpt_dir = Path(ckpt_dir)
    state = read_state(ckpt_dir)
    device = next(model.parameters()).device
    model_file = ckpt_dir / MODEL_FILE
    try:
        load_model(model, str(model_file), strict=True, device=str(device))
    except (RuntimeError, OSError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"{model_file}: cannot load into {type(model).__name__}: {exc}") from exc
    if optimizer is not None:
        _load_optimizer(ckpt_dir, optimizer)
    return state


def read_state(ckpt_dir: str | Path) -> dict:
    """``state.json`` of a checkpoint, after checking it is a training checkpoint this version can read."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a '{CHECKPOINT_KIND}' checkpoint directory")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind != CHECKPOINT_KIND:
        raise CheckpointError(f"{path}: expected kind '{CHECKPOINT_KIND}', found {kind!r}")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version!r} is not readable by this panglot "
            f"(expected an integer <= {FORMAT_VERSION}); upgrade panglot to load it"
        )
    return state


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint ``out_dir/latest`` points to, or None when no checkpoint was written yet."""
    pointer = Path(out_dir) / LATEST
    if not pointer.is_file():
        return None
    ckpt = Path(out_dir) / pointer.read_text().strip()
    if not ckpt.is_dir():
        raise CheckpointError(f"{pointer}: points to {ckpt.name!r}, which is not a directory")
    return ckpt


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``out_dir`` as ``(step, path)``, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(m, p) for p in out_dir.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return sorted((int(m.group(1)), p) for m, p in found)


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (never the one ``latest`` points to)."""
    latest = latest_checkpoint(out_dir)
    for _, path in list_checkpoints(out_dir)[:-keep_last]:
        if path != latest:
            _remove_dir(path)


def remove_stale_temporaries(out_dir: str | Path) -> None:
    """Remove half-written checkpoint directories left by a process killed while saving."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if path.name.startswith(_TMP_PREFIX) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def library_versions() -> dict[str, str]:
    return {
        "panglot": importlib.metadata.version("panglot"),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors ("<param index>.<name>") and JSON-able structure."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalar_state": scalars}


def _load_optimizer(ckpt_dir: Path, optimizer: torch.optim.Optimizer) -> None:
    meta_file = ckpt_dir / OPTIMIZER_META_FILE
    meta = json.loads(meta_file.read_text())
    saved_names = [g.get("param_names") for g in meta["param_groups"]]
    current_names = [g.get("param_names") for g in optimizer.param_groups]
    if saved_names != current_names:
        raise CheckpointError(
            f"{meta_file}: optimizer parameter groups do not match (different model, freeze patterns or optim.algorithm?); "
            f"expected {_describe_groups(current_names)}, found {_describe_groups(saved_names)}"
        )
    state: dict[int, dict] = {}
    for key, tensor in load_file(str(ckpt_dir / OPTIMIZER_FILE)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in meta["scalar_state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [_like(saved, current) for saved, current in zip(meta["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _like(saved: dict, current: dict) -> dict:
    """JSON turned tuples (e.g. AdamW's ``betas``) into lists: give back the types the optimizer uses."""
    return {k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()}


def _describe_groups(groups: list[list[str] | None]) -> str:
    return "; ".join(
        f"group {i}: {len(names or [])} params ({', '.join((names or [])[:3])}...)"
        for i, names in enumerate(groups)
    )


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _remove_dir(path: Path) -> None:
    """Rename out of sight first, so a half-deleted directory never looks like a checkpoint."""
    trash = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}trash-", dir=path.parent))
    os.rename(path, trash / path.name)
    shutil.rmtree(trash)

