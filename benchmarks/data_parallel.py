"""The quickstart's unified training on both cores: one process of two threads against two data-parallel
processes of one thread each (``processes: 2``, ``panglot.training.distributed``), the same global batch.

Each arm is a real ``recipes/train_unified.py`` run of the quickstart's YAML (compiled blocks, packed batches,
Muon) on a trained codec, ``--steps`` steps each; the figure is the median of the metrics log's step times
(``step_time_s``, windows of 10 steps: forward, backward, gradient all-reduce, optimizer) after the first
``--skip`` steps (compilation, warm caches), and of its real (non-pad) tokens a second, summed over the processes
(two processes pack 16 documents each, which can take a row more than 32 in one). Whole-command timers
(farm-bench) would mostly time each run's set-up (the mixture encoded, the blocks compiled: ~1.5 min here), which a
quickstart pays once. Rounds alternate the arms, so load from other jobs hits both alike.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/data_parallel.py --codec-dir runs/quickstart/stages/pixel_vq
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from panglot.config import load_config
from recipes.train_unified import UnifiedRecipe, run

ARMS = {  # name -> (processes, threads each); the first is the baseline
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread": (2, 1),
    "1 process x 1 thread": (1, 1),  # what a second thread buys, for reference
}


def window_figures(out: Path, skip: int, name: str) -> list[float]:
    """``name`` (step_time_s, tokens_per_s) of each logged window after step ``skip``."""
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    return [r[name] for r in records if name in r and r["step"] > skip]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec-dir", default="runs/quickstart/stages/pixel_vq")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--skip", type=int, default=30, help="steps left out of the timing (compilation)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=2000, help="training scenes (the step does not depend on it)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    rates: dict[str, list[float]] = {name: [] for name in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = list(ARMS) if round_ % 2 == 0 else list(reversed(ARMS))
            for name in order:
                processes, threads = ARMS[name]
                out = Path(tmp) / f"{round_}-{processes}x{threads}"
                cfg = load_config(
                    UnifiedRecipe,
                    "configs/unified_quickstart.yaml",
                    [f"out_dir={out}", f"codec_dir={args.codec_dir}", f"processes={processes}", f"threads={threads}",
                     f"data.n_scenes={args.scenes}", f"train.max_steps={args.steps}", "train.log_every=10",
                     "train.ckpt_every=0"],
                )  # fmt: skip
                torch.set_num_threads(threads)
                run(cfg)
                step = window_figures(out, args.skip, "step_time_s")
                times[name] += step
                rates[name] += window_figures(out, args.skip, "tokens_per_s")
                print(f"round {round_} {name}: median {statistics.median(step):.3f} s/step")
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.rounds} rounds of "
          f"{args.steps} steps (first {args.skip} left out), global batch ~32 documents\n")  # fmt: skip
    print("| arm | s/step (median) | tokens/s (median) | steps/s vs 1 process | tokens/s vs 1 process |")
    print("| --- | --- | --- | --- | --- |")
    first = next(iter(ARMS))
    base_step, base_rate = statistics.median(times[first]), statistics.median(rates[first])
    for name in ARMS:
        step, rate = statistics.median(times[name]), statistics.median(rates[name])
        print(f"| {name} | {step:.3f} | {rate:.0f} | {base_step / step:.2f}x | {rate / base_rate:.2f}x |")


if __name__ == "__main__":
    main()
