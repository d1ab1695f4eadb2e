"""The Python API, a contract that outside evaluation calls::

    m = panglot.load(run_dir)
    m.draw(prompts, seed=0, cfg=None, n=1)  -> list of PIL images (n per prompt, grouped by prompt)
    m.caption(images)                       -> list of str
    m.ask(images, questions)                -> list of str
    m.codec.encode(images) / m.codec.decode(ids)

Every call takes lists of any length and batches inside. Inputs are validated here, at the edge: an empty
prompt, a word the model never saw, an image of the wrong size or mode gets an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from panglot.codecs.text.tokenizer import check_words
from panglot.data.images import ImageLike
from panglot.generation import (
    FollowText,
    Greedy,
    ModalityConstraint,
    Multinomial,
    Temperature,
    TopK,
    generate,
)
from panglot.model.run import load_model
from panglot.model.unified import UnifiedModel
from panglot.nn import autocast_context, resolve_dtype
from panglot.world.vqa import MARKINGS, MARKS, marked_description

DESCRIPTION_TOKENS = 64  # room for the scene caption a vqa_describe run writes before its answer (3 objects: ~30)

ProgressFn = Callable[[int, int], None]  # (rows done, rows total)


@dataclass(frozen=True)
class DrawDefaults:
    """Sampling defaults of a run; ``cfg_scale`` is tuned on ``val`` by the quickstart."""

    cfg_scale: float = 3.0
    # Guidance re-ranks only the tokens the conditional model finds plausible (p >= this x its most likely token's;
    # ``generation.ClassifierFreeGuidance``, contrastive decoding's constraint). 0: off, plain CFG.
    cfg_plausibility: float = 0.0
    temperature: float = 1.0
    top_k: int | None = None
    # Draw this many candidates per image and keep the one the model's own captioner reads best as the prompt
    # (``UnifiedModel.caption_logprob``): self-assessment at inference, as CM3Leon reranks with CLIP and ILLUME
    # has the model judge its own drawings. 1: the first sample, as drawn.
    candidates: int = 1
    # Caption with the greedy caption and this many sampled ones (at caption_temperature), keeping the one the model
    # would most readily draw the image from (``UnifiedModel.image_logprob``). 1: the greedy caption.
    caption_candidates: int = 1
    caption_temperature: float = 1.0
    # Noisy-channel reranking (Yee et al. 2019): a candidate caption c of image x scores log p(x | c) + this weight
    # x log p(c | x), the drawing likelihood plus the captioner's own (``UnifiedModel.caption_logprob``); 0 ranks
    # by the drawing alone. 1.0 was the best or tied best of 0 / 0.25 / 0.5 / 1 / 2 / 4 on `val` for three
    # quickstart models (docs/quickstart_results.md "Noisy-channel captions").
    caption_direct_weight: float = 1.0
    # How a describing run (``model.vqa_describe``) gets the description it answers after. False: it writes it from
    # the image. True: the description is its own caption (``caption``, with the caption candidates above), each
    # distinct image captioned once, marked where the run's ``marking`` puts marks; prompted as for ``False``, the
    # model follows it and writes only the marks' values, then the answer (``generation.FollowText``): its answers
    # rest on its best reading of the image, not on a greedy one. A question or caption outside the world's grammar
    # (``world.vqa.marked_description``) is answered as with ``False``. ``load``'s default: True for a describing run
    # that drew no image VQA documents (``vqa_text`` alone: the quickstart's), which cannot describe an image itself.
    answer_from_caption: bool = False
    # How a describing run marks its description (``data.vqa_description``: ``marked`` or ``fields``; ``load`` reads
    # it from the run's recipe); "" for a caption without marks.
    marking: str = ""
    # With ``answer_from_caption``, whether the prompt holds the image (``vqa_prompt``) or only the question
    # (``vqa_text_prompt``, as the ``vqa_text`` documents have it); ``load`` reads it from the run's recipe: False
    # where the run drew no image VQA documents.
    answer_with_image: bool = True


class Panglot:
    """A loaded unified model with batched drawing, captioning and question answering."""

    def __init__(
        self,
        model: UnifiedModel,
        defaults: DrawDefaults | None = None,
        batch_size: int = 64,
        dtype: str | None = "auto",
        compile: bool = False,
    ):
        """``dtype``: the decoding copy's weights and KV cache ("auto": bf16 where the device multiplies it
        natively, else fp32 (`panglot.nn.fast_bf16`); "bf16", "fp32" or None = the model's own).
        ``compile``: decode with compiled one-token steps (``Transformer.compile_for_decoding``: 1.9-2.9x
        per image on CPU in bf16, docs/benchmarks.md, after ~15-20 s CPU of tracing and autotuning per new batch
        shape)."""
        self.model = model.eval()
        self.defaults = defaults or DrawDefaults()
        self.batch_size = batch_size
        self.dtype = None if dtype is None else resolve_dtype(dtype, model.device)
        self._decoder = model.backbone.for_decoding(self.dtype, compile=compile)
        self.tokenizer = model.vocab.text
        self.layout = model.layout
        self._slot = model.vocab.slot(model.image_slot)
        self._max_prompt = model.backbone.cfg.max_seq_len - self._slot.tokens_per_item - 2

    @property
    def codec(self):
        return self.model.codec

    # ----- validation at the edge -----

    def _encode_texts(self, texts: Sequence[str], what: str) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError(f"{what}s must be a list of strings, got one string; wrap it: [{texts!r}]")
        ids = []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{what} {i} is empty: expected text such as 'a large red circle at the top left'")
            try:
                check_words(text, self.tokenizer.words)
            except ValueError as exc:
                raise ValueError(f"{what} {i} ({text!r}): {exc}") from None
            row = self.tokenizer.encode(text)
            if len(row) > self._max_prompt:
                raise ValueError(f"{what} {i} is {len(row)} tokens long; this model takes at most {self._max_prompt}")
            ids.append(row)
        return ids

    def _image_codes(self, images: Sequence[ImageLike]) -> torch.Tensor:
        if not isinstance(images, Sequence) or isinstance(images, str | bytes):
            raise TypeError("images must be a list (of paths, PIL images or arrays)")
        if len(images) == 0:
            return torch.empty(0, self._slot.tokens_per_item, dtype=torch.long)
        with torch.inference_mode():
            return torch.cat([self.codec.encode(images[i : i + 256]).cpu() for i in range(0, len(images), 256)])

    # ----- the three tasks -----

    def draw(
        self,
        prompts: Sequence[str],
        seed: int = 0,
        cfg: float | None = None,
        n: int = 1,
        temperature: float | None = None,
        top_k: int | None = None,
        candidates: int | None = None,
        progress: ProgressFn | None = None,
    ) -> list[Image.Image]:
        """``n`` images per prompt, grouped by prompt. ``None`` takes the run's default (``DrawDefaults``): for
        ``cfg`` its tuned guidance scale (1 = off), for ``temperature`` its tuned sampling temperature. With
        ``candidates`` K > 1 each image is the best of K samples by the model's own reading of them
        (``UnifiedModel.caption_logprob`` of the prompt), at K times the drawing.

        Image ``j`` of prompt ``i`` is sampled with seed ``seed + i * n + j`` (its candidate ``c`` with ``seed +
        (i * n + j) * K + c``), so a result does not depend on how the call was batched.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        k = self.defaults.candidates if candidates is None else candidates
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {k!r}")
        captions = self._encode_texts(prompts, "prompt")
        cfg = self.defaults.cfg_scale if cfg is None else float(cfg)
        temperature = self.defaults.temperature if temperature is None else temperature
        top_k = self.defaults.top_k if top_k is None else top_k
        rows = [self.layout.t2i_prompt(c) for c in captions for _ in range(n * k)]
        uncond = self.layout.t2i_prompt(None)
        lo, hi = self._slot.id_range
        processors = [
            ModalityConstraint(lo, hi, self.layout.boi, self.layout.eoi, self._slot.tokens_per_item),
            *([Temperature(temperature)] if temperature != 1.0 else []),
            *([TopK(top_k)] if top_k else []),
        ]
        codes = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            out = generate(
                self._decoder,
                chunk,
                max_new_tokens=self._slot.tokens_per_item,
                processors=processors,
                sampler=Multinomial(tuple(seed + start + i for i in range(len(chunk)))),
                uncond_prompts=[uncond] * len(chunk) if cfg != 1.0 else None,
                cfg_scale=cfg,
                cfg_plausibility=self.defaults.cfg_plausibility,
                dtype=self.dtype,
            )
            codes.append(self.model.vocab.from_lm(self.model.image_slot, torch.tensor(out)))
            if progress:
                progress(min(start + self.batch_size, len(rows)), len(rows))
        if not codes:
            return []
        codes = torch.cat(codes)
        if k > 1:
            codes = self._best_candidates(codes, [c for c in captions for _ in range(n * k)], k)
        with torch.inference_mode():
            return self.codec.decode(codes.to(self.codec.device))

    def _best_candidates(self, codes: torch.Tensor, captions: list[list[int]], k: int) -> torch.Tensor:
        """Of each ``k`` consecutive rows of ``codes`` (candidates for one image), the one whose caption the model
        reads most readily (``caption_logprob``; the first on ties)."""
        scores = []
        with autocast_context(self.model.device, self.dtype or "fp32"):
            for start in range(0, len(codes), self.batch_size):
                stop = start + self.batch_size
                scores.append(self.model.caption_logprob(codes[start:stop], captions[start:stop]))
        best = torch.cat(scores).view(-1, k).argmax(dim=1)
        return codes.view(-1, k, codes.shape[-1])[torch.arange(len(best)), best]

    def caption(
        self,
        images: Sequence[ImageLike],
        max_tokens: int = 48,
        candidates: int | None = None,
        temperature: float | None = None,
        seed: int = 0,
        direct_weight: float | None = None,
    ) -> list[str]:
        """A canonical caption per image: the greedy one, or with ``candidates`` K > 1 (None: the run's
        ``DrawDefaults.caption_candidates``) the best of the greedy caption and K sampled at ``temperature`` (None:
        the run's ``caption_temperature``) by ``log p(image | caption)`` (``UnifiedModel.image_logprob``, analysis
        by synthesis) + ``direct_weight`` (None: the run's ``caption_direct_weight``) x ``log p(caption | image)``.
        Sample ``c`` of image ``i`` uses seed ``seed + i * K + c``."""
        k = self.defaults.caption_candidates if candidates is None else candidates
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {k!r}")
        weight = self.defaults.caption_direct_weight if direct_weight is None else direct_weight
        if not weight >= 0:
            raise ValueError(f"direct_weight must be a number >= 0, got {weight!r}")
        temperature = self.defaults.caption_temperature if temperature is None else temperature
        rows = self._caption_ids(self._image_codes(images), max_tokens, k, temperature, seed, weight)
        return [self.tokenizer.decode(row).strip() for row in rows]

    def _caption_ids(
        self, codes: torch.Tensor, max_tokens: int, k: int, temperature: float, seed: int, weight: float
    ) -> list[list[int]]:
        """``caption``'s ids for image codes (N, tokens_per_item)."""
        prompts = [self.layout.caption_prompt(c) for c in codes]
        greedy = self._generate_text(prompts, max_tokens)
        if k > 1:
            rows = [p for p in prompts for _ in range(k)]
            sampled = self._generate_text(rows, max_tokens, Multinomial, seed, temperature)
            greedy = self._best_captions(codes, greedy, sampled, k, weight)
        return greedy

    def _best_captions(
        self, codes: torch.Tensor, greedy: list[list[int]], sampled: list[list[int]], k: int, weight: float
    ) -> list[list[int]]:
        """Per image, of its greedy caption and its ``k`` samples (empty ones and repeats dropped), the one with the
        highest ``image_logprob + weight * caption_logprob`` (the greedy one on ties; an empty greedy caption only if
        every sample is empty)."""
        pools = []
        for i, first in enumerate(greedy):
            pool: list[list[int]] = []
            for caption in [first, *sampled[i * k : (i + 1) * k]]:
                if caption and caption not in pool:
                    pool.append(caption)
            pools.append(pool or [first])
        flat = [(i, c) for i, pool in enumerate(pools) for c in pool]
        scores = []
        with autocast_context(self.model.device, self.dtype or "fp32"):
            for start in range(0, len(flat), self.batch_size):
                chunk = flat[start : start + self.batch_size]
                rows, captions = codes[torch.tensor([i for i, _ in chunk])], [c for _, c in chunk]
                chunk_score = self.model.image_logprob(rows, captions)
                if weight:
                    chunk_score = chunk_score + weight * self.model.caption_logprob(rows, captions)
                scores.append(chunk_score)
        score = torch.cat(scores).tolist()
        best: dict[int, tuple[float, list[int]]] = {}
        for (i, caption), value in zip(flat, score, strict=True):
            if i not in best or value > best[i][0]:
                best[i] = (value, caption)
        return [best[i][1] for i in range(len(pools))]

    def ask(self, images: Sequence[ImageLike], questions: Sequence[str], max_tokens: int = 8) -> list[str]:
        """Answer one question per image (greedy, single word or canonical phrase)."""
        return [answer for _, answer in self.explain(images, questions, max_tokens)]

    def explain(
        self, images: Sequence[ImageLike], questions: Sequence[str], max_tokens: int = 8
    ) -> list[tuple[str, str]]:
        """``(description, answer)`` per question: what a describing run (``model.vqa_describe``) writes before its
        answer (the scene's caption, or with ``data.vqa_description=marked`` the caption marked ``yes`` / ``no``
        per object), and the answer ``ask`` returns; the description is ``""`` for a run that answers at once."""
        q_ids = self._encode_texts(questions, "question")
        if len(q_ids) != len(images):
            raise ValueError(f"ask needs one question per image: got {len(images)} images and {len(q_ids)} questions")
        codes = self._image_codes(images)
        describe = self.layout.vqa_describe  # the run describes the scene first: the answer is what follows
        if describe and self.defaults.answer_from_caption:
            rows = self._answer_from_captions(codes, questions, q_ids, max_tokens)
        else:
            prompts = [self.layout.vqa_prompt(c, q) for c, q in zip(codes, q_ids)]
            rows = self._generate_text(prompts, max_tokens + DESCRIPTION_TOKENS if describe else max_tokens)
        out = []
        for row in rows:
            cut = len(row) - row[::-1].index(self.layout.assistant) if describe and self.layout.assistant in row else 0
            description = self.tokenizer.decode(row[: max(cut - 1, 0)]).strip()
            out.append((description, self.tokenizer.decode(row[cut:]).strip()))
        return out

    def _answer_from_captions(
        self, codes: torch.Tensor, questions: Sequence[str], q_ids: list[list[int]], max_tokens: int
    ) -> list[list[int]]:
        """``DrawDefaults.answer_from_caption``: each distinct image captioned once (the run's caption decoding),
        then per question its ``vqa_prompt`` and the marked caption followed (``FollowText``, a slot per mark), then
        the answer; a row whose caption or question has no marked description is written from the image."""
        d = self.defaults
        distinct, which = torch.unique(codes, dim=0, return_inverse=True)
        captions = self._caption_ids(
            distinct, DESCRIPTION_TOKENS, d.caption_candidates, d.caption_temperature, 0, d.caption_direct_weight
        )
        marks = [self.tokenizer.encode(word)[0] for word in MARKS]
        texts: dict[int, list[int]] = {}
        for row, (image, question) in enumerate(zip(which.tolist(), questions)):
            caption = self.tokenizer.decode(captions[image]).strip()
            marked = marked_description(caption, question, d.marking) if d.marking else caption
            if marked is not None:
                texts[row] = [FollowText.SLOT if t in marks else t for t in self.tokenizer.encode(marked)]
        text_prompt = lambda r: r in texts and not d.answer_with_image  # noqa: E731
        prompts = [
            self.layout.vqa_text_prompt(q) if text_prompt(r) else self.layout.vqa_prompt(c, q)
            for r, (c, q) in enumerate(zip(codes, q_ids))
        ]
        followed = sorted(texts)
        written = [r for r in range(len(prompts)) if r not in texts]
        rows = [texts[r] for r in followed]
        follow = lambda start, stop: [FollowText(rows[start:stop], marks, self.layout.assistant)]  # noqa: E731
        longest = max((len(t) for t in rows), default=0)
        out: list[list[int]] = [[] for _ in prompts]
        for group, limit, extra in ((followed, longest + 1, follow), (written, DESCRIPTION_TOKENS, None)):
            if group:
                generated = self._generate_text([prompts[r] for r in group], max_tokens + limit, per_chunk=extra)
                for r, ids in zip(group, generated):
                    out[r] = ids
        return out

    def _generate_text(
        self,
        prompts: list[list[int]],
        max_tokens: int,
        sampler: type[Multinomial] | None = None,
        seed: int = 0,
        temperature: float = 1.0,
        per_chunk: Callable[[int, int], list] | None = None,
    ) -> list[list[int]]:
        """Text ids for each prompt up to (without) <eos>, no image codes: greedy, or sampled with ``sampler``
        (``Multinomial``) at ``temperature``, row ``r`` with seed ``seed + r``; ``per_chunk(start, stop)`` adds
        processors for the rows ``start:stop`` of a batch."""
        lo, hi = self._slot.id_range
        processors = [
            ModalityConstraint(lo, hi, self.layout.boi, self.layout.eoi, self._slot.tokens_per_item, allow_begin=False),
            *([Temperature(temperature)] if sampler is not None and temperature != 1.0 else []),
        ]
        texts = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            out = generate(
                self._decoder,
                chunk,
                max_new_tokens=max_tokens,
                processors=[*processors, *(per_chunk(start, start + len(chunk)) if per_chunk else [])],
                sampler=Greedy() if sampler is None else sampler(tuple(seed + start + i for i in range(len(chunk)))),
                stop_ids=[self.layout.eos],
                dtype=self.dtype,
            )
            texts += [[t for t in row if t != self.layout.eos] for row in out]
        return texts


def load(
    run_dir: str | os.PathLike,
    device: str = "cpu",
    batch_size: int = 64,
    dtype: str | None = "auto",
    compile: bool = False,
) -> Panglot:
    """Load a trained run directory (``RUN/model/``) into the :class:`Panglot` API (arguments as ``Panglot``)."""
    model, meta = load_model(run_dir, device=device)
    generation = dict(meta.get("generation", {}))
    data = meta.get("recipe", {}).get("data", {})
    if "marking" not in generation:  # a run saved before the field: its recipe says how it marks
        description = data.get("vqa_description", "caption")
        generation["marking"] = description if description in MARKINGS else ""
    if "answer_with_image" not in generation:
        probs = data.get("task_probs")
        generation["answer_with_image"] = probs is None or probs.get("vqa", 0) > 0
    if "answer_from_caption" not in generation:  # a describing run never shown an image with a question cannot
        # describe one itself: it answers from its caption
        generation["answer_from_caption"] = model.layout.vqa_describe and not generation["answer_with_image"]
    defaults = DrawDefaults(**generation)
    return Panglot(model, defaults, batch_size=batch_size, dtype=dtype, compile=compile)
