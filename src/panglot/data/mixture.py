"""The ShapesWorld task mixture for the unified model: text-to-image, captioning and VQA documents.

Images are encoded once by the codec (``encode_scenes``); documents are then built on the fly. Document
``i`` is a pure function of ``(seed, i)``: which scene, which task, which paraphrase, whether the condition
is dropped. Together with the stateful loader's order this makes every run, and every resumed run, exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from panglot.codecs.base import images_to_tensor
from panglot.codecs.text import TextTokenizer
from panglot.multimodal import TASKS, SequenceLayout, TaskSequence
from panglot.world import language, vqa
from panglot.world.dataset import split_scenes
from panglot.world.render import render_batch
from panglot.world.scene import Scene

# what a describing run writes before its answer (MixtureConfig.vqa_description) -> the text, None for the caption
VQA_DESCRIPTIONS = {"caption": None, **vqa.MARKINGS}


@dataclass
class MixtureConfig:
    """How documents are drawn from the world."""

    n_scenes: int = 20000  # distinct training scenes (each encoded once)
    # ``vqa_text`` (a describing VQA document without its image, SequenceLayout.vqa_text) needs model.vqa_describe
    task_probs: dict[str, float] = field(default_factory=lambda: {"t2i": 0.5, "caption": 0.2, "vqa": 0.3})
    loss_weights: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TASKS})
    paraphrase_prob: float = 0.3  # share of t2i prompts that are paraphrases (captions stay canonical)
    cond_dropout: float = 0.1  # share of t2i documents whose caption is replaced by <uncond> (CFG)
    # Questions per VQA document, answered one after another about the same image (SequenceLayout.vqa_dialogue):
    # the image is most of a document's tokens, so k questions give k times the answers for ~1.4x the tokens (k=4).
    vqa_questions: int = 1
    # Loss weight on a VQA question's own tokens, relative to its answer's (SequenceLayout.vqa_dialogue): predicting
    # "is there a yellow [circle]" about an image that holds one asks for the lookup the answer needs
    # (recipes/lookup_probe.py --question-weight). 0 = answers only.
    vqa_question_weight: float = 0.0
    # What a describing run (``model.vqa_describe``) writes before its answer: ``caption``, the scene's caption, or
    # ``marked``, the caption with ``yes`` / ``no`` after each object phrase, whether the question is about it
    # (``panglot.world.vqa.marked_caption``): the lookup becomes a comparison beside the phrase just written; or
    # ``fields``, the marked caption with a mark after each field a two-field question names too, so each mark compares
    # one word (``panglot.world.vqa.field_marked_caption``).
    vqa_description: str = "caption"
    # Loss weight of a marked description's ``yes`` / ``no`` marks, relative to its other tokens (1 = as a word).
    vqa_mark_weight: float = 1.0
    # With a mark weight: scale the document's weights back to their sum before the marks were weighted, so the
    # marks take their share from the description's words, not from the other documents of the batch (the loss is
    # a mean over weighted tokens).
    vqa_mark_keep_total: bool = False
    # VQA questions ``what shape is at ...`` ask about occupied and empty cells alternately (``world.vqa.questions``'
    # ``balance_positions``): drawn as they come, three in four answer ``nothing`` and an all-``no`` marking scores
    # 78 %, which is what the marks by position stayed at in session 21's runs.
    vqa_balance_positions: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [f"unknown task {t!r}" for t in {**self.task_probs, **self.loss_weights} if t not in TASKS]
        if not self.task_probs or sum(self.task_probs.values()) <= 0:
            problems.append("task_probs must give a positive probability to at least one task")
        if not 0 <= self.cond_dropout < 1:
            problems.append(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.vqa_questions < 1:
            problems.append(f"vqa_questions must be >= 1, got {self.vqa_questions}")
        if self.vqa_description not in VQA_DESCRIPTIONS:
            problems.append(f"vqa_description must be one of {list(VQA_DESCRIPTIONS)}, got {self.vqa_description!r}")
        elif self.vqa_description != "caption" and self.vqa_questions != 1:
            problems.append(
                f"vqa_description {self.vqa_description!r} marks the objects of one question: vqa_questions must be 1, "
                f"got {self.vqa_questions}"
            )
        if self.vqa_mark_weight < 0:
            problems.append(f"vqa_mark_weight must be >= 0, got {self.vqa_mark_weight}")
        if self.vqa_question_weight < 0:
            problems.append(f"vqa_question_weight must be >= 0, got {self.vqa_question_weight}")
        if problems:
            raise ValueError("; ".join(problems) + f" (tasks are {list(TASKS)})")


@torch.no_grad()
def encode_scenes(codec, scenes: Sequence[Scene], batch_size: int = 256) -> torch.Tensor:
    """Render and encode scenes -> codec ids ``(N, tokens_per_item)`` long."""
    out = []
    for start in range(0, len(scenes), batch_size):
        x = images_to_tensor(render_batch(scenes[start : start + batch_size])).to(codec.device)
        out.append(codec.encode_tensor(x).cpu())
    return torch.cat(out)


class WorldMixture:
    """An indexable dataset of ``docs_per_scene`` documents per scene (task, text and question drawn per document)."""

    def __init__(
        self,
        cfg: MixtureConfig,
        layout: SequenceLayout,
        tokenizer: TextTokenizer,
        scenes: Sequence[Scene],
        codes: torch.Tensor,
        docs_per_scene: int = 4,
    ):
        if len(scenes) != len(codes):
            raise ValueError(f"{len(scenes)} scenes but {len(codes)} code rows")
        if cfg.vqa_description != "caption" and not layout.vqa_describe:
            raise ValueError(f"vqa_description {cfg.vqa_description!r} is what a describing run writes: set model.vqa_describe")
        if cfg.task_probs.get("vqa_text", 0) > 0 and not layout.vqa_describe:
            raise ValueError("task vqa_text answers from the description a describing run writes: set model.vqa_describe")
        self.cfg, self.layout, self.tok = cfg, layout, tokenizer
        self.scenes, self.codes = list(scenes), codes
        self.docs_per_scene = docs_per_scene
        self._tasks = [t for t in TASKS if cfg.task_probs.get(t, 0) > 0]
        probs = np.array([cfg.task_probs[t] for t in self._tasks], dtype=np.float64)
        self._cum = np.cumsum(probs / probs.sum())
        self._marks = {tokenizer.encode(word)[0] for word in vqa.MARKS}  # a marked description's marks (one id each)

    def __len__(self) -> int:
        return len(self.scenes) * self.docs_per_scene

    def __getitem__(self, index: int) -> TaskSequence:
        if not 0 <= index < len(self):  # also ends iteration (``for doc in mixture``), which would otherwise never end
            raise IndexError(f"document {index} of a mixture of {len(self)}")
        rng = np.random.default_rng([self.cfg.seed, index])
        k = index % len(self.scenes)
        scene, codes = self.scenes[k], self.codes[k]
        task = self._tasks[int(np.searchsorted(self._cum, rng.random(), side="right").clip(0, len(self._tasks) - 1))]
        weight = self.cfg.loss_weights.get(task, 1.0)
        if task == "vqa_text":  # one question, answered from the scene's description, no image
            qa = vqa.questions(scene, rng, k=1, balance_positions=self.cfg.vqa_balance_positions)[0]
            marker = VQA_DESCRIPTIONS[self.cfg.vqa_description]
            marked = marker is not None
            description = self.tok.encode(marker(scene, qa) if marked else language.caption(scene))
            answer = self.tok.encode(qa.answer)
            doc = self.layout.vqa_text(self.tok.encode(qa.question), answer, description, weight)
            return self._weigh_marks(doc, description, len(answer), keep_total=False) if marked else doc
        if task == "vqa":  # kinds round-robin from a random first one, so rare kinds (count) are learnt too
            picks = vqa.questions(scene, rng, k=self.cfg.vqa_questions, balance_positions=self.cfg.vqa_balance_positions)
            turns = [(self.tok.encode(qa.question), self.tok.encode(qa.answer)) for qa in picks]
            if VQA_DESCRIPTIONS[self.cfg.vqa_description] is not None:
                return self._marked_vqa(codes, scene, picks[0], turns[0], weight)
            description = self.tok.encode(language.caption(scene)) if self.layout.vqa_describe else None
            return self.layout.vqa_dialogue(codes, turns, weight, description, self.cfg.vqa_question_weight)
        if task == "caption":  # answers are always in the canonical language
            return self.layout.caption(codes, self.tok.encode(language.caption(scene)), weight)
        text = language.paraphrase(scene, rng) if rng.random() < self.cfg.paraphrase_prob else language.caption(scene)
        ids = self.tok.encode(text)
        return self.layout.t2i(ids, codes, drop_condition=rng.random() < self.cfg.cond_dropout, weight=weight)

    def _marked_vqa(self, codes, scene: Scene, qa, turn: tuple[list[int], list[int]], weight: float) -> TaskSequence:
        """One question, answered after the marked caption, its marks weighted by ``vqa_mark_weight``."""
        description = self.tok.encode(VQA_DESCRIPTIONS[self.cfg.vqa_description](scene, qa))
        doc = self.layout.vqa_dialogue(codes, [turn], weight, description, self.cfg.vqa_question_weight)
        return self._weigh_marks(doc, description, len(turn[1]), self.cfg.vqa_mark_keep_total)

    def _weigh_marks(self, doc: TaskSequence, description: list[int], answer_len: int, keep_total: bool) -> TaskSequence:
        """``doc`` (ending ``description <assistant> answer <eos>``) with its marks weighing ``vqa_mark_weight``
        times the document's ``loss_weights`` (a ``vqa_text`` description's words weigh nothing, its marks this)."""
        if self.cfg.vqa_mark_weight == 1.0 and doc.task == "vqa":
            return doc
        base = self.cfg.loss_weights.get(doc.task, 1.0)
        start = len(doc) - len(description) - answer_len - 2
        weights = list(doc.weights)
        for j, token in enumerate(description):
            if token in self._marks:
                weights[start + j] = base * self.cfg.vqa_mark_weight
        if keep_total and sum(weights) > 0:
            scale = sum(doc.weights) / sum(weights)
            weights = [w * scale for w in weights]
        return TaskSequence(doc.task, doc.tokens, weights)


def world_texts(split: str, n: int, seed: int) -> list[str]:
    """Every kind of text the world produces for ``n`` scenes: tokenizer training material."""
    rng = np.random.default_rng([seed, 104729])
    texts = []
    for scene in split_scenes(split, n, seed):
        texts.append(language.caption(scene))
        texts.append(language.paraphrase(scene, rng))
        for qa in vqa.questions(scene, rng):
            texts.extend([qa.question, qa.answer])
    return texts
