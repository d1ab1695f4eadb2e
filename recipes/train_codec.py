"""Train the pixel VQ image codec on ShapesWorld ``train`` scenes and measure what it keeps.

    python recipes/train_codec.py configs/codec_pixel_vq.yaml train.max_minutes=3 out_dir=runs/codec

Reports, per evaluation split (``val``, ``test-unseen`` by default): PSNR, codebook usage (share of the
vocabulary used on the split's images) and the oracle-preserved rate (share of images whose oracle-parsed
scene survives encode -> decode). Writes ``OUT/codec.safetensors``, ``OUT/codec.json`` (with the
metrics) and ``OUT/metrics.json``.

Training is a plain loop (AdamW, warmup + cosine, bf16 autocast) with a budget in steps *and* minutes,
whichever ends first: the learning-rate schedule follows whichever budget is closer to its end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from panglot.codecs import images_to_tensor, tensor_to_images
from panglot.codecs.image_vq import PixelVQ, PixelVQConfig, pixel_vq_loss
from panglot.config import load_config, to_dict
from panglot.nn.precision import autocast_context
from panglot.world.dataset import example_rng
from panglot.world.oracle import parse_images
from panglot.world.render import render
from panglot.world.scene import Scene
from panglot.world.splits import sample_scene

logger = logging.getLogger("panglot.recipes.train_codec")


@dataclass
class CodecTrainConfig:
    max_steps: int = 5000
    max_minutes: float | None = 3.0  # wall-clock budget; None = steps only
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l1_weight: float = 1.0  # rgb output: loss = MSE + l1_weight * L1
    fg_weight: float = 3.0  # weight of non-background pixels relative to background ones
    edge_weight: float = 5.0  # extra weight of pixels at a colour edge
    precision: Literal["bf16", "fp32"] = "bf16"
    seed: int = 0
    log_every: int = 50


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


def train_batches(batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless fresh ``train`` images as (B, 3, 64, 64) tensors in [-1, 1]."""
    start = 0
    while True:
        yield images_to_tensor(render_batch(split_scenes("train", batch_size, seed, start)))
        start += batch_size


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
def lr_factor(progress: float, step: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from 1 to ``min_ratio`` as progress goes 0 -> 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(codec: PixelVQ, cfg: CodecTrainConfig, data_seed: int) -> dict[str, Any]:
    """Train in place until ``max_steps`` or ``max_minutes``; returns a summary (steps, times, loss)."""
    torch.manual_seed(cfg.seed)
    device = codec.device
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    wall0, cpu0 = time.perf_counter(), time.process_time()
    codec.train()
    step, losses = 0, []
    for x in train_batches(cfg.batch_size, data_seed):
        elapsed = time.perf_counter() - wall0
        if step >= cfg.max_steps or elapsed >= budget_s:
            break
        progress = max(step / cfg.max_steps, elapsed / budget_s)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(progress, step, cfg.warmup_steps, cfg.min_lr_ratio)
        with autocast_context(device, cfg.precision):
            loss, metrics = pixel_vq_loss(codec, x.to(device), cfg.l1_weight, cfg.fg_weight, cfg.edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        losses.append(metrics["loss"])
        if step % cfg.log_every == 0 or step == 1:
            logger.info("step %d  loss %.4f  %.0f s", step, metrics["loss"], elapsed)
    codec.eval()
    return {
        "steps": step,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }


def run(cfg: CodecRecipe, device: str = "cpu") -> dict[str, Any]:
    """Train, evaluate and save the codec; returns the metrics (also in ``OUT/metrics.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.train.seed)
    codec = PixelVQ(cfg.codec).to(device)
    summary = train(codec, cfg.train, cfg.data_seed)
    logger.info(
        "trained %d steps in %.0f s wall, %.0f s CPU", summary["steps"], summary["wall_s"], summary["cpu_s"]
    )
    metrics: dict[str, Any] = {"train": summary, "threads": torch.get_num_threads()}
    for split in cfg.eval.splits:
        scenes = split_scenes(split, cfg.eval.n_images, cfg.data_seed)
        metrics[split] = evaluate(codec, scenes, cfg.eval.batch_size)
        logger.info("%s: %s", split, json.dumps(metrics[split]))
    out = Path(cfg.out_dir)
    codec.save(out, metrics=metrics)
    tmp = out / f".metrics.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"config": to_dict(cfg), **metrics}, indent=2) + "\n")
    os.replace(tmp, out / "metrics.json")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="recipe YAML (configs/codec_pixel_vq.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_minutes=1")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    return run(load_config(CodecRecipe, config, overrides))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
