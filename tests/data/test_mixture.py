"""The ShapesWorld training mixture: documents drawn per index, every answer true of its scene."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from panglot.codecs.text import train_world_tokenizer
from panglot.data.mixture import VQA_DESCRIPTIONS, MixtureConfig, WorldMixture, world_texts
from panglot.multimodal import SequenceLayout, UnifiedVocab
from panglot.world import vqa
from panglot.world.dataset import split_scenes
from panglot.world.language import caption

TOKENS_PER_IMAGE = 4


@pytest.fixture(scope="module")
def parts():
    tokenizer = train_world_tokenizer(world_texts("train", 300, 0))
    codec = SimpleNamespace(vocab_size=16, tokens_per_item=TOKENS_PER_IMAGE)
    layout = SequenceLayout(UnifiedVocab.build(tokenizer, [("image", codec, "<boi>", "<eoi>")]))
    scenes = split_scenes("train", 40, 0)
    codes = torch.randint(0, 16, (len(scenes), TOKENS_PER_IMAGE), generator=torch.Generator().manual_seed(0))
    return tokenizer, layout, scenes, codes


def _mixture(parts, **cfg) -> WorldMixture:
    tokenizer, layout, scenes, codes = parts
    return WorldMixture(MixtureConfig(n_scenes=len(scenes), **cfg), layout, tokenizer, scenes, codes)


def _turns(layout: SequenceLayout, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
    """(question, answer) token lists of a VQA document: text after the image, split at <assistant> / <eos>."""
    rest = tokens[tokens.index(layout.eoi) + 1 :]
    turns = []
    while rest:
        cut, end = rest.index(layout.assistant), rest.index(layout.eos)
        turns.append((rest[:cut], rest[cut + 1 : end]))
        rest = rest[end + 1 :]
    return turns


def test_documents_are_a_function_of_their_index(parts):
    mixture = _mixture(parts)
    assert len(mixture) == 4 * 40
    for i in (0, 7, 123):
        assert mixture[i] == mixture[i]
    assert _mixture(parts, seed=1)[5] != mixture[5] or _mixture(parts, seed=1)[6] != mixture[6]
    with pytest.raises(IndexError, match="document 160 of a mixture of 160"):
        mixture[160]
    assert len(list(mixture)) == 160  # iterating ends


@pytest.mark.parametrize("k", [1, 3])
def test_vqa_documents_ask_k_questions_of_different_kinds_with_true_answers(parts, k):
    tokenizer, layout, scenes, _ = parts
    mixture = _mixture(parts, task_probs={"vqa": 1.0}, vqa_questions=k)
    for i in range(0, len(mixture), 7):
        doc = mixture[i]
        truth = {qa.question: (qa.kind, qa.answer) for qa in vqa.all_questions(scenes[i % len(scenes)])}
        turns = _turns(layout, doc.tokens)
        assert len(turns) == k
        kinds = set()
        for question, answer in turns:
            kind, expected = truth[tokenizer.decode(question)]
            assert tokenizer.decode(answer) == expected
            kinds.add(kind)
        assert len(kinds) == k  # kinds are visited round-robin
        assert sum(w > 0 for w in doc.weights) == sum(len(a) + 1 for _, a in turns)  # answers and their <eos>


def test_one_question_per_document_is_the_single_question_layout(parts):
    _, layout, _, codes = parts
    mixture = _mixture(parts, task_probs={"vqa": 1.0})
    doc = mixture[3]
    ((question, answer),) = _turns(layout, doc.tokens)
    assert doc == layout.vqa(codes[3], question, answer)


def test_vqa_questions_must_be_positive():
    with pytest.raises(ValueError, match="vqa_questions must be >= 1, got 0"):
        MixtureConfig(vqa_questions=0)


def test_a_describing_layout_gets_each_scenes_caption_before_the_first_answer(parts):
    tokenizer, layout, scenes, codes = parts
    describing = SequenceLayout(layout.vocab, vqa_describe=True)
    cfg = MixtureConfig(n_scenes=len(scenes), task_probs={"vqa": 1.0}, vqa_questions=2)
    mixture = WorldMixture(cfg, describing, tokenizer, scenes, codes)
    for i in range(0, 40, 9):
        doc = mixture[i]
        text = doc.tokens[doc.tokens.index(layout.eoi) + 1 :]
        first, second = [j for j, t in enumerate(text) if t == layout.assistant][:2]
        assert tokenizer.decode(text[first + 1 : second]) == caption(scenes[i % len(scenes)])


def test_a_marked_description_says_which_objects_the_question_is_about(parts):
    tokenizer, layout, scenes, codes = parts
    describing = SequenceLayout(layout.vocab, vqa_describe=True)
    cfg = MixtureConfig(n_scenes=len(scenes), task_probs={"vqa": 1.0}, vqa_description="marked")
    mixture = WorldMixture(cfg, describing, tokenizer, scenes, codes)
    seen_yes = seen_no = 0
    for i in range(40):
        doc = mixture[i]
        scene = scenes[i % len(scenes)]
        text = doc.tokens[doc.tokens.index(layout.eoi) + 1 :]
        first, second = [j for j, t in enumerate(text) if t == layout.assistant][:2]
        question = tokenizer.decode(text[:first])
        (qa,) = [qa for qa in vqa.all_questions(scene) if qa.question == question]
        words = tokenizer.decode(text[first + 1 : second]).split()
        assert tokenizer.decode(text[second + 1 :]).removesuffix("<eos>").strip() == qa.answer
        marks = [w for w in words if w in ("yes", "no")]
        assert " ".join(w for w in words if w not in ("yes", "no")) == caption(scene)  # the caption, marks aside
        assert len(marks) == len(scene)
        if qa.kind == "exists":
            assert marks.count("yes") == (qa.answer == "yes")
        seen_yes, seen_no = seen_yes + marks.count("yes"), seen_no + marks.count("no")
    assert seen_yes and seen_no


def test_marked_descriptions_need_a_describing_layout_and_one_question(parts):
    tokenizer, layout, scenes, codes = parts
    with pytest.raises(ValueError, match=r"set model\.vqa_describe"):
        WorldMixture(MixtureConfig(n_scenes=len(scenes), vqa_description="marked"), layout, tokenizer, scenes, codes)
    with pytest.raises(ValueError, match="vqa_questions must be 1, got 2"):
        MixtureConfig(vqa_description="marked", vqa_questions=2)
    with pytest.raises(ValueError, match="vqa_description must be one of"):
        MixtureConfig(vqa_description="both")


def test_mark_weight_scales_the_marks_alone(parts):
    tokenizer, layout, scenes, codes = parts
    describing = SequenceLayout(layout.vocab, vqa_describe=True)
    plain, heavy = (
        WorldMixture(MixtureConfig(n_scenes=len(scenes), task_probs={"vqa": 1.0}, vqa_description="marked", vqa_mark_weight=w),
                     describing, tokenizer, scenes, codes)
        for w in (1.0, 3.0)
    )  # fmt: skip
    marks = {tokenizer.encode("yes")[0], tokenizer.encode("no")[0]}
    for i in range(0, 40, 7):
        a, b = plain[i], heavy[i]
        assert a.tokens == b.tokens
        first = a.tokens.index(layout.assistant)
        second = a.tokens.index(layout.assistant, first + 1)
        changed = [j for j, (x, y) in enumerate(zip(a.weights, b.weights)) if x != y]
        assert changed and all(first < j < second and a.tokens[j] in marks and b.weights[j] == 3 * a.weights[j] for j in changed)
        assert len(changed) == sum(t in marks for t in a.tokens[first + 1 : second])
    with pytest.raises(ValueError, match="vqa_mark_weight must be >= 0"):
        MixtureConfig(vqa_mark_weight=-1)


def test_marks_can_take_their_weight_from_their_own_document(parts):
    tokenizer, layout, scenes, codes = parts
    describing = SequenceLayout(layout.vocab, vqa_describe=True)
    kept, plain = (
        WorldMixture(MixtureConfig(n_scenes=len(scenes), task_probs={"vqa": 1.0}, vqa_description="marked",
                                   vqa_mark_weight=w, vqa_mark_keep_total=keep), describing, tokenizer, scenes, codes)
        for w, keep in ((10.0, True), (1.0, False))
    )  # fmt: skip
    marks = {tokenizer.encode("yes")[0], tokenizer.encode("no")[0]}
    for i in range(0, 40, 7):
        a, b = plain[i], kept[i]
        assert sum(b.weights) == pytest.approx(sum(a.weights))  # the document's share of the batch is unchanged
        first = a.tokens.index(layout.assistant)
        second = a.tokens.index(layout.assistant, first + 1)
        is_mark = [first < j < second and t in marks for j, t in enumerate(a.tokens)]  # an exists answer is no mark
        ratios = {round(y / x, 6) for x, y, m in zip(a.weights, b.weights, is_mark) if x and m}
        others = {round(y / x, 6) for x, y, m in zip(a.weights, b.weights, is_mark) if x and not m}
        assert len(ratios) == len(others) == 1 and ratios.pop() == pytest.approx(10 * others.pop())


@pytest.mark.parametrize("description", ["caption", "marked", "fields"])
def test_text_lookup_documents_are_the_describing_vqa_document_without_its_image(parts, description):
    """``vqa_text``: ``<bos> <vqa> question <assistant> description <assistant> answer <eos>`` with a true answer;
    the description carries no loss but its marks (at the mark weight), the answer and ``<eos>`` carry the task's
    weight, and the text after the image is token for token the image document's of the same question."""
    tokenizer, layout, scenes, codes = parts
    describing = SequenceLayout(layout.vocab, vqa_describe=True)
    common = {"n_scenes": len(scenes), "vqa_description": description, "vqa_mark_weight": 5.0}
    text = WorldMixture(MixtureConfig(task_probs={"vqa_text": 1.0}, loss_weights={"vqa_text": 2.0}, **common),
                        describing, tokenizer, scenes, codes)  # fmt: skip
    image = WorldMixture(MixtureConfig(task_probs={"vqa": 1.0}, **common), describing, tokenizer, scenes, codes)
    marks = {tokenizer.encode("yes")[0], tokenizer.encode("no")[0]}
    for i in range(0, 40, 3):
        doc, scene = text[i], scenes[i % len(scenes)]
        assert doc.task == "vqa_text" and doc.tokens[:2] == [layout.bos, layout.task_id["vqa"]]
        with_image = image[i].tokens
        assert doc.tokens[2:] == with_image[with_image.index(layout.eoi) + 1 :]
        assert layout.boi not in doc.tokens and layout.eoi not in doc.tokens
        first = doc.tokens.index(layout.assistant)
        second = doc.tokens.index(layout.assistant, first + 1)
        question = tokenizer.decode(doc.tokens[2:first])
        (qa,) = [qa for qa in vqa.all_questions(scene) if qa.question == question]
        words = tokenizer.decode(doc.tokens[first + 1 : second])
        marker = VQA_DESCRIPTIONS[description]
        assert words == (marker(scene, qa) if marker else caption(scene))
        assert tokenizer.decode(doc.tokens[second + 1 : -1]) == qa.answer and doc.tokens[-1] == layout.eos
        for j, (token, weight) in enumerate(zip(doc.tokens, doc.weights)):
            if j > second:
                assert weight == 2.0, (j, token)
            elif first < j < second and marker and token in marks:
                assert weight == 10.0
            else:
                assert weight == 0.0, (j, token)


def test_text_lookup_documents_need_a_describing_layout(parts):
    tokenizer, layout, scenes, codes = parts
    with pytest.raises(ValueError, match=r"vqa_text .* set model\.vqa_describe"):
        WorldMixture(MixtureConfig(n_scenes=len(scenes), task_probs={"t2i": 1.0, "vqa_text": 0.5}), layout, tokenizer,
                     scenes, codes)  # fmt: skip
    with pytest.raises(ValueError, match="needs vqa_describe"):
        layout.vqa_text([1], [2], [3])


def test_balanced_positions_reach_the_documents(parts):
    tokenizer, layout, _, _ = parts
    answers = {}
    for flag in (False, True):
        mixture = _mixture(parts, task_probs={"vqa": 1.0}, vqa_balance_positions=flag)
        turns = [turn for i in range(len(mixture)) for turn in _turns(layout, mixture[i].tokens)]
        answers[flag] = [tokenizer.decode(a).strip() for q, a in turns if tokenizer.decode(q).startswith("what shape is at")]
    share = {flag: np.mean([a != "nothing" for a in got]) for flag, got in answers.items()}
    assert share[True] > 0.4 and share[False] < 0.35, share
