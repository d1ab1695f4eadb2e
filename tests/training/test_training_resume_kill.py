"""A run killed with SIGKILL mid-training and resumed ends bitwise identical to an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_toy_run import CKPT_EVERY, MAX_STEPS, run

from panglot.training import METRICS_FILE, latest_checkpoint
from panglot.training.checkpoint import MODEL_FILE, step_dir_name

SCRIPT = Path(__file__).with_name("train_toy_run.py")
HANG_AFTER = CKPT_EVERY + 2  # killed two steps past its first checkpoint


def _start(out_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), str(out_dir), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=SCRIPT.parent)


def _logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / METRICS_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    steps = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
            steps.append(json.loads(line)["step"])
    return steps


def _losses(out_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out_dir / METRICS_FILE).read_text().splitlines())}


def _wait_for_step(proc: subprocess.Popen, out_dir: Path, step: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while step not in _logged_steps(out_dir):
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"step {step} was not reached in {timeout_s} s"
        time.sleep(0.02)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    victim = _start(killed_dir, "--hang-after", str(HANG_AFTER))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as the script does: same kernels, same bits
        uninterrupted = run(full_dir)  # in this process, while the victim starts up
        _wait_for_step(victim, killed_dir, HANG_AFTER)
    finally:
        torch.set_num_threads(threads)
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert latest_checkpoint(killed_dir).name == step_dir_name(CKPT_EVERY)

    proc = _start(killed_dir, "--resume")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    resumed = json.loads(out.strip().splitlines()[-1])

    assert resumed["resumed_from"] == CKPT_EVERY
    assert resumed["steps"] == uninterrupted.steps == MAX_STEPS
    final = step_dir_name(MAX_STEPS)
    weights_a = load_file(str(full_dir / final / MODEL_FILE))
    weights_b = load_file(str(killed_dir / final / MODEL_FILE))
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    # records the killed run wrote past its checkpoint are replaced, not duplicated
    assert _logged_steps(killed_dir) == list(range(1, MAX_STEPS + 1))
    assert _losses(full_dir) == _losses(killed_dir)
