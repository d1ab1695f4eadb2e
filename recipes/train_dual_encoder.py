"""Train the CLIP-style dual encoder on ShapesWorld ``train`` image/caption pairs and measure retrieval.

    python recipes/train_dual_encoder.py configs/dual_encoder.yaml out_dir=runs/dual_encoder
    panglot train configs/dual_encoder.yaml train.max_minutes=10 [--resume]

The text of a pair is the scene's canonical caption or, with probability ``paraphrase_prob``, its
paraphrase; positives are decided by the canonical caption (multi-positive InfoNCE). The text tokenizer is
the world BPE tokenizer trained on the captions and paraphrases of the first ``tokenizer_examples`` train
scenes (deterministic, so a resumed run rebuilds the same one).

Evaluation: image->text and text->image recall@1 and @5 on a gallery of ``eval.n_pairs`` (image, canonical
caption) pairs per split (``test-seen``, ``test-unseen`` by default); a retrieved caption or image counts as
correct when its caption equals the query's, and chance level is reported alongside; also the same images
retrieved by the scenes' paraphrases (``paraphrase_to_image``). Writes ``OUT/train/``
(checkpoints, metrics.jsonl), the encoder (``OUT/encoder.safetensors``, ``OUT/encoder.json``,
``OUT/tokenizer/``) and ``OUT/metrics.json``.

Training is ``panglot.training.Trainer`` (AdamW, warmup + cosine, bf16 autocast, checkpoints, exact resume);
a ``train.max_minutes`` budget becomes a step count before training (``panglot.training.budget``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panglot.codecs.base import images_to_tensor
from panglot.codecs.text import TextTokenizer, train_world_tokenizer
from panglot.config import load_config, to_dict
from panglot.encoders import DualEncoder, DualEncoderConfig, PairBatch, dual_encoder_loss
from panglot.evaluation.retrieval import image_text_retrieval, recall_at_k
from panglot.files import atomic_write_json
from panglot.nn.precision import autocast_context, resolve_device
from panglot.training import Callback, OptimConfig, TrainConfig, Trainer
from panglot.training.budget import budgeted, median_step_seconds
from panglot.world.dataset import example_rng
from panglot.world.language import caption, paraphrase
from panglot.world.render import render_batch
from panglot.world.scene import Scene
from panglot.world.splits import sample_scene

logger = logging.getLogger("panglot.recipes.train_dual_encoder")


@dataclass
class DualOptimConfig(OptimConfig):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05


@dataclass
class DualTrainConfig(TrainConfig):
    """The trainer's config plus the batch, the text mix and the wall-clock budget."""

    optim: DualOptimConfig = field(default_factory=DualOptimConfig)
    max_steps: int = 5000
    log_every: int = 25
    batch_size: int = 128
    max_minutes: float | None = 3.0  # -> min(max_steps, steps that fit), timed before training; None = steps
    paraphrase_prob: float = 0.5  # share of pairs whose text is the paraphrase instead of the caption

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2 (a contrastive batch), got {self.batch_size}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes must be > 0 or null, got {self.max_minutes}")
        if not 0 <= self.paraphrase_prob <= 1:
            problems.append(f"paraphrase_prob must be in [0, 1], got {self.paraphrase_prob}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class DualEvalConfig:
    splits: list[str] = field(default_factory=lambda: ["test-seen", "test-unseen"])
    n_pairs: int = 1000  # gallery size per split
    batch_size: int = 250


@dataclass
class DualEncoderRecipe:
    recipe: str = "dual_encoder"
    out_dir: str = "runs/dual_encoder"
    threads: int | None = 1  # torch intra-op threads; None = torch's default
    data_seed: int = 0
    tokenizer_examples: int = 2000  # train scenes whose caption + paraphrase train the BPE tokenizer
    encoder: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    train: DualTrainConfig = field(default_factory=DualTrainConfig)
    eval: DualEvalConfig = field(default_factory=DualEvalConfig)


# --- data -----------------------------------------------------------------------------------------------
def world_tokenizer(n_examples: int, seed: int) -> TextTokenizer:
    """The world BPE tokenizer trained on captions and paraphrases of train scenes ``0 .. n - 1``."""
    texts = []
    for i in range(n_examples):
        _, text, para, _ = world_pair("train", seed, i)
        texts += [text, para]
    return train_world_tokenizer(texts)


def world_pair(split: str, seed: int, index: int) -> tuple[Scene, str, str, np.random.Generator]:
    """Scene ``index`` of ``split`` with its canonical caption and its paraphrase (those of
    ``world.dataset.make_example``), and the example's generator for any further draws."""
    rng = example_rng(split, seed, index)
    scene = sample_scene(rng, split)
    return scene, caption(scene), paraphrase(scene, rng), rng  # paraphrase drawn right after, as make_example


class WorldPairs:
    """Endless ``train`` (image, text) pairs as :class:`PairBatch`: batch ``k`` holds scenes
    ``k * batch_size ..``, each with its caption or (with probability ``paraphrase_prob``) its paraphrase.
    The state is the index of the next scene, so a resume is exact."""

    def __init__(self, batch_size: int, seed: int, paraphrase_prob: float):
        self.batch_size = batch_size
        self.seed = seed
        self.paraphrase_prob = paraphrase_prob
        self.start = 0

    def __iter__(self) -> WorldPairs:
        return self

    def __next__(self) -> PairBatch:
        scenes, texts, keys = [], [], []
        for i in range(self.start, self.start + self.batch_size):
            scene, text, para, rng = world_pair("train", self.seed, i)
            scenes.append(scene)
            keys.append(text)
            texts.append(para if rng.random() < self.paraphrase_prob else text)
        self.start += self.batch_size
        return PairBatch(images_to_tensor(render_batch(scenes)), texts, keys)

    def _key(self) -> tuple:
        return (self.batch_size, self.seed, self.paraphrase_prob)

    def state_dict(self) -> dict:
        return {"start": self.start, "batch_size": self.batch_size, "seed": self.seed,
                "paraphrase_prob": self.paraphrase_prob}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        saved = (state.get("batch_size"), state.get("seed"), state.get("paraphrase_prob"))
        if saved != self._key():
            raise ValueError(
                f"WorldPairs state is for (batch_size, seed, paraphrase_prob) = {saved}, this iterator has {self._key()}"
            )
        self.start = int(state["start"])


# --- evaluation -----------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    encoder: DualEncoder, split: str, n_pairs: int, seed: int, batch_size: int = 250
) -> dict[str, Any]:
    """Recall@1/@5 both ways (and chance) on the first ``n_pairs`` scenes of ``split`` with their canonical
    captions, plus ``paraphrase_to_image``: the same images retrieved by the scenes' paraphrases."""
    encoder.eval()
    scenes, captions, paraphrases = zip(*(world_pair(split, seed, i)[:3] for i in range(n_pairs)))
    image_emb, caption_emb, paraphrase_emb = [], [], []
    for start in range(0, n_pairs, batch_size):
        chunk = slice(start, start + batch_size)
        image_emb.append(encoder.embed_images(images_to_tensor(render_batch(scenes[chunk]))))
        caption_emb.append(encoder.embed_texts(captions[chunk]))
        paraphrase_emb.append(encoder.embed_texts(paraphrases[chunk]))
    images = torch.cat(image_emb)
    out = image_text_retrieval(images, torch.cat(caption_emb), captions, ks=(1, 5))
    out["paraphrase_to_image"] = recall_at_k(
        torch.cat(paraphrase_emb) @ images.t(), captions, captions, ks=(1, 5)
    )
    return out


