"""Recall@k with duplicate keys, and its exact chance level."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from panglot.evaluation.retrieval import chance_recall_at_k, image_text_retrieval, recall_at_k


def test_recall_counts_any_item_with_the_query_key():
    # gallery: x, x, y, z. Query 0 (key x) ranks item 1 (also x) first: correct at 1.
    # Query 1 (key y) ranks z, x, x, y: wrong at 1, right at 5 (k >= gallery size).
    # Query 2 (key z) ranks y, z, ...: right at 2.
    sim = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.5, 0.4, 0.1, 0.9], [0.0, 0.0, 0.9, 0.5]])
    got = recall_at_k(sim, ["x", "y", "z"], ["x", "x", "y", "z"], ks=(1, 2, 5))
    assert got == {"r@1": pytest.approx(1 / 3), "r@2": pytest.approx(2 / 3), "r@5": 1.0}


def test_chance_matches_enumeration():
    gallery = ["x", "x", "y", "z", "z", "z"]
    queries = ["x", "y", "z"]
    for k in (1, 2, 3):
        hits = [
            any(gallery[i] == q for i in top)
            for q in queries
            for top in itertools.combinations(range(len(gallery)), k)
        ]
        assert chance_recall_at_k(queries, gallery, ks=(k,))[f"r@{k}"] == pytest.approx(sum(hits) / len(hits))
    assert chance_recall_at_k(["x"], ["x", "y"], ks=(1,))["r@1"] == 0.5


def test_image_text_retrieval_both_ways():
    keys = ["a", "b", "a", "c"]
    emb = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]]), dim=-1
    )
    perfect = image_text_retrieval(emb, emb, keys)
    assert perfect["image_to_text"] == perfect["text_to_image"] == {"r@1": 1.0, "r@5": 1.0}
    assert perfect["chance"]["r@1"] == pytest.approx((0.5 + 0.25 + 0.5 + 0.25) / 4) and perfect["n"] == 4
    swapped = image_text_retrieval(emb, emb[[1, 0, 3, 2]], keys)  # texts of the wrong images
    assert swapped["image_to_text"]["r@1"] < 1.0
    with pytest.raises(ValueError, match="4 images, 3 texts, 4 keys"):
        image_text_retrieval(emb, emb[:3], keys)
    with pytest.raises(ValueError, match=r"shape \(4, 4\), expected \(3 queries"):
        recall_at_k(emb @ emb.t(), keys[:3], keys)
    assert math.isclose(sum(1 for _ in keys), 4)
