"""Train the unified model (CM3Leon / Chameleon core) on the ShapesWorld mixture: text-to-image,
captioning and VQA in one decoder-only transformer over text tokens and image codes.

    panglot train configs/unified_quickstart.yaml train.max_steps=2000 out_dir=runs/u

Needs a trained image codec (``recipes/train_codec.py``), named by ``codec_dir``. Writes
``OUT/train/`` (checkpoints, metrics.jsonl) and ``OUT/model/`` (what ``panglot.load(OUT)`` reads).
"""

from __future__ import annotations

import argparse
import logging
import math
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
from panglot.multimodal import TASKS, SequenceLayout, UnifiedVocab
from panglot.nn.precision import autocast_context, resolve_device
from panglot.training import TrainConfig, Trainer, distributed
from panglot.training.budget import Deadline, budgeted, median_step_seconds
from panglot.training.checkpoint import latest_checkpoint, load_checkpoint
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
    threads: int | None = None  # torch intra-op threads (per process); None = torch's default (shared by processes)
    # Data-parallel training processes on this machine's CPU (panglot.training.distributed): each steps over
    # batch_size / processes documents of its own shard, the gradients averaged. On 2 cores, 2 processes of one
    # thread took the quickstart's steps 1.09x as fast as one of two threads, 1.18x the tokens a second
    # (docs/benchmarks.md "Data-parallel processes"); it pays where more cores scale threads worse.
    processes: int = 1
    # Each task's share of the loss (UnifiedModel.loss's task_shares), e.g. {t2i: 0.7, caption: 0.15, vqa: 0.15};
    # None: every weighted target token counts alike (the drawings' image tokens then make ~80 % of the loss).
    task_loss_shares: dict[str, float] | None = None
    # A unified run (its directory) whose last training checkpoint gives this run's starting weights: a stage that
    # continues another with other data (same codec, tokenizer, size and layout; a mismatch names the tensors).
    # The optimizer and schedule start afresh; a resumed run continues from its own checkpoint instead.
    init_from: str | None = None
    compile: bool = False  # torch.compile the backbone's blocks for training (1.27x per step on CPU)
    model: UnifiedModelConfig = field(default_factory=UnifiedModelConfig)
    data: MixtureConfig = field(default_factory=MixtureConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.processes < 1:
            problems.append(f"processes must be >= 1, got {self.processes}")
        if self.task_loss_shares is not None:
            shares = self.task_loss_shares
            problems += [f"task_loss_shares: unknown task {t!r} (tasks: {list(TASKS)})" for t in shares if t not in TASKS]
            if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
                problems.append(f"task_loss_shares must be >= 0 with a positive sum, got {shares}")
            problems += [
                f"task_loss_shares gives task {t!r} no share, but data.task_probs draws it"
                for t, p in self.data.task_probs.items() if p > 0 and shares.get(t, 0) <= 0
            ]  # fmt: skip
        if problems:
            raise ValueError("; ".join(problems))


def build_tokenizer(cfg: UnifiedRecipe, out: Path) -> TextTokenizer:
    """The run's tokenizer: trained on train-split text once, then reloaded (so a resume reuses it). A run with
    ``init_from`` takes that run's tokenizer: the weights it starts from were trained on those token ids."""
    path = out / "tokenizer"
    if (path / "tokenizer.json").is_file():
        return TextTokenizer.load(path)
    source = Path(cfg.init_from) / "tokenizer" if cfg.init_from else None
    if source is not None and (source / "tokenizer.json").is_file():
        tok = TextTokenizer.load(source)
    else:
        tok = train_world_tokenizer(world_texts("train", cfg.tokenizer_scenes, cfg.data.seed))
    tok.save(path)
    return tok


LOOK_SCENES = 2000  # training scenes whose patches give each image id its look (model.code_features)


def build(cfg: UnifiedRecipe, device: str = "cpu") -> tuple[UnifiedModel, StatefulLoader | DocumentPacker]:
    """The model and this process's data: in a process group (`panglot.training.distributed`) its shard of the
    documents, ``batch_size / processes`` of them a batch."""
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
    shard = (distributed.rank(), distributed.world_size())
    documents = math.ceil(cfg.batch_size / shard[1])  # per process
    if cfg.packing.enabled:  # rows of whole documents, attention and positions kept inside each
        pack_len, rows = packed_shape(dataset, cfg.packing, documents)
        logger.info("packing documents into batches of %d rows of %d tokens%s", rows, pack_len,
                    f" in each of {shard[1]} processes" if shard[1] > 1 else "")  # fmt: skip
        loader = DocumentPacker(
            dataset, pack_len, rows, pad_id=pad_id, seed=cfg.train.seed, lookahead=cfg.packing.lookahead, shard=shard
        )
    else:
        collate_fn = partial(collate, pad_id=pad_id)
        loader = StatefulLoader(dataset, documents, seed=cfg.train.seed, collate_fn=collate_fn, shard=shard)
    return model, loader


def loss_fn(
    model: UnifiedModel, batch: dict[str, torch.Tensor], task_shares: dict[str, float] | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    batch = {k: v.to(model.device) for k, v in batch.items()}
    loss, metrics = model.loss(batch, task_shares)
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
            loss, _ = loss_fn(model, next(loader), cfg.task_loss_shares)
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
    job's ``deadline`` the budget's re-fits also leave its reserve (`panglot.training.budget.Deadline`; its clock,
    ``time.perf_counter``, is the system's monotonic clock, the same in the training processes). With
    ``cfg.processes > 1`` the training runs in that many new processes (`panglot.training.distributed.launch`),
    each on ``cfg.threads`` threads (default: this process's threads shared out)."""
    if cfg.processes == 1:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        _train(cfg, resume, device, minutes, deadline)
        return Path(cfg.out_dir)
    if device != "cpu":
        raise ValueError(f"processes: {cfg.processes} is data parallelism over CPU processes; on {device} use 1")
    build_tokenizer(cfg, Path(cfg.out_dir))  # once, before the processes that read it
    threads = cfg.threads or max(1, torch.get_num_threads() // cfg.processes)
    logger.info("training in %d processes of %d thread(s) each", cfg.processes, threads)
    distributed.launch(_train, cfg.processes, cfg, resume, device, minutes, deadline, threads=threads)
    return Path(cfg.out_dir)


def init_weights(model: UnifiedModel, run_dir: Path) -> None:
    """Load the weights of ``run_dir``'s last training checkpoint (``RUN/train``) into ``model``, strictly."""
    ckpt = latest_checkpoint(run_dir / "train")
    if ckpt is None:
        raise FileNotFoundError(f"init_from: {run_dir / 'train'} holds no training checkpoint")
    step = load_checkpoint(ckpt, model)["step"]
    logger.info("starting from the weights of %s (step %d)", ckpt, step)


def _train(
    cfg: UnifiedRecipe, resume: bool, device: str, minutes: float | None, deadline: Deadline | None
) -> None:  # fmt: skip
    """`run`'s training, in each process of a group (or the only one); rank 0 exports the model."""
    model, loader = build(cfg, device)
    train_dir = Path(cfg.out_dir) / "train"
    if cfg.init_from and not (resume and latest_checkpoint(train_dir)):
        init_weights(model, Path(cfg.init_from))
    if cfg.compile:  # before the budget probe, whose warm-up steps pay the compilation
        model.backbone.compile_layers()
    distributed.barrier()  # every process sees whether a budget was fitted before any writes one
    probe = lambda: distributed.slowest(seconds_per_step(model, loader, cfg))  # noqa: E731
    cfg.train = budgeted(cfg.train, cfg.out_dir, minutes, probe)
    loss = partial(loss_fn, task_shares=cfg.task_loss_shares)
    trainer = Trainer(cfg.train, model, loss, loader, train_dir, deadline=deadline)
    summary = trainer.train(resume=resume)
    if distributed.is_main():
        logger.info("trained %d steps, final loss %.4f", summary.steps, summary.final_loss or float("nan"))
        save_model(cfg.out_dir, model, extra={"generation": {"cfg_scale": cfg.cfg_scale}, "recipe": to_dict(cfg)})


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--minutes", type=float, default=None, help="fit train.max_steps to this time budget")
    parser.add_argument(
        "--device", default="cpu", help="where to train: cpu (the recipes' figures), cuda, cuda:1, mps"
    )
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # overrides only, no YAML
        config, overrides = None, [config, *overrides]
    cfg = load_config(UnifiedRecipe, config, overrides)
    return run(cfg, resume=args.resume, device=str(resolve_device(args.device)), minutes=args.minutes)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
