"""Train the ILLUME semantic VQ image codec on ShapesWorld ``train`` scenes against a frozen dual-encoder
teacher, and measure what its tokens keep.

    python recipes/train_semantic_codec.py configs/codec_semantic_vq.yaml teacher_dir=runs/dual_encoder \
        out_dir=runs/codec_semantic
    panglot train configs/codec_semantic_vq.yaml teacher_dir=runs/dual_encoder [--resume]

The teacher (``teacher_dir``: a directory written by ``recipes/train_dual_encoder.py``) is pretrained and
frozen; its image-side weights and config are copied into the codec, so the codec directory is
self-contained. Reports, per evaluation split (``val``, ``test-unseen`` by default): the oracle-preserved
rate (overall and by 1/2/3 objects), object recall, PSNR, codebook usage and ``feature_cos`` (mean cosine
similarity between the teacher's per-patch features and those the semantic decoder rebuilds from the ids).
Writes ``OUT/train/`` (checkpoints, metrics.jsonl), ``OUT/codec.safetensors``, ``OUT/codec.json`` (with
the metrics) and ``OUT/metrics.json``.

Training is ``panglot.training.Trainer`` (AdamW, warmup + cosine, bf16 autocast, checkpoints, exact
resume). A ``train.max_minutes`` budget is turned into a step count before training by timing a few steps
(``panglot.training.budget``, kept in ``OUT/train_budget.json``); the teacher's own training is not counted.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panglot.codecs.base import images_to_tensor
from panglot.codecs.image_semantic import SemanticVQ, SemanticVQConfig, feature_cosine, semantic_vq_loss
from panglot.config import load_config, to_dict
from panglot.data.world_images import WorldImages
from panglot.encoders import DualEncoder, load_dual_encoder
from panglot.evaluation.codec import evaluate_image_codec
from panglot.files import atomic_write_json
from panglot.nn.precision import autocast_context, resolve_device
from panglot.training import Callback, OptimConfig, TrainConfig, Trainer, every
from panglot.training.budget import budgeted, median_step_seconds
from panglot.world.dataset import split_scenes
from panglot.world.render import render_batch

logger = logging.getLogger("panglot.recipes.train_semantic_codec")


@dataclass
class SemanticCodecOptimConfig(OptimConfig):
    """The trainer's AdamW + warmup/cosine with the codec's defaults (small nets like a high lr)."""

    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05


@dataclass
class SemanticCodecTrainConfig(TrainConfig):
    """The trainer's config plus the codec's batch, loss weights and wall-clock budget."""

    optim: SemanticCodecOptimConfig = field(default_factory=SemanticCodecOptimConfig)
    max_steps: int = 5000
    log_every: int = 50
    batch_size: int = 32
    max_minutes: float | None = 5.0  # -> min(max_steps, steps that fit), timed before training; None = steps
    semantic_weight: float = 1.0  # weight of (1 - cosine) to the teacher's features
    fg_weight: float = 3.0  # weight of non-background pixels relative to background ones
    edge_weight: float = 5.0  # extra weight of pixels at a colour edge

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes must be > 0 or null, got {self.max_minutes}")
        if self.semantic_weight < 0:
            problems.append(f"semantic_weight must be >= 0, got {self.semantic_weight}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class SemanticCodecEvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val", "test-unseen"])
    n_images: int = 1000  # per split
    batch_size: int = 250
    # The learning curve: every ``curve_every`` steps (0 = never) the oracle-preserved rate and codebook
    # usage on ``curve_images`` images per split go to OUT/train/metrics.jsonl (their time counts in wall_s).
    curve_every: int = 0
    curve_images: int = 200


@dataclass
class SemanticCodecRecipe:
    recipe: str = "semantic_codec"
    out_dir: str = "runs/codec_semantic"
    teacher_dir: str | None = None  # the dual encoder (recipes/train_dual_encoder.py); required
    threads: int | None = 1  # torch intra-op threads; 1: spinning threads starve on a shared machine
    data_seed: int = 0
    codec: SemanticVQConfig = field(default_factory=SemanticVQConfig)  # codec.teacher comes from teacher_dir
    train: SemanticCodecTrainConfig = field(default_factory=SemanticCodecTrainConfig)
    eval: SemanticCodecEvalConfig = field(default_factory=SemanticCodecEvalConfig)


# --- training -------------------------------------------------------------------------------------------
def codec_loss(
    cfg: SemanticCodecTrainConfig, codec: SemanticVQ, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """The trainer's ``loss_fn`` (bound to ``cfg`` with ``functools.partial``)."""
    return semantic_vq_loss(codec, x.to(codec.device), cfg.semantic_weight, cfg.fg_weight, cfg.edge_weight)


def load_teacher(teacher_dir: str | None, device: str = "cpu") -> DualEncoder:
    if not teacher_dir:
        raise ValueError(
            "teacher_dir is required: the dual encoder directory (recipes/train_dual_encoder.py) whose image "
            "tower the codec quantizes, e.g. teacher_dir=runs/dual_encoder"
        )
    return load_dual_encoder(teacher_dir, map_location=device)


