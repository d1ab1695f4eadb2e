from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest
import torch

from panglot.codecs.text import TextTokenizer
from panglot.model import UnifiedModelConfig
from panglot.multimodal import PlaceholderError, SequenceLayout, UnifiedVocab

TEXTS = ["a large red circle at the top left", "what color is the circle?", "red", "yes", "no"] * 5


@pytest.fixture(scope="module")
def vocab():
    tok = TextTokenizer.train(TEXTS, vocab_size=400)
    image = SimpleNamespace(vocab_size=16, tokens_per_item=4)
    speech = SimpleNamespace(vocab_size=8, tokens_per_item=3)
    return UnifiedVocab.build(tok, [("image", image, "<boi>", "<eoi>"), ("speech", speech, "<bos_speech>", "<eos_speech>")])


def test_blocks_follow_text_ids_and_round_trip(vocab):
    img, sp = vocab.slot("image"), vocab.slot("speech")
    assert img.offset == vocab.text.vocab_size and sp.offset == img.offset + 16
    assert vocab.size == sp.offset + 8
    codes = torch.tensor([[0, 5, 15, 3]])
    lm = vocab.to_lm("image", codes)
    assert lm.min() >= img.offset and torch.equal(vocab.from_lm("image", lm), codes)
    with pytest.raises(PlaceholderError, match="outside the speech block"):
        vocab.from_lm("speech", lm)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        vocab.to_lm("image", torch.tensor([[16, 0, 0, 0]]))


def test_span_counts_are_checked(vocab):
    with pytest.raises(PlaceholderError, match="expected 4 tokens, found 3"):
        vocab.span("image", [1, 2, 3])
    seq = [vocab.special("<bos>"), *vocab.span("image", [1, 2, 3, 4]), *vocab.span("speech", [0, 1, 2])]
    assert [s[0] for s in vocab.check_spans(seq)] == ["image", "speech"]
    short = seq[:3] + seq[4:]  # one image token removed
    with pytest.raises(PlaceholderError, match="expected 4 tokens, found 3"):
        vocab.check_spans(short)
    with pytest.raises(PlaceholderError, match="never closed"):
        vocab.check_spans(seq[:4])
    stray = [vocab.special("<bos>"), vocab.slot("image").offset]
    with pytest.raises(PlaceholderError, match="outside a image span"):
        vocab.check_spans(stray)


def test_vocab_json_round_trip(vocab):
    again = UnifiedVocab.from_json(vocab.text, vocab.to_json())
    assert again.slots == vocab.slots and again.size == vocab.size


def test_layout_weights_cover_only_what_the_model_writes(vocab):
    layout = SequenceLayout(vocab)
    cap = vocab.text.encode("a large red circle at the top left")
    doc = layout.t2i(cap, [1, 2, 3, 4])
    n_prompt = len(layout.t2i_prompt(cap))
    assert doc.tokens[:n_prompt] == layout.t2i_prompt(cap)
    assert doc.weights == [0.0] * n_prompt + [1.0] * (4 + 2)  # 4 codes, <eoi>, <eos>
    dropped = layout.t2i(cap, [1, 2, 3, 4], drop_condition=True)
    assert dropped.tokens[: len(layout.t2i_prompt(None))] == layout.t2i_prompt(None)
    assert vocab.special("<uncond>") in dropped.tokens and len(dropped) == len(layout.t2i_prompt(None)) + 6
    q, a = vocab.text.encode("what color is the circle?"), vocab.text.encode("red")
    qa = layout.vqa([1, 2, 3, 4], q, a, weight=2.0)
    assert qa.tokens[-len(a) - 1 : -1] == a and qa.weights[-len(a) - 1 :] == [2.0] * (len(a) + 1)
    assert sum(w > 0 for w in qa.weights) == len(a) + 1
    vocab.check_spans(qa.tokens)


