"""Experiment: can the backbone learn the VQA lookups from text alone? (issue 3's VQA target)

    python recipes/lookup_probe.py --out runs/probe_base --steps 1500     # the unified quickstart recipe's lr and wd
    python recipes/lookup_probe.py --out runs/probe_lr3e-4 --steps 1500 --lr 3e-4 --weight-decay 0
    python recipes/lookup_probe.py --out runs/probe_8h --steps 1500 n_heads=8 n_kv_heads=8   # backbone overrides
    python recipes/lookup_probe.py --out runs/probe_q1 --steps 1500 --lr 3e-4 --weight-decay 0 --question-weight 1
    python recipes/lookup_probe.py --out runs/probe_marks --steps 1000 --optimizer muon --muon-lr-scale 4 --marks

The unified model answers questions that name an object by position or count (``shape_at``, ``count``) but not
the ones that name it by colour and shape (``exists``, ``where``, ``color``), even when the scene's caption is in
its context. This probe takes the images out: a fresh backbone of a named size learns only

    <bos> <vqa> caption question <assistant> answer <eos>      (loss on the answer and its <eos>)

over training-split scenes, with the world tokenizer, trained by the foundation ``Trainer`` (AdamW groups, warmup
+ cosine, bf16 autocast) as the unified recipe is; ``OUT/train`` holds its metrics log and final checkpoint. Every ``--eval-every`` steps it answers a fixed, kind-balanced set of
held-out (``val``) questions, ``exists`` half yes and half no, and logs accuracy per kind; ``OUT/results.json``
holds the curve. It runs in seconds per hundred steps, so learning rates, sizes and schedules can be compared on
the lookup alone before a full quickstart is spent on them (docs/quickstart_results.md "The lookup probe").

``--marks``: the question comes first and the caption follows it with ``yes`` / ``no`` after each object phrase
(whether the question is about that object; ``panglot.world.vqa.marked_caption``), then the answer:

    <bos> <vqa> question <assistant> phrase mark and phrase mark ... <assistant> answer <eos>

(loss on the marks, the second ``<assistant>``, the answer and ``<eos>``; the caption's words are given, as a
model that captions well would write them). Evaluation writes the marks itself, greedily, phrase by phrase.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from panglot.backbone import sizes
from panglot.backbone.transformer import Transformer
from panglot.codecs.text import TextTokenizer, train_world_tokenizer
from panglot.codecs.text import special as sp
from panglot.config import parse_overrides
from panglot.data.mixture import world_texts
from panglot.files import atomic_write_json
from panglot.model.unified import collate
from panglot.multimodal.layout import TaskSequence
from panglot.training import OptimConfig, TrainConfig, Trainer
from panglot.world import vqa
from panglot.world.dataset import make_example
from panglot.world.language import object_phrase
from panglot.world.scene import Scene
from panglot.world.vqa import KINDS, QA

logger = logging.getLogger("panglot.recipes.lookup_probe")


@dataclasses.dataclass
class ProbeConfig:
    out: str
    steps: int = 1500
    size: str = "tiny"
    backbone: dict = dataclasses.field(default_factory=dict)  # TransformerConfig overrides (n_heads=8, ...)
    lr: float = 7e-4  # the unified quickstart recipe's
    weight_decay: float = 0.0  # the unified quickstart recipe's
    warmup_steps: int = 100
    batch_size: int = 64
    kinds: tuple[str, ...] = KINDS
    train_scenes: int = 20000
    eval_scenes: int = 300
    eval_per_scene: int = 12
    eval_every: int = 250
    precision: str = "auto"
    seed: int = 0
    tokenizer_scenes: int = 3000
    separator: bool = False  # <user> between caption and question (`document`)
    question_weight: float = 0.0  # loss weight on the question's tokens (`document`); the answer's is 1
    optimizer: str = "adamw"  # or "muon" (`OptimConfig.algorithm`)
    muon_lr_scale: float = 1.0  # `OptimConfig.muon_lr_scale`
    marks: bool = False  # question first, then the caption with a yes / no mark per object (`marked_document`)


class Questions:
    """Kind-balanced questions about a scene: a kind uniformly, then (``exists``) yes or no with equal odds."""

    def __init__(self, kinds: tuple[str, ...]) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown question kinds {sorted(unknown)}; known: {list(KINDS)}")
        self.kinds = kinds

    def pick(self, qas: tuple[QA, ...], rng: np.random.Generator) -> QA:
        present = [k for k in self.kinds if any(qa.kind == k for qa in qas)]
        kind = present[rng.integers(len(present))]
        pool = [qa for qa in qas if qa.kind == kind]
        if kind == "exists":
            answer = "yes" if rng.integers(2) else "no"
            pool = [qa for qa in pool if qa.answer == answer] or pool
        return pool[rng.integers(len(pool))]


def document(
    tok: TextTokenizer, caption: str, qa: QA, separator: bool = False, question_weight: float = 0.0
) -> TaskSequence:
    """``<bos> <vqa> caption question <assistant> answer <eos>``, weighted on the answer and its ``<eos>``
    (and on the question's tokens by ``question_weight``: predicting "is there a yellow [circle]" from the
    caption asks for the same lookup as the answer does); ``separator`` puts ``<user>`` between the caption and
    the question (as ``<eoi>`` ends an image)."""
    middle = [tok.token_to_id(sp.USER)] if separator else []
    context = [tok.token_to_id(sp.BOS), tok.token_to_id(sp.VQA), *tok.encode(caption), *middle]
    question = [*tok.encode(qa.question), tok.token_to_id(sp.ASSISTANT)]
    target = [*tok.encode(qa.answer), tok.token_to_id(sp.EOS)]
    weights = [0.0] * len(context) + [question_weight] * (len(question) - 1) + [0.0] + [1.0] * len(target)
    return TaskSequence("vqa", context + question + target, weights)


def marked_parts(tok: TextTokenizer, scene: Scene, qa: QA) -> tuple[list[int], list[list[int]], list[int], list[int]]:
    """(prompt ``<bos> <vqa> question <assistant>``, each phrase's ids (``and`` before all but the first), each
    phrase's mark id, answer ids)."""
    prompt = [tok.token_to_id(sp.BOS), tok.token_to_id(sp.VQA), *tok.encode(qa.question), tok.token_to_id(sp.ASSISTANT)]
    objects = scene.objects  # in reading order, as the caption reads them (``Scene``)
    phrases = [(tok.encode("and") if i else []) + tok.encode(object_phrase(o)) for i, o in enumerate(objects)]
    marks = [tok.encode(vqa.mark(qa, o))[0] for o in objects]
    return prompt, phrases, marks, tok.encode(qa.answer)


def marked_document(tok: TextTokenizer, scene: Scene, qa: QA) -> TaskSequence:
    """``<bos> <vqa> question <assistant> phrase mark and phrase mark ... <assistant> answer <eos>``, loss on the
    marks, the closing ``<assistant>``, the answer and ``<eos>``."""
    prompt, phrases, marks, answer = marked_parts(tok, scene, qa)
    tokens, weights = list(prompt), [0.0] * len(prompt)
    for phrase, mark in zip(phrases, marks):
        tokens += [*phrase, mark]
        weights += [0.0] * len(phrase) + [1.0]
    target = [tok.token_to_id(sp.ASSISTANT), *answer, tok.token_to_id(sp.EOS)]
    return TaskSequence("vqa", tokens + target, weights + [1.0] * len(target))


class ProbeBatches:
    """Batches of probe documents about random training scenes; batch ``i`` depends only on (seed, i), so the
    position is the whole state (the trainer's ``StatefulData``)."""

    def __init__(self, cfg: ProbeConfig, tok: TextTokenizer, questions: Questions) -> None:
        self.cfg, self.tok, self.questions = cfg, tok, questions
        self.scenes = [make_example("train", cfg.seed, i) for i in range(cfg.train_scenes)]
        self.pad = tok.token_to_id(sp.PAD)
        self.position = 0

    def __iter__(self) -> ProbeBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, 11, self.position])
        self.position += 1
        picked = [self.scenes[i] for i in rng.integers(len(self.scenes), size=self.cfg.batch_size)]
        docs = []
        for ex in picked:
            qa = self.questions.pick(ex.questions, rng)
            if self.cfg.marks:
                docs.append(marked_document(self.tok, ex.scene, qa))
            else:
                docs.append(document(self.tok, ex.caption, qa, self.cfg.separator, self.cfg.question_weight))
        return collate(docs, self.pad)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def answer_loss(model: Transformer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token loss over the weighted (answer) positions."""
    tokens, weights = batch["tokens"], batch["weights"][:, 1:].flatten()
    logits = model(tokens[:, :-1])
    nll = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return (nll * weights).sum() / weights.sum(), {}


def eval_set(cfg: ProbeConfig, tok: TextTokenizer, questions: Questions) -> list[tuple]:
    """(kind, prompt, answer id) for held-out questions with one-token answers, fixed by the seed; with
    ``cfg.marks``, (kind, prompt, phrases, marks, answer id) (``marked_parts``)."""
    items = []
    for i in range(cfg.eval_scenes):
        ex = make_example("val", cfg.seed, i)
        rng = np.random.default_rng([cfg.seed, 7, i])
        for _ in range(cfg.eval_per_scene):
            qa = questions.pick(ex.questions, rng)
            if cfg.marks:
                prompt, phrases, marks, answer = marked_parts(tok, ex.scene, qa)
                if len(answer) == 1:
                    items.append((qa.kind, prompt, phrases, marks, answer[0]))
                continue
            doc = document(tok, ex.caption, qa, cfg.separator)
            n_prompt = doc.tokens.index(tok.token_to_id(sp.ASSISTANT)) + 1
            if len(doc) - n_prompt == 2:  # one answer token and <eos>
                items.append((qa.kind, doc.tokens[:n_prompt], doc.tokens[n_prompt]))
    return items


def _last_logits(model: Transformer, rows: list[list[int]], pad: int) -> torch.Tensor:
    """(B, V) logits at each row's last token (rows right-padded with ``pad``)."""
    lengths = torch.tensor([len(r) for r in rows])
    tokens = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return model(tokens)[torch.arange(len(rows)), lengths - 1]


@torch.no_grad()
def accuracy(model: Transformer, items, pad: int, batch: int = 256) -> dict[str, float]:
    """Greedy one-token answer accuracy per kind on ``items``."""
    model.eval()
    hits = defaultdict(list)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        logits = _last_logits(model, [prompt for _, prompt, _ in chunk], pad)
        for (kind, _, answer), guess in zip(chunk, logits.argmax(-1).tolist()):
            hits[kind].append(guess == answer)
    model.train()
    return {kind: float(np.mean(h)) for kind, h in sorted(hits.items())}


@torch.no_grad()
def accuracy_marked(model: Transformer, items, pad: int, assistant: int, batch: int = 256) -> dict[str, float]:
    """Per kind, answer accuracy when the model writes every mark itself (greedy, phrase by phrase) and then the
    answer; ``marks_<kind>``: share of documents whose marks were all right."""
    model.eval()
    hits, marks_right = defaultdict(list), defaultdict(list)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        rows = [list(prompt) for _, prompt, _, _, _ in chunk]
        right = [True] * len(chunk)
        for j in range(max(len(phrases) for _, _, phrases, _, _ in chunk)):
            live = [i for i, item in enumerate(chunk) if len(item[2]) > j]
            for i in live:
                rows[i] += chunk[i][2][j]
            guesses = _last_logits(model, [rows[i] for i in live], pad).argmax(-1).tolist()
            for i, guess in zip(live, guesses):
                rows[i].append(guess)
                right[i] &= guess == chunk[i][3][j]
        answers = _last_logits(model, [[*r, assistant] for r in rows], pad).argmax(-1).tolist()
        for (kind, _, _, _, answer), guess, ok in zip(chunk, answers, right):
            hits[kind].append(guess == answer)
            marks_right[kind].append(ok)
    model.train()
    out = {kind: float(np.mean(h)) for kind, h in sorted(hits.items())}
    return out | {f"marks_{kind}": float(np.mean(h)) for kind, h in sorted(marks_right.items())}


def run(cfg: ProbeConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tok = train_world_tokenizer(world_texts("train", cfg.tokenizer_scenes, cfg.seed))
    pad = tok.token_to_id(sp.PAD)
    questions = Questions(tuple(cfg.kinds))
    items = eval_set(cfg, tok, questions)
    base = getattr(sizes, cfg.size)(tok.vocab_size)
    unknown = set(cfg.backbone) - {f.name for f in dataclasses.fields(base)}
    if unknown:
        raise ValueError(f"unknown backbone overrides {sorted(unknown)}; TransformerConfig has no such fields")
    model = Transformer(dataclasses.replace(base, **cfg.backbone))
    train_cfg = TrainConfig(
        optim=OptimConfig(
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
            algorithm=cfg.optimizer,
            muon_lr_scale=cfg.muon_lr_scale,
        ),
        max_steps=cfg.steps, precision=cfg.precision, seed=cfg.seed, log_every=cfg.eval_every, ckpt_every=0,
    )  # fmt: skip
    curve, started, cpu_started = [], time.perf_counter(), time.process_time()

    def evaluate(trainer: Trainer, metrics: dict[str, float]) -> dict[str, float] | None:
        if trainer.step % cfg.eval_every and trainer.step != cfg.steps:
            return None
        if cfg.marks:
            acc = accuracy_marked(model, items, pad, tok.token_to_id(sp.ASSISTANT))
        else:
            acc = accuracy(model, items, pad)
        curve.append({"step": trainer.step, "loss": metrics["loss"], "wall_s": time.perf_counter() - started,
                      "cpu_s": time.process_time() - cpu_started, "accuracy": acc})  # fmt: skip
        logger.info("step %d loss %.3f %s", trainer.step, metrics["loss"], " ".join(f"{k} {v:.1%}" for k, v in acc.items()))
        atomic_write_json(out / "results.json", {"config": dataclasses.asdict(cfg), "curve": curve})
        return {f"accuracy_{kind}": value for kind, value in acc.items()}

    batches = ProbeBatches(cfg, tok, questions)
    Trainer(train_cfg, model, answer_loss, batches, out / "train", callbacks=[evaluate]).train()
    return {"config": dataclasses.asdict(cfg), "curve": curve}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=ProbeConfig.steps)
    parser.add_argument("--size", default=ProbeConfig.size)
    parser.add_argument("--lr", type=float, default=ProbeConfig.lr)
    parser.add_argument("--weight-decay", type=float, default=ProbeConfig.weight_decay)
    parser.add_argument("--batch-size", type=int, default=ProbeConfig.batch_size)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--eval-every", type=int, default=ProbeConfig.eval_every)
    parser.add_argument("--seed", type=int, default=ProbeConfig.seed, help="model init, scenes, batches and val set")
    parser.add_argument("--separator", action="store_true", help="<user> between the caption and the question")
    parser.add_argument("--question-weight", type=float, default=0.0, help="loss weight on the question's tokens")
    parser.add_argument("--optimizer", choices=["adamw", "muon"], default=ProbeConfig.optimizer)
    parser.add_argument("--muon-lr-scale", type=float, default=ProbeConfig.muon_lr_scale)
    parser.add_argument("--marks", action="store_true", help="question first, then the caption marked yes / no per object")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="backbone overrides, e.g. n_heads=8 n_layers=6")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ProbeConfig(
        out=args.out, steps=args.steps, size=args.size, backbone=parse_overrides(args.overrides), lr=args.lr,
        weight_decay=args.weight_decay, batch_size=args.batch_size, kinds=tuple(args.kinds),
        eval_every=args.eval_every, seed=args.seed, separator=args.separator, question_weight=args.question_weight,
        optimizer=args.optimizer,
        muon_lr_scale=args.muon_lr_scale, marks=args.marks,
    )
    return run(cfg)


if __name__ == "__main__":
    main()