def seconds_per_step(
    codec_cfg: SemanticVQConfig, teacher: DualEncoder, cfg: SemanticCodecTrainConfig, data_seed: int
) -> float:
    """Median forward + backward time of one training step (rendering included) on a throwaway codec."""
    codec = SemanticVQ.from_teacher(copy.deepcopy(codec_cfg), teacher).train()
    data = WorldImages(cfg.batch_size, data_seed)

    def step() -> None:
        with autocast_context(codec.device, cfg.precision):
            loss, _ = codec_loss(cfg, codec, next(data))
        loss.backward()

    return median_step_seconds(step) * cfg.grad_accum


def train(
    codec: SemanticVQ,
    cfg: SemanticCodecTrainConfig,
    data_seed: int,
    out_dir: str | Path,
    resume: bool = False,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> dict[str, Any]:
    """Train in place for ``cfg.max_steps`` with checkpoints in ``out_dir``; returns a summary."""
    history: list[dict[str, float]] = []

    def record(trainer: Trainer, metrics: dict[str, float]) -> None:
        history.append({k: metrics[k] for k in ("loss", "feature_cos")})

    data = WorldImages(cfg.batch_size, data_seed)
    trainer = Trainer(cfg, codec, partial(codec_loss, cfg), data, out_dir, callbacks=[record, *callbacks])
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = trainer.train(resume=resume)
    codec.eval()

    def first_and_last(key: str) -> tuple[float | None, float | None]:
        values = [h[key] for h in history]
        return (values[0], float(np.mean(values[-20:]))) if values else (None, None)

    (first_loss, final_loss), (first_cos, final_cos) = first_and_last("loss"), first_and_last("feature_cos")
    return {
        "steps": summary.steps,
        "max_steps": trainer.cfg.max_steps,  # as re-fitted by a budget (TrainConfig.budget_minutes)
        "resumed_from": summary.resumed_from,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "first_loss": first_loss,  # of this run's first step (after a resume: not step 1)
        "final_loss": final_loss,  # mean of the last 20 steps
        "first_feature_cos": first_cos,
        "final_feature_cos": final_cos,
    }


def evaluate(codec: SemanticVQ, split: str, n_images: int, seed: int, batch_size: int) -> dict[str, float]:
    """``evaluate_image_codec`` on ``split`` plus ``feature_cos`` (teacher features vs rebuilt ones)."""
    scenes = split_scenes(split, n_images, seed)
    metrics = evaluate_image_codec(codec, scenes, batch_size)
    cos = [
        feature_cosine(codec, images_to_tensor(render_batch(scenes[i : i + batch_size])).to(codec.device))
        for i in range(0, len(scenes), batch_size)
    ]
    metrics["feature_cos"] = float(torch.cat(cos).mean())
    return metrics


def oracle_curve(cfg: SemanticCodecEvalConfig, data_seed: int) -> Callback:
    """A trainer callback: oracle-preserved rate and codebook usage on ``curve_images`` images per split."""
    scenes = {split: split_scenes(split, cfg.curve_images, data_seed) for split in cfg.splits}

    def callback(trainer: Trainer, metrics: dict[str, float]) -> dict[str, float]:
        out = {}
        for split, chunk in scenes.items():
            m = evaluate_image_codec(trainer.model, chunk, cfg.batch_size)
            out |= {
                f"{split}/oracle_preserved": m["oracle_preserved"],
                f"{split}/codebook_usage": m["codebook_usage"],
            }
        trainer.model.train()
        logger.info("step %d: %s", trainer.step, out)
        return out

    return callback


def run(cfg: SemanticCodecRecipe, resume: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Train, evaluate and save the codec; returns the metrics (also in ``OUT/metrics.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    teacher = load_teacher(cfg.teacher_dir, device)
    out = Path(cfg.out_dir)
    train_cfg = budgeted(
        cfg.train, out, cfg.train.max_minutes, lambda: seconds_per_step(cfg.codec, teacher, cfg.train, cfg.data_seed)
    )
    torch.manual_seed(train_cfg.seed)
    codec = SemanticVQ.from_teacher(cfg.codec, teacher)
    curve = (
        [every(cfg.eval.curve_every, oracle_curve(cfg.eval, cfg.data_seed))] if cfg.eval.curve_every else []
    )
    summary = train(codec, train_cfg, cfg.data_seed, out / "train", resume=resume, callbacks=curve)
    logger.info(
        "trained %d steps in %.0f s wall, %.0f s CPU", summary["steps"], summary["wall_s"], summary["cpu_s"]
    )
    metrics: dict[str, Any] = {"train": summary, "threads": torch.get_num_threads()}
    for split in cfg.eval.splits:
        metrics[split] = evaluate(codec, split, cfg.eval.n_images, cfg.data_seed, cfg.eval.batch_size)
        logger.info("%s: %s", split, json.dumps(metrics[split]))
    codec.save(out, metrics=metrics)
    config = to_dict(replace(cfg, codec=codec.config))  # with the teacher's real config
    atomic_write_json(out / "metrics.json", {"config": config, **metrics}, indent=2)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="recipe YAML (configs/codec_semantic_vq.yaml)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. teacher_dir=runs/dual_encoder"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train's latest checkpoint")
    parser.add_argument(
        "--device", default="cpu", help="where to train: cpu (the recipes' figures), cuda, cuda:1, mps"
    )
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    cfg = load_config(SemanticCodecRecipe, config, overrides)
    return run(cfg, resume=args.resume, device=str(resolve_device(args.device)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
