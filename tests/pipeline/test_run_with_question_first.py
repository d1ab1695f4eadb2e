"""A unified run with ``model.vqa_order=question_first``: it trains on question-first VQA documents, run.json keeps
the order, and the loaded run asks its questions in that order."""

from __future__ import annotations

import json

import torch

import panglot
from panglot.codecs.image_vq.model import PixelVQ, PixelVQConfig
from panglot.config import load_config
from panglot.world.dataset import split_scenes
from panglot.world.render import render_batch
from recipes import train_unified


def test_a_question_first_run_trains_saves_loads_and_answers(tmp_path, monkeypatch, run_unified):
    torch.manual_seed(0)
    PixelVQ(PixelVQConfig(channels=[16, 32], latent_dim=16)).save(tmp_path / "codec")
    cfg = load_config(
        train_unified.UnifiedRecipe,
        None,
        [f"out_dir={tmp_path / 'run'}", f"codec_dir={tmp_path / 'codec'}", "model.size=debug",
         "model.vqa_order=question_first", "data.task_probs={vqa: 1.0}", "data.n_scenes=32",
         "tokenizer_scenes=100", "batch_size=4", "train.max_steps=4", "train.ckpt_every=0"],
    )  # fmt: skip
    built = {}
    build = train_unified.build
    monkeypatch.setattr(train_unified, "build", lambda *a, **k: built.setdefault("out", build(*a, **k)))
    run_unified(cfg)
    model, loader = built["out"]
    layout, doc = model.layout, loader.dataset[0]  # a VQA document: the question between <vqa> and <boi>
    assert doc.tokens[1] == layout.task_id["vqa"] and doc.tokens[2] != layout.boi and layout.boi in doc.tokens

    meta = json.loads((tmp_path / "run" / "model" / "run.json").read_text())
    assert meta["layout"] == {"vqa_order": "question_first"}
    run = panglot.load(tmp_path / "run")
    assert run.layout.vqa_order == "question_first"
    prompt = run.layout.vqa_prompt([0] * 64, [5, 6])
    assert prompt[2:4] == [5, 6] and prompt[4] == run.layout.boi and prompt[-1] == run.layout.assistant
    answers = run.ask(list(render_batch(split_scenes("val", 2, 0))), ["how many objects are there?"] * 2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    del meta["layout"]  # a run saved before the switch existed reads its questions after the image
    (tmp_path / "run" / "model" / "run.json").write_text(json.dumps(meta))
    assert panglot.load(tmp_path / "run").layout.vqa_order == "image_first"
