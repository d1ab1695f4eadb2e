"""A small training run for the kill-and-resume test: ``python train_toy_run.py OUT_DIR [--resume]``.

Tiny causal LM with dropout, seeded stateful loader, grad accumulation 2, bf16 autocast, a checkpoint
every 4 of 12 steps. ``--hang-after N`` stops (sleeps) after step N, waiting to be killed. Prints the
summary as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from training_toys import TinyLM, counting_sequences, lm_loss

from panglot.data.loader import StatefulLoader
from panglot.training import OptimConfig, TrainConfig, Trainer, TrainSummary, seed_everything

MAX_STEPS = 12
CKPT_EVERY = 4


def run(out_dir: str | Path, resume: bool = False, hang_after: int | None = None) -> TrainSummary:
    seed_everything(0)
    model = TinyLM(dropout=0.2)
    data = StatefulLoader(counting_sequences(n=40), batch_size=4, seed=3)
    cfg = TrainConfig(
        optim=OptimConfig(lr=3e-3, warmup_steps=3, min_lr_ratio=0.1, grad_clip=0.5),
        max_steps=MAX_STEPS,
        grad_accum=2,
        precision="bf16",
        seed=7,
        log_every=1,
        ckpt_every=CKPT_EVERY,
        keep_last=2,
    )

    def hang(trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.step == hang_after:
            time.sleep(600)

    return Trainer(cfg, model, lm_loss, data, out_dir, callbacks=[hang]).train(resume=resume)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang-after", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    summary = run(args.out_dir, resume=args.resume, hang_after=args.hang_after)
    print(json.dumps(asdict(summary), default=str), flush=True)


if __name__ == "__main__":
    main()
