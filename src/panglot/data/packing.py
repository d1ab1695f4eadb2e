"""Sequence packing: whole documents laid one after another in rows of a fixed length.

Packed rows waste no compute on padding (apart from each row's unfilled tail) and, with the backbone's
``document_ids`` (block-diagonal causal attention, RoPE positions restarting per document), every token
sees exactly what it would see with its document alone. The loss is the same token-weighted loss as on
right-padded batches: the first token of each document is never a target, so no loss crosses a boundary.

    packer = DocumentPacker(dataset, pack_len=256, rows=10, pad_id=pad_id, seed=0)
    batch = next(packer)  # tokens/weights/doc/task (rows, pack_len): see ``collate_packed``
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from panglot.data.loader import StatefulLoader
from panglot.multimodal import TASKS, TaskSequence

DOCS_PER_ROW = 3  # rows of ~3 documents measured fastest on CPU (docs/benchmarks.md)


@dataclass
class PackingConfig:
    """Whether and how a recipe packs its documents: a batch is then ``rows`` rows of ``pack_len`` tokens.

    Short rows are faster on CPU: attention under a mask costs more per token the longer the row, so
    rows of a few documents beat long ones (docs/benchmarks.md, "Sequence packing").
    """

    enabled: bool = False
    pack_len: int | None = None  # tokens per row (every document must fit); None: see packed_shape
    rows: int | None = None  # rows per batch; None: as many as hold the recipe's batch_size documents
    lookahead: int = 8  # documents that fit no row before a batch is closed (larger: fuller rows)

    def __post_init__(self) -> None:
        sizes = {"pack_len": self.pack_len, "rows": self.rows, "lookahead": self.lookahead}
        problems = [f"{k} must be >= 1, got {v}" for k, v in sizes.items() if v is not None and v < 1]
        if problems:
            raise ValueError("invalid PackingConfig: " + "; ".join(problems))


def packed_shape(
    dataset: Sequence[TaskSequence], cfg: PackingConfig, documents: int, sample: int = 256
) -> tuple[int, int]:
    """``(pack_len, rows)`` of ``cfg``, what it leaves open (None) sized from the dataset's first ``sample``
    documents, whatever the codec's tokens per image: ``pack_len`` holds ``DOCS_PER_ROW`` documents of
    the mean length (and at least the longest seen), rounded up to a multiple of 32; ``rows`` hold
    ``documents`` documents of the mean length (rounded up), so a packed batch holds about as many
    documents as a padded batch of ``documents`` (a little fewer: each row's unfilled tail)."""
    lengths = [len(dataset[i]) for i in range(min(sample, len(dataset)))]
    mean = sum(lengths) / len(lengths)
    pack_len = cfg.pack_len or 32 * math.ceil(max(DOCS_PER_ROW * mean, max(lengths)) / 32)
    rows = cfg.rows or math.ceil(documents * mean / pack_len)
    return pack_len, rows


class DocumentPacker:
    """A stateful iterator of packed batches over an indexable dataset of ``TaskSequence`` documents.

    Documents come in the order of a ``StatefulLoader`` over their indices (a permutation per epoch from
    ``seed``). Each batch is ``rows`` rows of ``pack_len`` tokens, filled first-fit: the documents left
    over from the previous batch go first (oldest first, so none waits for ever), then new ones; each
    goes into the first row with room. A document that fits no row is kept for the next batch; the
    batch is closed once ``lookahead`` documents are kept (or the documents run out: ``epochs`` set).

    The state is the index loader's position plus the indices of the kept documents, so a resumed
    packer yields exactly the batches the uninterrupted one would have. ``dataset[i]`` must be a pure
    function of ``i`` (``WorldMixture`` is). ``shard=(rank, processes)``: one data-parallel process's packer, over
    its share of each epoch's documents (`StatefulLoader`'s ``shard``).
    """

    def __init__(
        self,
        dataset: Sequence[TaskSequence],
        pack_len: int,
        rows: int,
        *,
        pad_id: int,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
        lookahead: int = 8,
        shard: tuple[int, int] = (0, 1),
    ):
        PackingConfig(enabled=True, pack_len=pack_len, rows=rows, lookahead=lookahead)  # validates
        self.dataset = dataset
        self.pack_len, self.rows, self.lookahead, self.pad_id = pack_len, rows, lookahead, pad_id
        self.order = StatefulLoader(
            range(len(dataset)), 1, seed=seed, shuffle=shuffle, epochs=epochs, collate_fn=_only, shard=shard
        )
        self.kept: list[int] = []  # indices drawn but not yet packed, oldest first

    def __iter__(self) -> DocumentPacker:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return collate_packed(self.next_rows(), self.pack_len, self.pad_id)

    def next_rows(self) -> list[list[TaskSequence]]:
        """The documents of the next batch, row by row (``StopIteration`` once none are left)."""
        rows: list[list[TaskSequence]] = [[] for _ in range(self.rows)]
        room = [self.pack_len] * self.rows
        kept, candidates = [], iter(self.kept)
        while len(kept) < self.lookahead:
            index = next(candidates, None)
            if index is None:
                try:
                    index = next(self.order)
                except StopIteration:
                    break
            doc = self.dataset[index]
            if len(doc) > self.pack_len:
                raise ValueError(
                    f"document {index} ({doc.task}) has {len(doc)} tokens, more than pack_len {self.pack_len}"
                )
            row = next((r for r in range(self.rows) if room[r] >= len(doc)), None)
            if row is None:
                kept.append(index)
            else:
                rows[row].append(doc)
                room[row] -= len(doc)
        self.kept = kept + list(candidates)
        if not rows[0]:
            raise StopIteration
        return rows

    def state_dict(self) -> dict:
        """JSON-serialisable position: the index loader's state and the kept documents."""
        return {
            "order": self.order.state_dict(),
            "kept": list(self.kept),
            "pack_len": self.pack_len,
            "rows": self.rows,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        differ = [
            f"{k}: expected {mine[k]!r}, found {state.get(k)!r}"
            for k in ("pack_len", "rows")
            if state.get(k) != mine[k]
        ]
        if differ:
            raise ValueError("packer state does not fit this packer (" + "; ".join(differ) + ")")
        self.order.load_state_dict(state["order"])
        self.kept = [int(i) for i in state["kept"]]


def collate_packed(rows: list[list[TaskSequence]], pack_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Lay documents into rows of ``pack_len`` tokens.

    Returns ``tokens`` (R, L) long (``pad_id`` in each row's tail), ``weights`` (R, L) float (loss weight
    of predicting ``tokens[:, i]``; 0 at each document's first token, so no target crosses a boundary,
    and 0 in the tail), ``doc`` (R, L) long (0, 1, ... per document within its row; the tail is one
    more id) and ``task`` (R, L) long (the document's index in ``TASKS``; -1 in the tail).
    """
    n = len(rows)
    tokens = torch.full((n, pack_len), pad_id, dtype=torch.long)
    weights = torch.zeros((n, pack_len), dtype=torch.float32)
    doc = torch.zeros((n, pack_len), dtype=torch.long)
    task = torch.full((n, pack_len), -1, dtype=torch.long)
    for r, docs in enumerate(rows):
        start = 0
        for d, document in enumerate(docs):
            end = start + len(document)
            if end > pack_len:
                raise ValueError(f"row {r} holds {end} tokens, more than pack_len {pack_len}")
            tokens[r, start:end] = torch.tensor(document.tokens)
            weights[r, start + 1 : end] = torch.tensor(document.weights[1:])
            doc[r, start:end] = d
            task[r, start:end] = TASKS.index(document.task)
            start = end
        doc[r, start:] = len(docs)
    return {"tokens": tokens, "weights": weights, "doc": doc, "task": task}


def _only(items: list) -> object:
    return items[0]
