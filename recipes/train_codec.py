"""Train the pixel VQ image codec on ShapesWorld ``train`` scenes and measure what it keeps.

    python recipes/train_codec.py configs/codec_pixel_vq.yaml train.max_minutes=3 out_dir=runs/codec
    python recipes/train_codec.py configs/codec_pixel_vq.yaml out_dir=runs/codec --resume

Reports, per evaluation split (``val``, ``test-unseen`` by default): PSNR, codebook usage (share of the
vocabulary used on the split's images) and the oracle-preserved rate (share of images whose oracle-parsed
scene survives encode -> decode). Writes ``OUT/train/`` (checkpoints, metrics.jsonl), ``OUT/codec.safetensors``,
``OUT/codec.json`` (with the metrics) and ``OUT/metrics.json``.

Training is ``panglot.training.Trainer``, as for every stage: AdamW, warmup + cosine, bf16 autocast,
checkpoints and exact resume. A ``train.max_minutes`` budget is turned into a step count *before* training
by timing a few steps on this machine (``min(max_steps, what fits)``), so the schedule is fixed from the
start; a resumed run keeps the step count of its checkpoint.
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

from panglot.codecs import images_to_tensor, tensor_to_images
from panglot.codecs.image_vq import PixelVQ, PixelVQConfig, pixel_vq_loss
from panglot.config import load_config, to_dict
from panglot.files import atomic_write_json
from panglot.nn.precision import autocast_context
from panglot.training import Callback, OptimConfig, TrainConfig, Trainer, latest_checkpoint, read_state
from panglot.world.dataset import example_rng
from panglot.world.oracle import parse_images
from panglot.world.render import render
from panglot.world.scene import Scene
from panglot.world.splits import sample_scene

logger = logging.getLogger("panglot.recipes.train_codec")


@dataclass
class CodecOptimConfig(OptimConfig):
    """The trainer's AdamW + warmup/cosine with the codec's defaults (a small conv net likes a high lr)."""

    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05


@dataclass
class CodecTrainConfig(TrainConfig):
    """The trainer's config plus the codec's batch, loss weights and wall-clock budget."""

    optim: CodecOptimConfig = field(default_factory=CodecOptimConfig)
    max_steps: int = 5000
    log_every: int = 50
    batch_size: int = 32
    max_minutes: float | None = 3.0  # -> min(max_steps, steps that fit), timed before training; None = steps
    l1_weight: float = 1.0  # rgb output: loss = MSE + l1_weight * L1
    fg_weight: float = 3.0  # weight of non-background pixels relative to background ones
    edge_weight: float = 5.0  # extra weight of pixels at a colour edge

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
    codec: PixelVQConfig = field(default_factory=PixelVQConfig)
    train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    eval: CodecEvalConfig = field(default_factory=CodecEvalConfig)


# --- data ---------------------------------------------------------------------------------------------
def split_scenes(split: str, n: int, seed: int, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of a split: the same scenes as ``world.dataset.make_example``."""
    return [sample_scene(example_rng(split, seed, i), split) for i in range(start, start + n)]


def render_batch(scenes: list[Scene]) -> np.ndarray:
    return np.stack([render(s) for s in scenes])  # (B, 64, 64, 3) uint8


