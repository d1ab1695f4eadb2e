"""Train SEED's causal Q-Former image codec on ShapesWorld ``train`` scenes, in two stages, and measure it.

    python recipes/train_qformer_codec.py configs/codec_qformer.yaml out_dir=runs/codec_qformer
    python recipes/train_qformer_codec.py configs/codec_qformer.yaml out_dir=runs/codec_qformer --resume

Needs a trained dual encoder (``teacher_dir``, from recipes/train_dual_encoder.py) and a trained pixel VQ
codec (``pixel_codec_dir``, from recipes/train_codec.py); both are copied, frozen, into the codec, whose
``codec.json`` nests their configs (``codec.teacher`` and ``codec.pixel`` are taken from those directories).

- stage 1 (``qformer_train``, ``OUT/qformer_train/``): Q-Former + codebook + embedding decoder, with the
  contrastive loss of the last query against the teacher's caption embeddings, the cosine reconstruction of
  the teacher's image embedding from the quantized codes, and the commitment loss;
- stage 2 (``detokenizer_train``, ``OUT/detokenizer_train/``): the diffusion detokenizer on the pixel
  codec's latents, conditioned on the embeddings the frozen stage-1 codec reconstructs.

Both stages run on ``panglot.training.Trainer`` (AdamW, warmup + cosine, bf16 autocast, checkpoints, exact
resume); each stage's ``max_minutes`` becomes a step count before it trains (``panglot.training.budget``).
``pool: N`` computes the frozen parts' view of N scenes once; with it, ``processes: P`` trains each stage in P
data-parallel CPU processes (`panglot.training.distributed`), a step the one-process step over the same rows.

Reports, per evaluation split (``val``, ``test-unseen``): the oracle-preserved rate (overall and by 1/2/3
objects), object recall, PSNR and codebook usage (``evaluate_image_codec``), the cosine between the
reconstructed and the teacher's image embedding, and caption retrieval (recall@1/5 among the split's
captions) with the reconstructed embedding next to the teacher's own. Writes ``OUT/codec.safetensors``,
``OUT/codec.json`` (with the metrics) and ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from panglot.codecs.base import images_to_tensor, load_codec
from panglot.codecs.image_qformer import (
    FrozenFeatures,
    QFormerCodec,
    QFormerCodecConfig,
    detokenizer_loss,
    qformer_loss,
)
from panglot.codecs.image_vq import PixelVQ
from panglot.config import load_config, to_dict
from panglot.data.loader import StatefulLoader
from panglot.data.world_captions import CaptionedImages, WorldCaptionedImages
from panglot.encoders import DualEncoder, load_dual_encoder
from panglot.evaluation.codec import evaluate_image_codec
from panglot.evaluation.retrieval import image_text_retrieval
from panglot.files import atomic_write_json
from panglot.nn.precision import autocast_context, resolve_device
from panglot.training import Callback, OptimConfig, TrainConfig, Trainer, distributed, every
from panglot.training.budget import BUDGET_FILE, budgeted, median_step_seconds
from panglot.world.dataset import split_scenes
from panglot.world.language import caption
from panglot.world.render import render_batch

logger = logging.getLogger("panglot.recipes.train_qformer_codec")

STAGE1_TRAINS = ["qformer", "query_proj", "codebook", "embed_decoder"]  # stage 2 freezes these
STAGE2_TRAINS = ["detokenizer"]  # stage 1 freezes this


@dataclass
class QFormerOptimConfig(OptimConfig):
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05


@dataclass
class StageTrainConfig(TrainConfig):
    """The trainer's config plus the stage's batch size and wall-clock budget."""

    optim: QFormerOptimConfig = field(default_factory=QFormerOptimConfig)
    max_steps: int = 5000
    log_every: int = 25
    batch_size: int = 64
    max_minutes: float | None = 2.5  # -> min(max_steps, steps that fit), timed before training; None = steps

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
class QFormerLossConfig:
    temperature: float = 0.07  # of the contrastive loss (fixed)
    contrastive_weight: float = 1.0
    embed_weight: float = 1.0  # weight of 1 - cos(reconstructed, teacher image embedding)
    # weight of the grid map's squared error against the clean latent (needs the detokenizer's condition
    # embedding+grid; 0 = off): the codes learn the layout, and the map trains in stage 1 too
    grid_weight: float = 0.0
    grid_loss: Literal["mse", "ce"] = "mse"  # the grid term: squared error, or cross-entropy over the pixel codes


@dataclass
class QFormerEvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val", "test-unseen"])
    n_images: int = 1000  # per split
    batch_size: int = 250
    # Stage 2's learning curve: every ``curve_every`` steps (0 = never) the oracle-preserved rate on
    # ``curve_images`` images per split goes to OUT/detokenizer_train/metrics.jsonl (its time counts in wall_s).
    curve_every: int = 0
    curve_images: int = 100


@dataclass
class QFormerRecipe:
    recipe: str = "qformer_codec"
    out_dir: str = "runs/codec_qformer"
    teacher_dir: str = "runs/dual_encoder"  # a trained panglot dual encoder (frozen teacher)
    pixel_codec_dir: str = "runs/codec_pixel"  # a trained pixel VQ codec (the detokenizer's latent space)
    threads: int | None = 1  # torch intra-op threads; None = torch's default
    data_seed: int = 0
    # > 0: what the frozen parts make of this many train scenes (the teacher's patches and embedding, the pixel
    # codec's ids, the captions' embeddings) is computed once before stage 1, and both stages draw shuffled
    # batches of it, epoch after epoch (stage 2 also the frozen stage-1 ids, computed once after stage 1); the
    # time that takes counts in each stage's budget. 0: fresh scenes rendered and encoded at every step.
    pool: int = 0
    # > 1: data-parallel training processes on this CPU (`panglot.training.distributed`), sharing out ``threads``
    # (at least one each; None: the cores torch sees), each with its own share of the pool (pool / processes
    # scenes) and batch_size / processes rows of each step's batch; their gradients are averaged, stage 1's
    # contrastive term spans the whole batch and the codebook's statistics are summed over the group (the
    # library's own sync), so a step is the one-process step over the same rows. Needs a pool. Evaluation runs
    # afterwards in this process.
    processes: int = 1
    codec: QFormerCodecConfig = field(default_factory=QFormerCodecConfig)  # teacher/pixel: from the dirs
    loss: QFormerLossConfig = field(default_factory=QFormerLossConfig)
    qformer_train: StageTrainConfig = field(default_factory=StageTrainConfig)
    detokenizer_train: StageTrainConfig = field(default_factory=StageTrainConfig)
    eval: QFormerEvalConfig = field(default_factory=QFormerEvalConfig)

    def __post_init__(self) -> None:
        if self.pool < 0:
            raise ValueError(f"pool must be >= 0 (0: fresh scenes every step), got {self.pool}")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if self.processes > 1 and (self.pool == 0 or self.pool % self.processes):
            raise ValueError(
                f"processes: {self.processes} needs a pool that they share out evenly (pool > 0 and a multiple of "
                f"processes), got pool {self.pool}"
            )
        for name in ("qformer_train", "detokenizer_train"):
            batch = getattr(self, name).batch_size
            if batch % self.processes:
                raise ValueError(f"{name}.batch_size ({batch}) must be a multiple of processes ({self.processes})")
            if 0 < self.pool < batch:
                raise ValueError(f"pool ({self.pool}) must hold at least one batch of {name} ({batch})")


# --- building -------------------------------------------------------------------------------------------
def build_codec(
    cfg: QFormerRecipe, teacher: DualEncoder, pixel: PixelVQ, device: str = "cpu"
) -> QFormerCodec:
    """A fresh codec (seeded by stage 1's seed) holding frozen copies of ``teacher``'s image tower and
    ``pixel``; its config nests theirs."""
    torch.manual_seed(cfg.qformer_train.seed)
    codec = QFormerCodec(replace(cfg.codec, teacher=teacher.config, pixel=pixel.config))
    codec.load_frozen_parts(teacher, pixel)
    return codec.to(device)


# --- training -------------------------------------------------------------------------------------------
def stage1_loss(
    loss_cfg: QFormerLossConfig, teacher: DualEncoder, codec: QFormerCodec, batch: CaptionedImages
) -> tuple[torch.Tensor, dict[str, float]]:
    """The trainer's ``loss_fn`` for stage 1 (bound to the loss config and the teacher)."""
    with torch.no_grad():
        text_embedding = teacher.embed_texts(batch.captions)
    return configured_qformer_loss(loss_cfg, codec, batch.images, text_embedding, batch.captions)


def configured_qformer_loss(
    loss_cfg: QFormerLossConfig,
    codec: QFormerCodec,
    images: torch.Tensor | FrozenFeatures,
    text_embedding: torch.Tensor,
    captions: list[str],
) -> tuple[torch.Tensor, dict[str, float]]:
    """``qformer_loss`` with the recipe's loss settings, on images or their frozen features."""
    return qformer_loss(
        codec, images, text_embedding, captions,
        loss_cfg.temperature, loss_cfg.contrastive_weight, loss_cfg.embed_weight, loss_cfg.grid_weight,
        loss_cfg.grid_loss,
    )  # fmt: skip


def stage2_loss(codec: QFormerCodec, batch: CaptionedImages) -> tuple[torch.Tensor, dict[str, float]]:
    return detokenizer_loss(codec, batch.images)


# --- the pool: the frozen parts' view of a fixed set of scenes, computed once ----------------------------
class PooledCaptions(NamedTuple):
    """Stage 1's batch from the pool: the images' frozen features and their captions' embeddings."""

    features: FrozenFeatures
    text_embedding: torch.Tensor  # (B, E)
    captions: list[str]


class PooledIds(NamedTuple):
    """Stage 2's batch from the pool: the frozen stage-1 codec's ids and the pixel codec's ids of the images."""

    ids: torch.Tensor  # (B, T)
    pixel_ids: torch.Tensor  # (B, g * g)


@dataclass
class Pool:
    features: FrozenFeatures  # of every pooled scene, on the codec's device
    text_embedding: torch.Tensor  # (n, E)
    captions: list[str]
    ids: torch.Tensor | None = None  # (n, T) the stage-1 ids, once stage 1 has trained

    def __len__(self) -> int:
        return len(self.captions)

    def captioned(self, rows: list[int]) -> PooledCaptions:
        index = torch.tensor(rows, device=self.text_embedding.device)
        return PooledCaptions(self.features.index(index), self.text_embedding[index], [self.captions[i] for i in rows])

    def with_ids(self, rows: list[int]) -> PooledIds:
        index = torch.tensor(rows, device=self.text_embedding.device)
        return PooledIds(self.ids[index], self.features.pixel_ids[index])


@torch.no_grad()
def build_pool(
    codec: QFormerCodec,
    teacher: DualEncoder,
    n: int,
    seed: int,
    precision: str,
    chunk: int = 250,
    shard: tuple[int, int] = (0, 1),
) -> Pool:
    """The frozen teacher's and pixel codec's features of train scenes ``0 .. n - 1`` (``split_scenes("train",
    n, seed)``, the scenes a fresh run's first ``n / batch_size`` steps see) and their captions' embeddings.
    ``shard=(rank, processes)``: process ``rank``'s share of them, the ``rank``-th of ``processes`` equal runs."""
    rank, processes = shard
    first, last = rank * n // processes, (rank + 1) * n // processes
    parts, texts, captions = [], [], []
    for start in range(first, last, chunk):
        scenes = split_scenes("train", min(chunk, last - start), seed, start)
        words = [caption(s) for s in scenes]
        x = images_to_tensor(render_batch(scenes)).to(codec.device)
        with autocast_context(codec.device, precision):
            parts.append(codec.frozen_features(x, with_pixel_ids=True))
            texts.append(teacher.embed_texts(words))
        captions += words
    features = FrozenFeatures(*(torch.cat(column) for column in zip(*parts)))
    return Pool(features, torch.cat(texts), captions)


@torch.no_grad()
def pool_ids(codec: QFormerCodec, pool: Pool, precision: str, chunk: int = 250) -> torch.Tensor:
    """The frozen stage-1 codec's ids (n, T) of every pooled scene."""
    rows = range(len(pool))
    ids = []
    for start in range(0, len(pool), chunk):
        index = torch.tensor(rows[start : start + chunk], device=pool.text_embedding.device)
        with autocast_context(codec.device, precision):
            ids.append(codec.encode_tensor(None, features=pool.features.index(index)))
    return torch.cat(ids)


def pool_batches(pool: Pool, batch_size: int, seed: int, batch: Callable[[list[int]], Any]) -> StatefulLoader:
    """Shuffled batches of the pool, epoch after epoch, resumable (``StatefulLoader`` over its rows)."""
    return StatefulLoader(range(len(pool)), batch_size, seed=seed, collate_fn=batch)


def pooled_stage1_loss(
    loss_cfg: QFormerLossConfig, codec: QFormerCodec, batch: PooledCaptions
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1's loss on a pooled batch (as ``stage1_loss`` on the same images rendered afresh)."""
    return configured_qformer_loss(loss_cfg, codec, batch.features, batch.text_embedding, batch.captions)


def pooled_stage2_loss(codec: QFormerCodec, batch: PooledIds) -> tuple[torch.Tensor, dict[str, float]]:
    return detokenizer_loss(codec, None, batch.ids, batch.pixel_ids)


def seconds_per_step(
    codec: QFormerCodec, loss_fn: Callable, cfg: StageTrainConfig, make_data: Callable[[], Any], device: str
) -> float:
    """Median forward + backward time of one step (the data's own cost included) on a throwaway copy of
    ``codec``; ``make_data()`` gives a fresh iterator of the stage's batches. In a process group: the slowest
    process's."""
    probe = copy.deepcopy(codec).train()
    data = make_data()

    def step() -> None:
        with autocast_context(device, cfg.precision):
            loss, _ = loss_fn(probe, next(data))
        loss.backward()

    return distributed.slowest(median_step_seconds(step) * cfg.grad_accum)


def train_stage(
    name: str,
    codec: QFormerCodec,
    loss_fn: Callable,
    cfg: StageTrainConfig,
    freeze: list[str],
    make_data: Callable[[], Any],
    out_dir: Path,
    resume: bool,
    device: str,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
    spent_s: float = 0.0,
) -> dict[str, Any]:
    """Fit the stage's budget, less ``spent_s`` seconds already spent on it (building its pool), to steps (once
    per run), then train ``codec`` in place on ``make_data()``'s batches; returns a summary."""
    minutes, recorded = cfg.max_minutes, out_dir / BUDGET_FILE
    distributed.barrier()  # every process sees whether a budget was fitted before any writes one
    if minutes is not None and spent_s > 0:  # a resumed run keeps the minutes its start fitted (its pool took as long)
        minutes = json.loads(recorded.read_text())["minutes"] if recorded.is_file() else max(
            minutes - spent_s / 60, 0.05 * minutes  # at least a twentieth of the budget trains
        )
    cfg = budgeted(cfg, out_dir, minutes, lambda: seconds_per_step(codec, loss_fn, cfg, make_data, device))
    cfg = replace(cfg, freeze=[*cfg.freeze, *freeze])
    losses: list[float] = []
    trainer = Trainer(
        cfg, codec, loss_fn, make_data(), out_dir,
        callbacks=[lambda trainer, metrics: losses.append(metrics["loss"]), *callbacks],
    )  # fmt: skip
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = trainer.train(resume=resume)
    codec.requires_grad_(False)
    codec.eval()
    out = {
        "steps": summary.steps,
        "resumed_from": summary.resumed_from,
        "wall_s": round(time.perf_counter() - wall0 + spent_s, 1),
        "pool_s": round(spent_s, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "first_loss": losses[0] if losses else None,  # of this run's first step (after a resume: not step 1)
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }
    logger.info("%s: %d steps in %.0f s wall, %.0f s CPU", name, out["steps"], out["wall_s"], out["cpu_s"])
    return out


def train(
    cfg: QFormerRecipe, codec: QFormerCodec, teacher: DualEncoder, resume: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """Both stages, in place; returns their summaries."""
    out = Path(cfg.out_dir)
    pool, spent = None, 0.0
    shard = (distributed.rank(), distributed.world_size())  # in a process group: this process's share
    batch1, batch2 = cfg.qformer_train.batch_size // shard[1], cfg.detokenizer_train.batch_size // shard[1]
    if cfg.pool:
        start = time.perf_counter()
        pool = build_pool(codec, teacher, cfg.pool, cfg.data_seed, cfg.qformer_train.precision, shard=shard)
        spent = distributed.slowest(time.perf_counter() - start)
        logger.info("pool: %d scenes' frozen features in %.1f s", cfg.pool, spent)
        loss1 = partial(pooled_stage1_loss, cfg.loss)
        seed1 = cfg.qformer_train.seed
        data1 = lambda: pool_batches(pool, batch1, seed1, pool.captioned)  # noqa: E731
    else:
        loss1 = partial(stage1_loss, cfg.loss, teacher)
        data1 = partial(WorldCaptionedImages, cfg.qformer_train.batch_size, cfg.data_seed)
    stage1_freezes = STAGE2_TRAINS
    if cfg.loss.grid_weight > 0:  # the detokenizer's grid reader trains in stage 1 as well
        stage1_freezes = [f"detokenizer.{name}" for name, m in codec.detokenizer.named_children()
                          if name != "grid_reader" and any(True for _ in m.parameters())]  # fmt: skip
    summary = {
        "qformer": train_stage(
            "stage 1 (Q-Former)", codec, loss1, cfg.qformer_train, stage1_freezes, data1,
            out / "qformer_train", resume, device, spent_s=spent,
        )
    }  # fmt: skip
    loss2, spent = stage2_loss, 0.0
    data2 = partial(WorldCaptionedImages, cfg.detokenizer_train.batch_size, cfg.data_seed)
    if pool is not None:
        start = time.perf_counter()
        pool.ids = pool_ids(codec, pool, cfg.detokenizer_train.precision)
        spent = distributed.slowest(time.perf_counter() - start)
        loss2, seed2 = pooled_stage2_loss, cfg.detokenizer_train.seed
        data2 = lambda: pool_batches(pool, batch2, seed2, pool.with_ids)  # noqa: E731
    codec.requires_grad_(True)
    codec.freeze_frozen_parts()
    curve = [every(cfg.eval.curve_every, oracle_curve(cfg))] if cfg.eval.curve_every else []
    stage2_freezes = STAGE1_TRAINS + (["pixel_features"] if codec.pixel_features is not None else [])
    summary["detokenizer"] = train_stage(
        "stage 2 (detokenizer)", codec, loss2, cfg.detokenizer_train, stage2_freezes, data2,
        out / "detokenizer_train", resume, device, curve, spent_s=spent,
    )  # fmt: skip
    summary["total"] = {
        k: round(sum(s[k] for s in summary.values()), 1) for k in ("steps", "wall_s", "cpu_s")
    }
    return summary


# --- evaluation -----------------------------------------------------------------------------------------
def oracle_curve(cfg: QFormerRecipe) -> Callback:
    """A trainer callback: the oracle-preserved rate on ``eval.curve_images`` images of each split."""
    scenes = {split: split_scenes(split, cfg.eval.curve_images, cfg.data_seed) for split in cfg.eval.splits}

    def callback(trainer: Trainer, metrics: dict[str, float]) -> dict[str, float]:
        codec = trainer.model
        out = {
            f"{split}/oracle_preserved": evaluate_image_codec(codec, chunk, cfg.eval.batch_size)[
                "oracle_preserved"
            ]
            for split, chunk in scenes.items()
        }
        logger.info("step %d: %s", trainer.step, out)
        return out

    return callback


@torch.no_grad()
def embedding_metrics(
    codec: QFormerCodec, teacher: DualEncoder, scenes: list, batch_size: int = 250
) -> dict[str, Any]:
    """Cosine between the embedding reconstructed from the ids and the teacher's image embedding, and
    caption retrieval among the scenes' captions with either embedding."""
    recon, target, texts = [], [], []
    captions = [caption(s) for s in scenes]
    for start in range(0, len(scenes), batch_size):
        x = images_to_tensor(render_batch(scenes[start : start + batch_size])).to(codec.device)
        recon.append(codec.embed_ids(codec.encode_tensor(x)))
        target.append(teacher.embed_images(x))
        texts.append(teacher.embed_texts(captions[start : start + batch_size]))
    recon, target, texts = torch.cat(recon), torch.cat(target), torch.cat(texts)
    return {
        "embed_cosine": float((recon * target).sum(dim=-1).mean()),
        "retrieval_reconstructed": image_text_retrieval(recon, texts, captions)["image_to_text"],
        "retrieval_teacher": image_text_retrieval(target, texts, captions)["image_to_text"],
    }


def evaluate(cfg: QFormerRecipe, codec: QFormerCodec, teacher: DualEncoder) -> dict[str, Any]:
    metrics = {}
    for split in cfg.eval.splits:
        scenes = split_scenes(split, cfg.eval.n_images, cfg.data_seed)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        metrics[split] = {
            **evaluate_image_codec(codec, scenes, cfg.eval.batch_size),
            **embedding_metrics(codec, teacher, scenes, cfg.eval.batch_size),
            # The ceiling: the detokenizer draws through the pixel codec, so it keeps at most what that keeps.
            "pixel_codec_oracle_preserved": evaluate_image_codec(codec.pixel, scenes, cfg.eval.batch_size)[
                "oracle_preserved"
            ],
            "eval_wall_s": round(time.perf_counter() - wall0, 1),
            "eval_cpu_s": round(time.process_time() - cpu0, 1),
        }
        logger.info("%s: %s", split, json.dumps(metrics[split]))
    return metrics


SUMMARY_FILE = "train_summary.json"  # a process group's training summary, for the evaluation after it


def run(cfg: QFormerRecipe, resume: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Train both stages, evaluate and save the codec; returns the metrics (also in ``OUT/metrics.json``). With
    ``cfg.processes > 1`` the training runs in that many new processes (`panglot.training.distributed.launch`),
    sharing ``cfg.threads`` out (at least one each); rank 0 saves the trained codec, which this process evaluates."""
    if cfg.processes > 1 and device != "cpu":
        raise ValueError(f"processes: {cfg.processes} is data parallelism over CPU processes; on {device} use 1")
    if cfg.threads and cfg.processes == 1:
        torch.set_num_threads(cfg.threads)
    teacher = load_dual_encoder(cfg.teacher_dir, map_location=device).requires_grad_(False)
    out = Path(cfg.out_dir)
    if cfg.processes == 1:
        codec, summary = _build_and_train(cfg, teacher, resume, device)
    else:
        threads = max(1, (cfg.threads or torch.get_num_threads()) // cfg.processes)
        logger.info("training in %d processes of %d thread(s) each", cfg.processes, threads)
        distributed.launch(_train_in_group, cfg.processes, cfg, resume, device, threads=threads)
        codec = load_codec(out, map_location=device, kind=QFormerCodec.kind)
        summary = json.loads((out / SUMMARY_FILE).read_text())
    metrics: dict[str, Any] = {
        "train": summary,
        "threads": torch.get_num_threads(),
        "teacher_dir": cfg.teacher_dir,
        "pixel_codec_dir": cfg.pixel_codec_dir,
        **evaluate(cfg, codec, teacher),
    }
    codec.save(out, metrics=metrics)
    atomic_write_json(out / "metrics.json", {"config": to_dict(cfg), **metrics}, indent=2)
    return metrics


def _build_and_train(
    cfg: QFormerRecipe, teacher: DualEncoder, resume: bool, device: str
) -> tuple[QFormerCodec, dict[str, Any]]:
    """A fresh codec over ``teacher`` and the pixel codec, trained (both stages); with its training summary."""
    pixel = PixelVQ.load(cfg.pixel_codec_dir, map_location=device)
    codec = build_codec(cfg, teacher, pixel, device)
    return codec, train(cfg, codec, teacher, resume=resume, device=device)


def _train_in_group(cfg: QFormerRecipe, resume: bool, device: str) -> None:
    """`run`'s training in each process of a group (the codec built there, so that its codebook sums statistics
    over the group); rank 0 saves the codec and the summary."""
    teacher = load_dual_encoder(cfg.teacher_dir, map_location=device).requires_grad_(False)
    codec, summary = _build_and_train(cfg, teacher, resume, device)
    if distributed.is_main():
        out = Path(cfg.out_dir)
        codec.save(out)
        atomic_write_json(out / SUMMARY_FILE, summary, indent=2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="recipe YAML (configs/codec_qformer.yaml)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. qformer_train.max_minutes=1"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue both stages from their latest checkpoints"
    )
    parser.add_argument(
        "--device", default="cpu", help="where to train: cpu (the recipes' figures), cuda, cuda:1, mps"
    )
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    cfg = load_config(QFormerRecipe, config, overrides)
    return run(cfg, resume=args.resume, device=str(resolve_device(args.device)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