# --- training -------------------------------------------------------------------------------------------
def seconds_per_step(cfg: DualEncoderRecipe, tokenizer: TextTokenizer, device: str = "cpu") -> float:
    """Median forward + backward time of one training step (data included) on a throwaway encoder."""
    encoder = DualEncoder(copy.deepcopy(cfg.encoder), tokenizer).to(device).train()
    data = WorldPairs(cfg.train.batch_size, cfg.data_seed, cfg.train.paraphrase_prob)

    def step() -> None:
        with autocast_context(device, cfg.train.precision):
            loss, _ = dual_encoder_loss(encoder, next(data))
        loss.backward()

    return median_step_seconds(step) * cfg.train.grad_accum


def train(
    encoder: DualEncoder,
    cfg: DualTrainConfig,
    data_seed: int,
    out_dir: str | Path,
    resume: bool = False,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
) -> dict[str, Any]:
    """Train in place for ``cfg.max_steps`` with checkpoints in ``out_dir``; returns a summary."""
    history: list[dict[str, float]] = []

    def record(trainer: Trainer, metrics: dict[str, float]) -> None:
        history.append(metrics)

    data = WorldPairs(cfg.batch_size, data_seed, cfg.paraphrase_prob)
    trainer = Trainer(cfg, encoder, dual_encoder_loss, data, out_dir, callbacks=[record, *callbacks])
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = trainer.train(resume=resume)
    encoder.eval()
    last = history[-20:]
    return {
        "steps": summary.steps,
        "max_steps": trainer.cfg.max_steps,  # as re-fitted by a budget (TrainConfig.budget_minutes)
        "resumed_from": summary.resumed_from,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "first_loss": history[0]["loss"] if history else None,  # of this run's first step
        "final_loss": float(np.mean([m["loss"] for m in last])) if last else None,
        "final_batch_i2t_acc": float(np.mean([m["i2t_acc"] for m in last])) if last else None,
        "logit_scale": encoder.scale().item(),
    }


def run(cfg: DualEncoderRecipe, resume: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Train, evaluate and save the encoder; returns the metrics (also in ``OUT/metrics.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    tokenizer = world_tokenizer(cfg.tokenizer_examples, cfg.data_seed)
    train_cfg = budgeted(cfg.train, out, cfg.train.max_minutes, lambda: seconds_per_step(cfg, tokenizer, device))
    torch.manual_seed(train_cfg.seed)
    encoder = DualEncoder(cfg.encoder, tokenizer).to(device)
    summary = train(encoder, train_cfg, cfg.data_seed, out / "train", resume=resume)
    logger.info(
        "trained %d steps in %.0f s wall, %.0f s CPU", summary["steps"], summary["wall_s"], summary["cpu_s"]
    )
    metrics: dict[str, Any] = {"train": summary, "threads": torch.get_num_threads()}
    for split in cfg.eval.splits:
        metrics[split] = evaluate(encoder, split, cfg.eval.n_pairs, cfg.data_seed, cfg.eval.batch_size)
        logger.info("%s: %s", split, json.dumps(metrics[split]))
    encoder.save(out, metrics=metrics)
    atomic_write_json(out / "metrics.json", {"config": to_dict(cfg), **metrics}, indent=2)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="recipe YAML (configs/dual_encoder.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_minutes=1")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train's latest checkpoint")
    parser.add_argument(
        "--device", default="cpu", help="where to train: cpu (the recipes' figures), cuda, cuda:1, mps"
    )
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    cfg = load_config(DualEncoderRecipe, config, overrides)
    return run(cfg, resume=args.resume, device=str(resolve_device(args.device)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