class TrainImages:
    """Endless fresh ``train`` images as (B, 3, 64, 64) tensors in [-1, 1]: batch ``k`` renders scenes
    ``k * batch_size ..`` of the split. The state is the index of the next scene, so a resume is exact."""

    def __init__(self, batch_size: int, seed: int):
        self.batch_size = batch_size
        self.seed = seed
        self.start = 0

    def __iter__(self) -> TrainImages:
        return self

    def __next__(self) -> torch.Tensor:
        scenes = split_scenes("train", self.batch_size, self.seed, self.start)
        self.start += self.batch_size
        return images_to_tensor(render_batch(scenes))

    def state_dict(self) -> dict:
        return {"start": self.start, "batch_size": self.batch_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        saved = (state.get("batch_size"), state.get("seed"))
        if saved != (self.batch_size, self.seed):
            raise ValueError(
                f"TrainImages state is for (batch_size, seed) = {saved}, this iterator has "
                f"{(self.batch_size, self.seed)}"
            )
        self.start = int(state["start"])


# --- evaluation -----------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images (B, H, W, 3); identical images count as 100 dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)


@torch.no_grad()
def evaluate(codec: PixelVQ, scenes: list[Scene], batch_size: int = 250) -> dict[str, float]:
    """PSNR, codebook usage and oracle-preserved rate of ``codec`` on the renders of ``scenes``."""
    codec.eval()
    used = torch.zeros(codec.vocab_size, dtype=torch.bool)
    psnrs, kept, found, kept_by_n = [], [], [], {1: [], 2: [], 3: []}
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        imgs = render_batch(chunk)
        ids = codec.encode_tensor(images_to_tensor(imgs).to(codec.device))
        used[ids.flatten().cpu()] = True
        recon = tensor_to_images(codec.decode_tensor(ids))
        psnrs.append(psnr(imgs, recon))
        for scene, parsed in zip(chunk, parse_images(recon)):
            kept.append(parsed == scene)
            found += [obj in parsed.objects for obj in scene.objects]
            kept_by_n[len(scene)].append(parsed == scene)
    out = {
        "n_images": len(scenes),
        "oracle_preserved": float(np.mean(kept)),
        "object_recall": float(np.mean(found)),  # share of objects the oracle still finds, every attribute
        "psnr_db": float(np.concatenate(psnrs).mean()),
        "codebook_usage": float(used.float().mean()),
    }
    out.update({f"oracle_preserved_{n}obj": float(np.mean(v)) for n, v in kept_by_n.items() if v})
    return out


# --- training -------------------------------------------------------------------------------------------
def codec_loss(
    cfg: CodecTrainConfig, codec: PixelVQ, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """The trainer's ``loss_fn`` (bound to ``cfg`` with ``functools.partial``)."""
    return pixel_vq_loss(codec, x.to(codec.device), cfg.l1_weight, cfg.fg_weight, cfg.edge_weight)


def seconds_per_step(
    codec_cfg: PixelVQConfig, cfg: CodecTrainConfig, data_seed: int, device: str = "cpu", probe_steps: int = 8
) -> float:
    """Median time of one training step on this machine (render a batch, forward, backward; + 10% for the
    optimizer step), measured on a throwaway codec after two warm-up steps."""
    codec = PixelVQ(copy.deepcopy(codec_cfg)).to(device)
    codec.train()
    data = TrainImages(cfg.batch_size, data_seed)
    elapsed = []
    for _ in range(probe_steps + 2):
        start = time.perf_counter()
        x = next(data)
        with autocast_context(device, cfg.precision):
            loss, _ = codec_loss(cfg, codec, x)
        loss.backward()
        elapsed.append(time.perf_counter() - start)
    timed = sorted(elapsed[2:])
    return timed[len(timed) // 2] * cfg.grad_accum * 1.1


def steps_for_minutes(minutes: float, per_step_s: float, max_steps: int) -> int:
    """Steps that fit in ``minutes`` at ``per_step_s`` each, at least 1 and at most ``max_steps``."""
    return max(1, min(max_steps, int(minutes * 60 / per_step_s)))


def planned_steps(cfg: CodecRecipe, train_dir: Path, resume: bool, device: str = "cpu") -> int:
    """``train.max_steps``, or with ``train.max_minutes`` the steps that fit, calibrated once: a resumed
    run keeps its checkpoint's step count (so its schedule is the one it started with)."""
    tcfg = cfg.train
    if tcfg.max_minutes is None:
        return tcfg.max_steps
    ckpt = latest_checkpoint(train_dir) if resume else None
    if ckpt is not None:
        steps = int(read_state(ckpt)["config"]["max_steps"])
        logger.info(
            "resuming a %.1f-minute budget: %d steps, as calibrated at the start", tcfg.max_minutes, steps
        )
        return steps
    per_step = seconds_per_step(cfg.codec, tcfg, cfg.data_seed, device)
    steps = steps_for_minutes(tcfg.max_minutes, per_step, tcfg.max_steps)
    logger.info("%.1f-minute budget at %.3f s/step: %d steps", tcfg.max_minutes, per_step, steps)
    return steps


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

    data = TrainImages(cfg.batch_size, data_seed)
    trainer = Trainer(
        cfg, codec, partial(codec_loss, cfg), data, out_dir, callbacks=[record_loss, *callbacks]
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = trainer.train(resume=resume)
    codec.eval()
    return {
        "steps": summary.steps,
        "max_steps": cfg.max_steps,
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
    train_cfg = replace(cfg.train, max_steps=planned_steps(cfg, train_dir, resume, device))
    torch.manual_seed(train_cfg.seed)
    codec = PixelVQ(cfg.codec).to(device)
    summary = train(codec, train_cfg, cfg.data_seed, train_dir, resume=resume)
    logger.info(
        "trained %d steps in %.0f s wall, %.0f s CPU", summary["steps"], summary["wall_s"], summary["cpu_s"]
    )
    metrics: dict[str, Any] = {"train": summary, "threads": torch.get_num_threads()}
    for split in cfg.eval.splits:
        scenes = split_scenes(split, cfg.eval.n_images, cfg.data_seed)
        metrics[split] = evaluate(codec, scenes, cfg.eval.batch_size)
        logger.info("%s: %s", split, json.dumps(metrics[split]))
    codec.save(out, metrics=metrics)
    atomic_write_json(out / "metrics.json", {"config": to_dict(cfg), **metrics}, indent=2)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="recipe YAML (configs/codec_pixel_vq.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_minutes=1")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train's latest checkpoint")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    return run(load_config(CodecRecipe, config, overrides), resume=args.resume)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
