"""Train the unified model (CM3Leon / Chameleon core) on the ShapesWorld mixture: text-to-image,
captioning and VQA in one decoder-only transformer over text tokens and image codes.

    panglot train configs/unified_quickstart.yaml train.max_steps=2000 out_dir=runs/u

Needs a trained image codec (``recipes/train_codec.py``), named by ``codec_dir``. Writes
``OUT/train/`` (checkpoints, metrics.jsonl) and ``OUT/model/`` (what ``panglot.load(OUT)`` reads).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from panglot.backbone import build_transformer
from panglot.codecs import load_codec
from panglot.codecs.base import images_to_tensor
from panglot.codecs.text import TextTokenizer, train_world_tokenizer
from panglot.config import load_config, to_dict
from panglot.data.loader import StatefulLoader
from panglot.data.mixture import MixtureConfig, WorldMixture, encode_scenes, world_texts
from panglot.data.packing import DocumentPacker, PackingConfig, packed_shape
from panglot.model import UnifiedModel, UnifiedModelConfig, collate
from panglot.model.run import save_model
from panglot.model.unified import code_looks, span_positions
from panglot.multimodal import SequenceLayout, UnifiedVocab
from panglot.nn.precision import autocast_context
from panglot.training import TrainConfig, Trainer
from panglot.training.budget import Deadline, budgeted, median_step_seconds
from panglot.world.dataset import split_scenes
from panglot.world.render import render_batch

logger = logging.getLogger("panglot.recipes.train_unified")


@dataclass
class UnifiedRecipe:
    recipe: str = "unified"
    out_dir: str = "runs/unified"
    codec_dir: str = "runs/codec"
    tokenizer_scenes: int = 3000  # train-split scenes whose texts train the BPE tokenizer
    batch_size: int = 32  # documents per batch (packed: about as many, see packing.rows)
    cfg_scale: float = 3.0  # default guidance scale saved with the model (the quickstart tunes it on val)
    threads: int | None = None  # torch intra-op threads; None = torch's default
    compile: bool = False  # torch.compile the backbone's blocks for training (1.27x per step on CPU)
    model: UnifiedModelConfig = field(default_factory=UnifiedModelConfig)
    data: MixtureConfig = field(default_factory=MixtureConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_tokenizer(cfg: UnifiedRecipe, out: Path) -> TextTokenizer:
    """The run's tokenizer: trained on train-split text once, then reloaded (so a resume reuses it)."""
    path = out / "tokenizer"
    if (path / "tokenizer.json").is_file():
        return TextTokenizer.load(path)
    tok = train_world_tokenizer(world_texts("train", cfg.tokenizer_scenes, cfg.data.seed))
    tok.save(path)
    return tok


LOOK_SCENES = 2000  # training scenes whose patches give each image id its look (model.code_features)


def build(cfg: UnifiedRecipe, device: str = "cpu") -> tuple[UnifiedModel, StatefulLoader | DocumentPacker]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    codec = load_codec(cfg.codec_dir, map_location=device)
    tokenizer = build_tokenizer(cfg, out)
    vocab = UnifiedVocab.build(tokenizer, [("image", codec, "<boi>", "<eoi>")])
    model_cfg = cfg.model
    torch.manual_seed(cfg.train.seed)
    overrides = dict(model_cfg.overrides)
    if model_cfg.span_positions:
        overrides |= span_positions(vocab, codec)
        logger.info("image tokens get span positions: %s", overrides)
    backbone = build_transformer(model_cfg.size, vocab.size, **overrides).to(device)
    model = UnifiedModel(backbone, vocab, codec, **{name: getattr(model_cfg, name) for name in SequenceLayout.OPTIONS})
    if model_cfg.code_factors or model_cfg.code_features:
        looks = None
        if model_cfg.code_features:  # what each id looks like in (a share of) the training scenes
            shown = split_scenes("train", min(cfg.data.n_scenes, LOOK_SCENES), cfg.data.seed)
            looks = code_looks(codec, images_to_tensor(render_batch(shown)))
        n = model.factor_code_rows(factors=model_cfg.code_factors, looks=looks)
        logger.info("image ids share embedding rows: %d factors%s", n - (looks is not None),
                    " and their code's look" if looks is not None else "")  # fmt: skip
    scenes = split_scenes("train", cfg.data.n_scenes, cfg.data.seed)
    logger.info("encoding %d training scenes with the %s codec", len(scenes), codec.kind)
    dataset = WorldMixture(cfg.data, model.layout, tokenizer, scenes, encode_scenes(codec, scenes))
    pad_id = vocab.special("<pad>")
    if cfg.packing.enabled:  # rows of whole documents, attention and positions kept inside each
        pack_len, rows = packed_shape(dataset, cfg.packing, cfg.batch_size)
        logger.info("packing documents into batches of %d rows of %d tokens", rows, pack_len)
        loader = DocumentPacker(
            dataset, pack_len, rows, pad_id=pad_id, seed=cfg.train.seed, lookahead=cfg.packing.lookahead
        )
    else:
        loader = StatefulLoader(
            dataset, cfg.batch_size, seed=cfg.train.seed, collate_fn=partial(collate, pad_id=pad_id)
        )
    return model, loader


def loss_fn(model: UnifiedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    batch = {k: v.to(model.device) for k, v in batch.items()}
    loss, metrics = model.loss(batch)
    metrics["tokens"] = float((batch["tokens"] != model.vocab.special("<pad>")).sum())  # document tokens only
    return loss, metrics


def seconds_per_step(
    model: UnifiedModel, loader: StatefulLoader | DocumentPacker, cfg: UnifiedRecipe
) -> float:
    """Median forward + backward time of a training step on this machine. The loader is rewound and the
    gradients dropped afterwards, so the run that follows is the same as one that never probed."""
    state = loader.state_dict()
    model.train()

    def step() -> None:
        with autocast_context(model.device, cfg.train.precision):
            loss, _ = loss_fn(model, next(loader))
        loss.backward()

    per_step = median_step_seconds(step) * cfg.train.grad_accum
    loader.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    return per_step


def run(
    cfg: UnifiedRecipe,
    resume: bool = False,
    device: str = "cpu",
    minutes: float | None = None,
    deadline: Deadline | None = None,
) -> Path:
    """Train and export; returns the run directory. ``minutes`` fits ``train.max_steps`` to a time budget; with a
    job's ``deadline`` the budget's re-fits also leave its reserve (`panglot.training.budget.Deadline`)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, loader = build(cfg, device)
    if cfg.compile:  # before the budget probe, whose warm-up steps pay the compilation
        model.backbone.compile_layers()
    cfg.train = budgeted(cfg.train, cfg.out_dir, minutes, lambda: seconds_per_step(model, loader, cfg))
    trainer = Trainer(cfg.train, model, loss_fn, loader, Path(cfg.out_dir) / "train", deadline=deadline)
    summary = trainer.train(resume=resume)
    logger.info("trained %d steps, final loss %.4f", summary.steps, summary.final_loss or float("nan"))
    save_model(cfg.out_dir, model, extra={"generation": {"cfg_scale": cfg.cfg_scale}, "recipe": to_dict(cfg)})
    return Path(cfg.out_dir)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--minutes", type=float, default=None, help="fit train.max_steps to this time budget")
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    cfg = load_config(UnifiedRecipe, config, overrides)
    return run(cfg, resume=args.resume, minutes=args.minutes)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
