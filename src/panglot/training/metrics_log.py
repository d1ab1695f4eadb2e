"""Training metrics: one JSON line per record in ``metrics.jsonl``, optionally mirrored to TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from panglot.files import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, out_dir: str | Path, tensorboard: bool = False):
        self.path = Path(out_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def write(self, step: int, values: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_after(out_dir: str | Path, step: int) -> None:
    """Drop records past ``step`` (written by a run that died after its last checkpoint) before resuming."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if (s := _step_of(line)) is not None and s <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> int | None:
    """The record's step, or None for a blank line or one cut short by a killed process."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
