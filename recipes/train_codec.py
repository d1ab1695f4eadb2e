"""Train the pixel VQ image codec on ShapesWorld ``train`` scenes and measure what it keeps.

    python recipes/train_codec.py configs/codec_pixel_vq.yaml train.max_minutes=3 out_dir=runs/codec
    python recipes/train_codec.py configs/codec_pixel_vq.yaml out_dir=runs/codec --resume

Reports, per evaluation split (``val``, ``test-unseen`` by default): PSNR, codebook usage (share of the
vocabulary used on the split's images) and the oracle-preserved rate (share of images whose oracle-parsed
scene survives encode -> decode). Writes ``OUT/train/`` (checkpoints, metrics.jsonl), ``OUT/codec.safetensors``,
``OUT/codec.json`` (with the metrics) and ``OUT/metrics.json``.

Training is ``panglot.training.Trainer``, as for every stage: AdamW, warmup + cosine, bf16 autocast,
checkpoints and exact resume. A ``train.max_minutes`` budget is turned into a step count *before* training
by timing a few steps on this machine (``panglot.training.budget``: ``min(max_steps, what fits)``, kept in
``OUT/train_budget.json``), so the schedule is fixed from the start and a resumed run trains the same steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panglot.codecs.image_vq import PixelVQ, PixelVQConfig, pixel_vq_loss
from panglot.config import load_config, to_dict
from panglot.data.world_images import WorldImages
from panglot.evaluation.codec import evaluate_image_codec
from panglot.files import atomic_write_json
from panglot.nn.precision import autocast_context, resolve_device
from panglot.training import Callback, OptimConfig, TrainConfig, Trainer
from panglot.training.budget import budgeted, median_step_seconds
from panglot.world.dataset import split_scenes

logger = logging.getLogger("panglot.recipes.train_codec")


@dataclass
class CodecOptimConfig(OptimConfig):
    """The trainer's AdamW + warmup/cosine with the codec's defaults (a small conv net likes a high lr)."""

    lr: float = 8e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05


@dataclass
class CodecTrainConfig(TrainConfig):
    """The trainer's config plus the codec's batch, loss weights and wall-clock budget."""

    optim: CodecOptimConfig = field(default_factory=CodecOptimConfig)
    max_steps: int = 5000
    log_every: int = 50
    batch_size: int = 16  # more, smaller steps learn faster per CPU second (docs/codecs.md)
    max_minutes: float | None = 3.0  # -> min(max_steps, steps that fit), timed before training; None = steps
    l1_weight: float = 1.0  # rgb output: loss = MSE + l1_weight * L1
    fg_weight: float = 3.0  # weight of non-background pixels relative to background ones
    edge_weight: float = 10.0  # extra weight of pixels at a colour edge (small shapes are almost all edge)

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes must be > 0 or null, got {self.max_minutes}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class CodecEvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val", "test-unseen"])
    n_images: int = 1000  # per split
    batch_size: int = 250


@dataclass
class CodecRecipe:
    recipe: str = "codec"
    out_dir: str = "runs/codec"
    # torch intra-op threads; None = torch's default. 1 by default: these small convs gain little from a
    # second thread, and on a busy 2-core machine two spinning threads ran 25x fewer steps (docs/codecs.md).
    threads: int | None = 1
    data_seed: int = 0
    # the measured best for a short run (docs/codecs.md); the dataclass's own defaults keep older meanings
    codec: PixelVQConfig = field(
        default_factory=lambda: PixelVQConfig(res_blocks=0, encoder_input="mask_colour", code_split="shape_colour")
    )
    train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    eval: CodecEvalConfig = field(default_factory=CodecEvalConfig)


# --- training -------------------------------------------------------------------------------------------
def codec_loss(
    cfg: CodecTrainConfig, codec: PixelVQ, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """The trainer's ``loss_fn`` (bound to ``cfg`` with ``functools.partial``)."""
    return pixel_vq_loss(codec, x.to(codec.device), cfg.l1_weight, cfg.fg_weight, cfg.edge_weight)


def seconds_per_step(
    codec_cfg: PixelVQConfig, cfg: CodecTrainConfig, data_seed: int, device: str = "cpu"
) -> float:
    """Median forward + backward time of one training step (rendering included) on a throwaway codec."""
    codec = PixelVQ(copy.deepcopy(codec_cfg)).to(device).train()
    data = WorldImages(cfg.batch_size, data_seed)

    def step() -> None:
        with autocast_context(device, cfg.precision):
            loss, _ = codec_loss(cfg, codec, next(data))
        loss.backward()

    return median_step_seconds(step) * cfg.grad_accum


def planned_train(cfg: CodecRecipe, device: str = "cpu") -> CodecTrainConfig:
    """``cfg.train``, or with ``train.max_minutes`` its steps fitted once per run (``OUT/train_budget.json``; a
    resumed run reads it back) and the wall-clock guard armed (``panglot.training.budget.budgeted``)."""
    return budgeted(
        cfg.train,
        cfg.out_dir,
        cfg.train.max_minutes,
        lambda: seconds_per_step(cfg.codec, cfg.train, cfg.data_seed, device),
    )


def train(
    codec: PixelVQ,
    cfg: CodecTrainConfig,
    data_seed: int,
    out_dir: str | Path,
    resume: bool = False,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> dict[str, Any]:
    """Train in place for ``cfg.max_steps`` with checkpoints in ``out_dir``; returns a summary."""
    losses: list[float] = []

    def record_loss(trainer: Trainer, metrics: dict[str, float]) -> None:
        losses.append(metrics["loss"])

    data = WorldImages(cfg.batch_size, data_seed)
    trainer = Trainer(
        cfg, codec, partial(codec_loss, cfg), data, out_dir, callbacks=[record_loss, *callbacks]
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = trainer.train(resume=resume)
    codec.eval()
    return {
        "steps": summary.steps,
        "max_steps": trainer.cfg.max_steps,  # as re-fitted by a budget (TrainConfig.budget_minutes)
        "resumed_from": summary.resumed_from,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "first_loss": losses[0] if losses else None,  # of this run's first step (after a resume: not step 1)
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }


def run(cfg: CodecRecipe, resume: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Train, evaluate and save the codec; returns the metrics (also in ``OUT/metrics.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    train_dir = out / "train"
    train_cfg = planned_train(cfg, device)
    torch.manual_seed(train_cfg.seed)
    codec = PixelVQ(cfg.codec).to(device)
    summary = train(codec, train_cfg, cfg.data_seed, train_dir, resume=resume)
    logger.info(
        "trained %d steps in %.0f s wall, %.0f s CPU", summary["steps"], summary["wall_s"], summary["cpu_s"]
    )
    metrics: dict[str, Any] = {"train": summary, "threads": torch.get_num_threads()}
    for split in cfg.eval.splits:
        scenes = split_scenes(split, cfg.eval.n_images, cfg.data_seed)
        metrics[split] = evaluate_image_codec(codec, scenes, cfg.eval.batch_size)
        logger.info("%s: %s", split, json.dumps(metrics[split]))
    codec.save(out, metrics=metrics)
    atomic_write_json(out / "metrics.json", {"config": to_dict(cfg), **metrics}, indent=2)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="recipe YAML (configs/codec_pixel_vq.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_minutes=1")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train's latest checkpoint")
    parser.add_argument(
        "--device", default="cpu", help="where to train: cpu (the recipes' figures), cuda, cuda:1, mps"
    )
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    cfg = load_config(CodecRecipe, config, overrides)
    return run(cfg, resume=args.resume, device=str(resolve_device(args.device)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
