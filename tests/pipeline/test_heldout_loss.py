"""Held-out loss (panglot.evaluation.heldout) on the tiny trained run: what it averages, and that it reads training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from panglot.data.mixture import MixtureConfig, WorldMixture, encode_scenes
from panglot.evaluation import heldout_loss
from panglot.model.run import load_model
from panglot.multimodal import IMAGE_TASKS as TASKS
from panglot.world.dataset import split_scenes


@pytest.fixture(scope="module")
def model(debug_run):
    return load_model(debug_run)[0]


def test_it_is_the_token_mean_nll_of_one_document_per_scene_and_task(model):
    got = heldout_loss(model, n_scenes=11, batch_size=4)  # batches of 4, 4, 3: padding differs per batch
    scenes = split_scenes("val", 11, 0)
    codes = encode_scenes(model.codec, scenes)
    for task in TASKS:
        cfg = MixtureConfig(n_scenes=11, task_probs={task: 1.0}, paraphrase_prob=0.0, cond_dropout=0.0)
        nll, count = 0.0, 0
        for doc in WorldMixture(cfg, model.layout, model.vocab.text, scenes, codes, docs_per_scene=1):
            assert doc.task == task
            tokens = torch.tensor(doc.tokens)[None]
            with torch.no_grad():
                logits = model.backbone(tokens[:, :-1])[0]
            counted = torch.tensor(doc.weights[1:]) > 0
            nll += float(F.cross_entropy(logits[counted], tokens[0, 1:][counted], reduction="sum"))
            count += int(counted.sum())
        assert got[task] == pytest.approx(nll / count, rel=1e-4), task


def test_training_lowered_it_for_every_task_and_the_mode_is_kept(model, debug_run):
    trained = heldout_loss(model, n_scenes=40)
    fresh = load_model(debug_run)[0]
    torch.manual_seed(1)
    fresh.backbone.reset_parameters()
    untrained = heldout_loss(fresh, n_scenes=40)
    assert all(trained[t] < untrained[t] for t in TASKS), (trained, untrained)
    model.train()
    heldout_loss(model, n_scenes=2, tasks=("vqa",))
    assert model.training
    model.eval()


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="unknown tasks"):
        heldout_loss(model, tasks=("edit",))
    with pytest.raises(ValueError, match="n_scenes"):
        heldout_loss(model, n_scenes=0)