def test_a_vqa_dialogue_starts_as_the_one_question_document_and_weights_only_answers(vocab):
    layout = SequenceLayout(vocab)
    q1, a1 = vocab.text.encode("what color is the circle?"), vocab.text.encode("red")
    q2, a2 = vocab.text.encode("is there a red circle?"), vocab.text.encode("yes")
    single = layout.vqa([1, 2, 3, 4], q1, a1, weight=2.0)
    doc = layout.vqa_dialogue([1, 2, 3, 4], [(q1, a1), (q2, a2)], weight=2.0)
    assert doc.task == "vqa"
    assert doc.tokens[: len(single)] == single.tokens and doc.weights[: len(single)] == single.weights
    eos, assistant = vocab.special("<eos>"), vocab.special("<assistant>")
    assert doc.tokens[len(single) :] == [*q2, assistant, *a2, eos]
    assert doc.weights[len(single) :] == [0.0] * (len(q2) + 1) + [2.0] * (len(a2) + 1)
    vocab.check_spans(doc.tokens)
    with pytest.raises(ValueError, match="at least one"):
        layout.vqa_dialogue([1, 2, 3, 4], [])


@pytest.mark.parametrize("order", ["image_first", "question_first"])
def test_a_question_weight_falls_on_every_question_and_nothing_else(vocab, order):
    layout = SequenceLayout(vocab, vqa_order=order)
    q1, a1 = vocab.text.encode("what color is the circle?"), vocab.text.encode("red")
    q2, a2 = vocab.text.encode("is there a red circle?"), vocab.text.encode("yes")
    plain = layout.vqa_dialogue([1, 2, 3, 4], [(q1, a1), (q2, a2)], weight=2.0)
    asked = layout.vqa_dialogue([1, 2, 3, 4], [(q1, a1), (q2, a2)], weight=2.0, question_weight=0.5)
    assert asked.tokens == plain.tokens
    changed = [i for i, (w, v) in enumerate(zip(plain.weights, asked.weights)) if w != v]
    assert [asked.tokens[i] for i in changed] == [*q1, *q2] and {asked.weights[i] for i in changed} == {1.0}
    assert all(plain.weights[i] == 0.0 for i in changed)


def test_question_first_vqa_puts_the_question_before_the_image(vocab):
    image_first, question_first = SequenceLayout(vocab), SequenceLayout(vocab, vqa_order="question_first")
    q, a = vocab.text.encode("what color is the circle?"), vocab.text.encode("red")
    span = vocab.span("image", [1, 2, 3, 4])
    vqa = vocab.special("<vqa>")
    assert question_first.vqa_prompt([1, 2, 3, 4], q) == [vocab.special("<bos>"), vqa, *q, *span, question_first.assistant]
    doc, plain = question_first.vqa([1, 2, 3, 4], q, a), image_first.vqa([1, 2, 3, 4], q, a)
    assert sorted(doc.tokens) == sorted(plain.tokens) and doc.tokens != plain.tokens  # the same tokens, reordered
    assert doc.weights == plain.weights  # the answer is last either way
    with pytest.raises(ValueError, match="unknown vqa_order 'last'"):
        SequenceLayout(vocab, vqa_order="last")


def test_a_describing_layout_weights_the_caption_and_the_answer(vocab):
    layout = SequenceLayout(vocab, vqa_describe=True)
    q, a = vocab.text.encode("what color is the circle?"), vocab.text.encode("red")
    caption = vocab.text.encode("a large red circle at the top left")
    doc = layout.vqa([1, 2, 3, 4], q, a, description=caption)
    prompt = layout.vqa_prompt([1, 2, 3, 4], q)
    assert doc.tokens == [*prompt, *caption, layout.assistant, *a, layout.eos]
    assert doc.weights == [0.0] * len(prompt) + [1.0] * (len(caption) + len(a) + 2)
    with pytest.raises(ValueError, match="vqa_describe is True"):
        layout.vqa([1, 2, 3, 4], q, a)
    with pytest.raises(ValueError, match="vqa_describe is False"):
        SequenceLayout(vocab).vqa([1, 2, 3, 4], q, a, description=caption)


def test_every_layout_switch_is_a_model_config_field_and_round_trips(vocab):
    """The unified recipe passes ``SequenceLayout.OPTIONS`` from the model config by name, and a run rebuilds
    its layout from ``options``: a switch added to one must exist in the other."""
    assert set(SequenceLayout.OPTIONS) <= {f.name for f in fields(UnifiedModelConfig)}
    layout = SequenceLayout(vocab, vqa_order="question_first", vqa_describe=True)
    assert SequenceLayout(vocab, **layout.options).options == layout.options == {
        "vqa_order": "question_first", "vqa_describe": True
    }
