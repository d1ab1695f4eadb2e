"""Cross-modal retrieval recall@k where several gallery items can be right.

Each query and each gallery item carries a *key* (in ShapesWorld: the canonical caption); a retrieved item
is correct when its key equals the query's key, so a duplicate caption in the gallery is never punished.
Chance level is exact: a random ranking puts at least one of the ``m`` correct items among the top ``k`` of
``n`` with probability ``1 - C(n - m, k) / C(n, k)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb
from typing import Any

import torch


def recall_at_k(
    similarity: torch.Tensor,
    query_keys: Sequence[str],
    gallery_keys: Sequence[str],
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Share of queries with a correct item among their ``k`` most similar gallery items, per ``k``.

    ``similarity`` is (Q, G): row q scores every gallery item for query q. Returns ``{"r@1": .., "r@5": ..}``.
    """
    q, g = similarity.shape
    if (q, g) != (len(query_keys), len(gallery_keys)):
        raise ValueError(
            f"similarity has shape {(q, g)}, expected ({len(query_keys)} queries, {len(gallery_keys)} gallery items)"
        )
    index = {key: i for i, key in enumerate(dict.fromkeys([*query_keys, *gallery_keys]))}
    qk = torch.tensor([index[k] for k in query_keys])
    gk = torch.tensor([index[k] for k in gallery_keys])
    correct = qk[:, None] == gk[None, :]  # (Q, G)
    order = similarity.float().cpu().argsort(dim=1, descending=True, stable=True)
    hits = correct.gather(1, order)  # (Q, G): is the r-th ranked item correct
    return {f"r@{k}": float(hits[:, : min(k, g)].any(dim=1).float().mean()) for k in ks}


def chance_recall_at_k(
    query_keys: Sequence[str], gallery_keys: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Expected :func:`recall_at_k` of a uniformly random ranking."""
    n = len(gallery_keys)
    counts = Counter(gallery_keys)
    out = {}
    for k in ks:
        top = min(k, n)
        out[f"r@{k}"] = sum(1 - comb(n - counts[key], top) / comb(n, top) for key in query_keys) / len(
            query_keys
        )
    return out


def image_text_retrieval(
    image_emb: torch.Tensor, text_emb: torch.Tensor, keys: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[str, Any]:
    """Recall@k both ways over a gallery of matched pairs (image i, text i, key i), embeddings normalised:
    ``image_to_text`` (each image queries all texts), ``text_to_image`` and their ``chance`` level (the
    same both ways, since both sides carry the same keys)."""
    if not (image_emb.shape[0] == text_emb.shape[0] == len(keys)):
        raise ValueError(
            f"expected matched pairs: {image_emb.shape[0]} images, {text_emb.shape[0]} texts, {len(keys)} keys"
        )
    sim = image_emb.float() @ text_emb.float().t()  # (N images, N texts)
    return {
        "image_to_text": recall_at_k(sim, keys, keys, ks),
        "text_to_image": recall_at_k(sim.t(), keys, keys, ks),
        "chance": chance_recall_at_k(keys, keys, ks),
        "n": len(keys),
    }
