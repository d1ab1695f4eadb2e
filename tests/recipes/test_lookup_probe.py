"""The lookup probe (recipes/lookup_probe.py): documents, the balanced eval set, and that it learns a count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from panglot.codecs.text import special as sp
from panglot.codecs.text import train_world_tokenizer
from panglot.data.mixture import world_texts
from panglot.model.unified import collate
from panglot.multimodal.layout import TaskSequence
from panglot.world.dataset import make_example
from panglot.world.vqa import marked_caption, refers
from recipes import lookup_probe
from recipes.lookup_probe import ProbeConfig, Questions


def test_questions_are_balanced_by_kind_and_exists_answer():
    questions, rng = Questions(("exists", "count")), np.random.default_rng(0)
    picked = [questions.pick(make_example("train", 0, i).questions, rng) for i in range(400)]
    kinds = [qa.kind for qa in picked]
    assert 150 < kinds.count("exists") < 250
    yes = sum(qa.answer == "yes" for qa in picked if qa.kind == "exists")
    assert 0.35 < yes / kinds.count("exists") < 0.65  # scenes hold ~10 "no" pairs per "yes" one
    with pytest.raises(ValueError, match="unknown question kinds"):
        Questions(("colour",))


def test_document_puts_loss_on_the_answer_only():
    world_tokenizer = train_world_tokenizer(world_texts("train", 200, 0))
    ex = make_example("train", 0, 3)
    qa = ex.questions[0]
    doc = lookup_probe.document(world_tokenizer, ex.caption, qa)
    tokens, n_prompt = doc.tokens, doc.weights.index(1.0)
    assert world_tokenizer.decode(tokens[n_prompt:-1]) == qa.answer
    assert tokens[n_prompt - 1] == world_tokenizer.token_to_id(sp.ASSISTANT)
    short = TaskSequence("vqa", tokens[:-2], doc.weights[:-2])
    batch = collate([doc, short], pad_id=0)
    weights = batch["weights"]
    assert weights[0].sum() == len(tokens) - n_prompt and weights[0, :n_prompt].sum() == 0
    assert (batch["tokens"][1, len(tokens) - 2 :] == 0).all()
    separated = lookup_probe.document(world_tokenizer, ex.caption, qa, separator=True)
    n_caption = 2 + len(world_tokenizer.encode(ex.caption))  # <bos> <vqa> caption
    assert separated.tokens[n_caption] == world_tokenizer.token_to_id(sp.USER)
    assert separated.tokens[:n_caption] + separated.tokens[n_caption + 1 :] == tokens
    assert separated.weights.count(1.0) == doc.weights.count(1.0)
    asked = lookup_probe.document(world_tokenizer, ex.caption, qa, question_weight=0.5)
    question = world_tokenizer.encode(qa.question)
    assert asked.tokens == tokens and asked.weights[n_prompt:] == doc.weights[n_prompt:]
    assert asked.weights[n_prompt - 1 - len(question) : n_prompt - 1] == [0.5] * len(question)  # then <assistant>: 0
    assert sum(asked.weights[: n_prompt - 1 - len(question)]) == 0 and asked.weights[n_prompt - 1] == 0


def test_probe_learns_to_count(tmp_path):
    cfg = ProbeConfig(
        out=str(tmp_path), steps=150, size="debug", lr=3e-3, kinds=("count",), train_scenes=600,
        eval_scenes=60, eval_per_scene=1, eval_every=75, tokenizer_scenes=200, batch_size=32,
    )
    lookup_probe.run(cfg)
    curve = json.loads((tmp_path / "results.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [75, 150]
    assert curve[-1]["accuracy"]["count"] > 0.8  # chance: one of three words


def test_marked_document_weighs_the_marks_and_the_answer():
    world_tokenizer = train_world_tokenizer(world_texts("train", 200, 0))
    ex = make_example("train", 0, 7)
    qa = next(qa for qa in ex.questions if qa.kind == "exists" and qa.answer == "yes")
    doc = lookup_probe.marked_document(world_tokenizer, ex.scene, qa)
    assistant = world_tokenizer.token_to_id(sp.ASSISTANT)
    first, second = [i for i, t in enumerate(doc.tokens) if t == assistant]
    assert world_tokenizer.decode(doc.tokens[2:first]) == qa.question
    assert world_tokenizer.decode(doc.tokens[first + 1 : second]) == marked_caption(ex.scene, qa)
    weighted = world_tokenizer.decode([t for t, w in zip(doc.tokens, doc.weights) if w]).split()
    assert weighted == ["yes" if refers(qa, o) else "no" for o in ex.scene.objects] + ["yes"]


def test_probe_writes_its_own_marks_when_it_evaluates(tmp_path):
    cfg = ProbeConfig(
        out=str(tmp_path), steps=150, size="debug", lr=3e-3, kinds=("count",), train_scenes=600, marks=True,
        eval_scenes=60, eval_per_scene=1, eval_every=150, tokenizer_scenes=200, batch_size=32,
    )
    lookup_probe.run(cfg)
    accuracy = json.loads((tmp_path / "results.json").read_text())["curve"][-1]["accuracy"]
    assert accuracy["marks_count"] > 0.8 and accuracy["count"] > 0.8  # count marks every object "yes"
