"""Atomic file writes: the content goes to a temporary sibling that is then renamed over the target, so a
reader, or a run killed mid-write, never sees half a file. ``durable=True`` also fsyncs the file and its
directory (checkpoints), so the rename survives a power cut."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], durable: bool = False) -> None:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text), durable)


def atomic_write_json(path: str | os.PathLike, data: Any, durable: bool = False, **dumps: Any) -> None:
    """``data`` as JSON (``dumps`` go to ``json.dumps``, e.g. ``indent=2``), newline-terminated."""
    atomic_write_text(path, json.dumps(data, **dumps) + "\n", durable)
