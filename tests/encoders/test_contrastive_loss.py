"""Multi-positive symmetric InfoNCE on hand-checkable cases."""

from __future__ import annotations

import math

import pytest
import torch

from panglot.encoders import PairBatch, contrastive_loss, dual_encoder_loss, positives

# Images 0 and 1 show the same scene (same caption); image 2 another one. Texts mirror them.
EMB = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])


def test_positives_are_equal_keys():
    assert positives(["a", "b", "a"]).tolist() == [
        [True, False, True],
        [False, True, False],
        [True, False, True],
    ]


def test_loss_value_by_hand():
    loss, metrics = contrastive_loss(EMB, EMB, torch.tensor(1.0), ["a", "a", "b"])
    # rows 0, 1: logits [1, 1, 0], target [1/2, 1/2, 0] -> log(2e + 1) - 1; row 2: logits [0, 0, 1] -> log(2 + e) - 1
    expected = (2 * (math.log(2 * math.e + 1) - 1) + math.log(2 + math.e) - 1) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # both directions equal here, so their mean too
    assert metrics["i2t_acc"] == metrics["t2i_acc"] == 1.0 and metrics["logit_scale"] == 1.0


def test_duplicate_captions_are_not_pushed_apart():
    """Pairs 0 and 1 share a caption. With the caption as key, embedding them identically is the best
    the loss can do (its floor: the targets' entropy, log 2 on their rows); as plain InfoNCE negatives
    the loss prefers them apart, fighting the data."""
    identical = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    apart = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    scale = torch.tensor(20.0)

    def loss(emb: torch.Tensor, keys: list[str]) -> float:
        return contrastive_loss(emb, emb, scale, keys)[0].item()

    assert loss(identical, ["a", "a", "b"]) == pytest.approx(2 * math.log(2) / 3, rel=1e-6)
    assert loss(identical, ["a", "a", "b"]) < loss(apart, ["a", "a", "b"])
    assert loss(apart, ["a", "b", "c"]) < 1e-6 < loss(identical, ["a", "b", "c"])


def test_gradient_pulls_matched_pairs_together(encoder, images, examples):
    encoder.train()
    captions = [e.caption for e in examples[:6]]
    batch = PairBatch(images, captions, captions)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss, _ = dual_encoder_loss(encoder, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_batch_sizes_must_agree():
    with pytest.raises(ValueError, match="3 images, 3 texts, 2 keys"):
        contrastive_loss(EMB, EMB, torch.tensor(1.0), ["a", "b"])
