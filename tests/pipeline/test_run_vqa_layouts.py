"""Runs with the VQA layout switches: ``model.vqa_order=question_first`` trains on question-first documents and
``model.vqa_describe`` on answers that follow a caption; run.json keeps both, and the loaded run asks its
questions the way it was trained."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import panglot
from panglot import pipeline
from panglot.codecs.image_vq.model import PixelVQ, PixelVQConfig
from panglot.config import load_config
from panglot.world import language, vqa
from panglot.world.dataset import split_scenes
from panglot.world.render import render_batch
from recipes import train_unified


def _train_vqa_run(tmp_path, monkeypatch, run_unified, *switches: str):
    """A few steps of a debug run on VQA documents only, with layout ``switches``; returns (model, loader)."""
    torch.manual_seed(0)
    PixelVQ(PixelVQConfig(channels=[16, 32], latent_dim=16)).save(tmp_path / "codec")
    cfg = load_config(
        train_unified.UnifiedRecipe,
        None,
        [f"out_dir={tmp_path / 'run'}", f"codec_dir={tmp_path / 'codec'}", "model.size=debug",
         "data.task_probs={vqa: 1.0}", "data.n_scenes=32", "tokenizer_scenes=100", "batch_size=4",
         "train.max_steps=3", "train.ckpt_every=0", *switches],
    )  # fmt: skip
    built = {}
    build = train_unified.build
    monkeypatch.setattr(train_unified, "build", lambda *a, **k: built.setdefault("out", build(*a, **k)))
    run_unified(cfg)
    return built["out"]


def test_a_question_first_run_trains_saves_loads_and_answers(tmp_path, monkeypatch, run_unified):
    model, loader = _train_vqa_run(tmp_path, monkeypatch, run_unified, "model.vqa_order=question_first")
    layout, doc = model.layout, loader.dataset[0]  # a VQA document: the question between <vqa> and <boi>
    assert doc.tokens[1] == layout.task_id["vqa"] and doc.tokens[2] != layout.boi and layout.boi in doc.tokens

    meta = json.loads((tmp_path / "run" / "model" / "run.json").read_text())
    assert meta["layout"] == {"vqa_order": "question_first", "vqa_describe": False}
    run = panglot.load(tmp_path / "run")
    assert run.layout.vqa_order == "question_first"
    prompt = run.layout.vqa_prompt([0] * 64, [5, 6])
    assert prompt[2:4] == [5, 6] and prompt[4] == run.layout.boi and prompt[-1] == run.layout.assistant
    answers = run.ask(list(render_batch(split_scenes("val", 2, 0))), ["how many objects are there?"] * 2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    del meta["layout"]  # a run saved before the switch existed reads its questions after the image
    (tmp_path / "run" / "model" / "run.json").write_text(json.dumps(meta))
    assert panglot.load(tmp_path / "run").layout.vqa_order == "image_first"


def test_a_describing_run_writes_the_caption_first_and_ask_returns_only_the_answer(tmp_path, monkeypatch, run_unified):
    model, loader = _train_vqa_run(tmp_path, monkeypatch, run_unified, "model.vqa_describe=true")
    layout, doc = model.layout, loader.dataset[0]
    after_image = doc.tokens[doc.tokens.index(layout.eoi) + 1 :]
    first, second = (i for i, t in enumerate(after_image) if t == layout.assistant)  # question | caption | answer
    caption = model.vocab.text.decode(after_image[first + 1 : second])
    assert caption.startswith("a ") and " at the " in caption  # the canonical caption of the scene
    assert json.loads((tmp_path / "run" / "model" / "run.json").read_text())["layout"]["vqa_describe"] is True

    run = panglot.load(tmp_path / "run")
    text = run.tokenizer
    written = [*text.encode("a small red circle at the top"), run.layout.assistant, *text.encode("yes"), run.layout.eos]
    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: [written])  # what the model would write
    assert run.ask(list(render_batch(split_scenes("val", 1, 0))), ["is there a red circle?"]) == ["yes"]
    explained = run.explain(list(render_batch(split_scenes("val", 1, 0))), ["is there a red circle?"])
    assert explained == [("a small red circle at the top", "yes")]


def test_a_marked_run_trains_on_marked_descriptions(tmp_path, monkeypatch, run_unified):
    model, loader = _train_vqa_run(
        tmp_path, monkeypatch, run_unified, "model.vqa_describe=true", "data.vqa_description=marked", "data.vqa_mark_weight=4"
    )
    layout, text = model.layout, model.vocab.text
    doc = loader.dataset[0]
    after_image = doc.tokens[doc.tokens.index(layout.eoi) + 1 :]
    first, second = (i for i, t in enumerate(after_image) if t == layout.assistant)
    words = text.decode(after_image[first + 1 : second]).split()
    assert words.count("yes") + words.count("no") == words.count("a")  # one mark per object phrase
    marks = {text.encode("yes")[0], text.encode("no")[0]}
    weights = doc.weights[len(doc.tokens) - len(after_image) :]
    assert {weights[i] for i in range(first + 1, second) if after_image[i] in marks} == {4.0}
    run = panglot.load(tmp_path / "run")
    (description, answer), = run.explain(list(render_batch(split_scenes("val", 1, 0))), ["how many objects are there?"])
    assert isinstance(description, str) and isinstance(answer, str)


def test_text_lookup_documents_train_beside_the_image_tasks_with_their_own_loss_share(tmp_path, monkeypatch, run_unified):
    """``vqa_text`` documents (no image) are packed beside VQA documents, logged as their own task and weighed by
    their own share of the loss; a run drawing them without a describing layout is refused before it trains."""
    shares = "task_loss_shares={vqa: 0.5, vqa_text: 0.5}"
    _, loader = _train_vqa_run(
        tmp_path, monkeypatch, run_unified, "model.vqa_describe=true", "data.vqa_description=marked",
        "data.task_probs={vqa: 1.0, vqa_text: 1.0}", shares, "train.log_every=1",
    )  # fmt: skip
    tasks = {loader.dataset[i].task for i in range(32)}
    assert tasks == {"vqa", "vqa_text"}
    logged = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_vqa_text" in row for row in logged), logged
    with pytest.raises(ValueError, match=r"vqa_text .* set model\.vqa_describe"):
        _train_vqa_run(tmp_path / "plain", monkeypatch, run_unified, "data.task_probs={vqa: 1.0, vqa_text: 1.0}")


def test_answers_from_the_runs_own_caption_follow_it_with_the_models_marks(tmp_path, monkeypatch, run_unified):
    """``answer_from_caption``: the description is the run's caption of the image (each distinct image captioned
    once), marked where the run's marking puts marks, the marks' values the model's; a question outside the
    grammar is answered from a description the model writes. A marked run's marking comes from its recipe."""
    _train_vqa_run(
        tmp_path, monkeypatch, run_unified, "model.vqa_describe=true", "data.vqa_description=fields",
        "data.task_probs={vqa: 1.0, vqa_text: 1.0}",
    )  # fmt: skip
    run = panglot.load(tmp_path / "run")
    assert run.defaults.marking == "fields" and not run.defaults.answer_from_caption
    run.defaults = dataclasses.replace(run.defaults, answer_from_caption=True)
    scenes = split_scenes("val", 2, 0)
    images = list(render_batch(scenes))
    captioned = []

    def caption_ids(codes, *args):  # the run "reads" each image as its true caption
        captioned.append(len(codes))
        by_code = {tuple(c.tolist()): i for i, c in enumerate(run._image_codes(images))}
        return [run.tokenizer.encode(language.caption(scenes[by_code[tuple(c.tolist())]])) for c in codes]

    monkeypatch.setattr(run, "_caption_ids", caption_ids)
    asked = [images[0], images[1], images[0]]
    questions = ["how many objects are there?", "what shape is at the top left?", "what color is the red circle?"]
    rows = run._answer_from_captions(run._image_codes(asked), questions, [run.tokenizer.encode(q) for q in questions], 8)
    assert captioned == [2]  # three questions, two distinct images
    marks = {run.tokenizer.encode(word)[0] for word in ("yes", "no")}
    for row, scene, question in zip(rows[:2], [scenes[0], scenes[1]], questions):
        end = row.index(run.layout.assistant)
        truth = vqa.marked_description(language.caption(scene), question, "fields")
        expected = run.tokenizer.encode(truth)
        assert len(row[:end]) == len(expected)
        assert all((t in marks) if e in marks else t == e for t, e in zip(row[:end], expected))
    assert vqa.marked_description(language.caption(scenes[0]), questions[2], "fields") is None  # written freely
    explained = run.explain(asked, questions)
    assert len(explained) == 3 and all(isinstance(a, str) for _, a in explained)

    # a run that drew no image VQA documents (vqa_text alone) is asked as they read: the question, no image
    meta_path = tmp_path / "run" / "model" / "run.json"
    meta = json.loads(meta_path.read_text())
    meta["recipe"]["data"]["task_probs"] = {"t2i": 1.0, "vqa_text": 1.0}
    meta_path.write_text(json.dumps(meta))
    text_run = panglot.load(tmp_path / "run")
    assert run.defaults.answer_with_image and not text_run.defaults.answer_with_image
    text_run.defaults = dataclasses.replace(text_run.defaults, answer_from_caption=True)
    monkeypatch.setattr(text_run, "_caption_ids", caption_ids)
    prompts, generate_text = [], text_run._generate_text
    monkeypatch.setattr(text_run, "_generate_text", lambda rows, *a, **k: prompts.extend(rows) or generate_text(rows, *a, **k))
    q_ids = [text_run.tokenizer.encode(q) for q in questions]
    text_run._answer_from_captions(text_run._image_codes(asked), questions, q_ids, 8)
    codes = text_run._image_codes(asked)
    assert prompts == [*(text_run.layout.vqa_text_prompt(q) for q in q_ids[:2]), text_run.layout.vqa_prompt(codes[2], q_ids[2])]
