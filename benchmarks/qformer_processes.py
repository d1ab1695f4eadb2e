"""The layout Q-Former codec's training on both cores: one process of two threads against two data-parallel
processes of one thread each (``processes: 2``), the same global batch of 16, and one process of one thread.

Each arm is a real ``recipes/train_qformer_codec.py`` run of ``configs/codec_qformer_layout.yaml`` (pool of frozen
features, both stages) at fixed steps on a trained teacher and pixel codec; the figure is the median of each
stage's logged step times (``step_time_s``, windows of 25 steps: forward, backward, the group's gradient
all-reduce and gathers, optimizer) after its first ``--skip`` steps. Rounds alternate the arms, so load from other
jobs hits both alike.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/qformer_processes.py \\
        --teacher-dir runs/dual_encoder --pixel-codec-dir runs/codec_pixel
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
from recipes.train_qformer_codec import QFormerRecipe, run

ARMS = {  # name -> (processes, threads in all); the first is the baseline
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread": (2, 2),
    "1 process x 1 thread": (1, 1),
}
STAGES = ("qformer_train", "detokenizer_train")


def step_times(out: Path, stage: str, skip: int) -> list[float]:
    records = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
    return [r["step_time_s"] for r in records if "step_time_s" in r and r["step"] > skip]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-dir", default="runs/dual_encoder")
    parser.add_argument("--pixel-codec-dir", default="runs/codec_pixel")
    parser.add_argument("--steps", type=int, default=200, help="steps of each stage")
    parser.add_argument("--skip", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pool", type=int, default=512)
    args = parser.parse_args()
    times = {(name, stage): [] for name in ARMS for stage in STAGES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in list(ARMS) if round_ % 2 == 0 else list(reversed(ARMS)):
                processes, threads = ARMS[name]
                out = Path(tmp) / f"{round_}-{processes}x{threads}"
                cfg = load_config(
                    QFormerRecipe,
                    "configs/codec_qformer_layout.yaml",
                    [f"out_dir={out}", f"teacher_dir={args.teacher_dir}", f"pixel_codec_dir={args.pixel_codec_dir}",
                     f"processes={processes}", f"threads={threads}", f"pool={args.pool}",
                     *(f"{s}.{k}" for s in STAGES for k in ("max_minutes=null", f"max_steps={args.steps}",
                                                            "ckpt_every=0")),
                     "eval.n_images=8", "eval.splits=[val]"],
                )  # fmt: skip
                torch.set_num_threads(threads)
                run(cfg)
                for stage in STAGES:
                    times[name, stage] += step_times(out, stage, args.skip)
                print(f"round {round_} {name}: " + ", ".join(
                    f"{stage} {statistics.median(times[name, stage]):.3f} s/step" for stage in STAGES), flush=True)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.rounds} round(s) of "
          f"{args.steps} steps a stage (first {args.skip} left out), global batch 16\n")  # fmt: skip
    print("| arm | stage 1 s/step | stage 2 s/step | stage 1 steps/s vs first | stage 2 steps/s vs first |")
    print("| --- | --- | --- | --- | --- |")
    first = next(iter(ARMS))
    base = [statistics.median(times[first, stage]) for stage in STAGES]
    for name in ARMS:
        med = [statistics.median(times[name, stage]) for stage in STAGES]
        print(f"| {name} | {med[0]:.3f} | {med[1]:.3f} | {base[0] / med[0]:.2f}x | {base[1] / med[1]:.2f}x |")


if __name__ == "__main__":
    main()
