"""Sequence layout of every task: which tokens a document holds and which of them carry loss.

    text-to-image   <bos> <t2i> caption <boi> codes <eoi> <eos>     (caption -> <uncond> when dropped)
    caption         <bos> <caption> <boi> codes <eoi> caption <eos>
    vqa             <bos> <vqa> <boi> codes <eoi> question <assistant> answer <eos>
                    (k questions about one image: ... answer <eos> question2 <assistant> answer2 <eos> ...)
    vqa, question first (``vqa_order="question_first"``):
                    <bos> <vqa> question <boi> codes <eoi> <assistant> answer <eos>
    vqa, describing first (``vqa_describe``): ... question <assistant> caption <assistant> answer <eos>
    vqa_text        <bos> <vqa> question <assistant> caption <assistant> answer <eos>
                    (a describing VQA document without its image: the lookup alone, in text; training only)

A prompt is the document cut where the model starts to write. Condition dropout (the training knob of
classifier-free guidance) and the unconditional prompt (its inference knob) both use ``<uncond>``, so
they are one concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from panglot.codecs.text import special as sp
from panglot.multimodal.vocab import UnifiedVocab

# What a training document can be (its index is the task id of the loss's per-task shares and logs). The first three
# read or write an image and are what the evaluation measures; ``vqa_text`` trains the lookup a describing VQA
# document ends with, from the description alone, at ~45 tokens a document instead of ~110.
TASKS = ("t2i", "caption", "vqa", "vqa_text")
IMAGE_TASKS = TASKS[:3]
VQA_ORDERS = ("image_first", "question_first")


@dataclass(frozen=True)
class TaskSequence:
    """One document: ``tokens`` and per-token loss ``weights`` (weight of predicting ``tokens[i]``)."""

    task: str
    tokens: list[int]
    weights: list[float]

    def __len__(self) -> int:
        return len(self.tokens)


class SequenceLayout:
    """Builds training documents and inference prompts for each task over one image slot.

    ``vqa_order``: where a VQA document puts its (first) question. ``image_first`` (LLaVA, CM3Leon) reads the
    image before it knows what is asked; ``question_first`` lets every image token attend to the question
    (a causal model's way to read the image for a purpose, as InstructBLIP's instruction-aware Q-Former does).
    """

    OPTIONS = ("vqa_order", "vqa_describe")  # the switches: keyword arguments here, fields of a run's model config

    def __init__(
        self, vocab: UnifiedVocab, image_slot: str = "image", vqa_order: str = "image_first", vqa_describe: bool = False
    ):
        if vqa_order not in VQA_ORDERS:
            raise ValueError(f"unknown vqa_order {vqa_order!r}; expected one of {list(VQA_ORDERS)}")
        self.vocab = vocab
        self.image_slot = image_slot
        self.vqa_order = vqa_order
        # answers follow a description of the scene the model writes first (a caption, then <assistant>): what it
        # is asked becomes a lookup in its own text; ``Panglot.ask`` returns what follows the last <assistant>
        self.vqa_describe = vqa_describe
        s = vocab.special
        self.bos, self.eos, self.uncond, self.assistant = s(sp.BOS), s(sp.EOS), s(sp.UNCOND), s(sp.ASSISTANT)
        self.boi, self.eoi = s(sp.BOI), s(sp.EOI)
        self.task_id = {"t2i": s(sp.T2I), "caption": s(sp.CAPTION), "vqa": s(sp.VQA)}

    @property
    def options(self) -> dict[str, str | bool]:
        """The switches this layout was built with (``SequenceLayout(vocab, slot, **options)`` rebuilds it; a run
        keeps them in run.json)."""
        return {name: getattr(self, name) for name in self.OPTIONS}

    # ----- prompts (inference) -----

    def t2i_prompt(self, caption: Sequence[int] | None) -> list[int]:
        """``<bos> <t2i> caption <boi>``; ``caption=None`` gives the unconditional prompt."""
        condition = list(caption) if caption is not None else [self.uncond]
        return [self.bos, self.task_id["t2i"], *condition, self.boi]

    def caption_prompt(self, codes) -> list[int]:
        return [self.bos, self.task_id["caption"], *self.vocab.span(self.image_slot, codes)]

    def vqa_prompt(self, codes, question: Sequence[int]) -> list[int]:
        image = self.vocab.span(self.image_slot, codes)
        if self.vqa_order == "question_first":
            return [self.bos, self.task_id["vqa"], *question, *image, self.assistant]
        return [self.bos, self.task_id["vqa"], *image, *question, self.assistant]

    def vqa_text_prompt(self, question: Sequence[int]) -> list[int]:
        """``<bos> <vqa> question <assistant>``: a ``vqa_text`` document's prompt (the question, no image)."""
        return [self.bos, self.task_id["vqa"], *question, self.assistant]

    # ----- documents (training) -----

    def t2i(self, caption: Sequence[int], codes, drop_condition: bool = False, weight: float = 1.0) -> TaskSequence:
        prompt = self.t2i_prompt(None if drop_condition else caption)
        target = [*self.vocab.span(self.image_slot, codes)[1:], self.eos]  # codes, <eoi>, <eos>
        return self._document("t2i", prompt, target, weight)

    def caption(self, codes, caption: Sequence[int], weight: float = 1.0) -> TaskSequence:
        return self._document("caption", self.caption_prompt(codes), [*caption, self.eos], weight)

    def vqa_text(
        self, question: Sequence[int], answer: Sequence[int], description: Sequence[int], weight: float = 1.0
    ) -> TaskSequence:
        """A describing VQA document without its image: ``<bos> <vqa> question <assistant> description <assistant>
        answer <eos>``. The description (the scene's caption, or its marked form) is given and carries no loss, as
        it cannot be predicted without the image; the answer and its ``<eos>`` carry ``weight``. Its tokens sit at
        the same distances from the question as in the image's document, so what it trains (answering from the
        written description, or marking its objects) is the same attention; a caller may weight marks inside the
        description (``WorldMixture``)."""
        if not self.vqa_describe:
            raise ValueError("a vqa_text document answers from a description: the layout needs vqa_describe")
        prompt = self.vqa_text_prompt(question)
        target = [*description, self.assistant, *answer, self.eos]
        weights = [0.0] * (len(prompt) + len(description) + 1) + [weight] * (len(answer) + 1)
        return TaskSequence("vqa_text", prompt + target, weights)

    def vqa(
        self,
        codes,
        question: Sequence[int],
        answer: Sequence[int],
        weight: float = 1.0,
        description: Sequence[int] | None = None,
    ) -> TaskSequence:
        return self.vqa_dialogue(codes, [(question, answer)], weight, description)

    def vqa_dialogue(
        self,
        codes,
        turns: Sequence[tuple[Sequence[int], Sequence[int]]],
        weight: float = 1.0,
        description: Sequence[int] | None = None,
        question_weight: float = 0.0,
    ) -> TaskSequence:
        """Several questions about one image, each answered and closed with ``<eos>`` before the next; the
        answers (and, with ``vqa_describe``, the description before the first one) and their ``<eos>`` carry loss
        ``weight``, each question's own tokens ``question_weight * weight`` (0: none). The first turn is exactly
        the one-question document, and ``vqa_prompt`` (inference) asks one question, as the first turn does.
        ``description`` (the scene's caption) is required exactly when ``vqa_describe``."""
        if not turns:
            raise ValueError("a VQA document needs at least one (question, answer) turn")
        if (description is not None) != self.vqa_describe:
            raise ValueError(f"vqa_describe is {self.vqa_describe}: give a description exactly when it is on")
        (question, answer), *rest = turns
        first = [*description, self.assistant, *answer] if description is not None else list(answer)
        prompt = self.vqa_prompt(codes, question)
        doc = self._document("vqa", prompt, [*first, self.eos], weight)
        tokens, weights = list(doc.tokens), list(doc.weights)
        asked = question_weight * weight
        if asked:  # the first question sits in the prompt: right before <assistant>, or right after <bos> <vqa>
            start = 2 if self.vqa_order == "question_first" else len(prompt) - 1 - len(question)
            weights[start : start + len(question)] = [asked] * len(question)
        for question, answer in rest:
            tokens += [*question, self.assistant, *answer, self.eos]
            weights += [asked] * len(question) + [0.0] + [weight] * (len(answer) + 1)
        return TaskSequence("vqa", tokens, weights)

    @staticmethod
    def _document(task: str, prompt: list[int], target: list[int], weight: float) -> TaskSequence:
        return TaskSequence(task, prompt + target, [0.0] * len(prompt) + [weight] * len(target))
