"""A stateful, seeded, shuffling batch iterator whose position can be saved and restored exactly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import default_collate


class StatefulLoader:
    """Batches over an indexable dataset, epoch after epoch, resumable from ``state_dict()``.

    The order of epoch ``e`` is a permutation drawn from ``numpy.random.default_rng([seed, e])``, so it
    depends only on the seed, the epoch and the dataset length; the state is just ``(epoch, position)``.
    ``epochs=None`` iterates forever; otherwise ``StopIteration`` comes after ``epochs`` passes.

    ``shard=(rank, processes)``: the loader of one of several data-parallel processes, as torch's
    ``DistributedSampler``: every process draws the same permutation per epoch and takes every ``processes``-th
    item of it from its ``rank``, all processes the same number (``len(dataset) // processes``), so an epoch's
    items are split between them with none seen twice.
    """

    def __init__(
        self,
        dataset: Sequence,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        epochs: int | None = None,
        collate_fn: Callable[[list], Any] = default_collate,
        shard: tuple[int, int] = (0, 1),
    ):
        rank, processes = shard
        if processes < 1 or not 0 <= rank < processes:
            raise ValueError(f"shard must be (rank, processes) with 0 <= rank < processes, got {shard}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        if len(dataset) < processes:
            raise ValueError(f"dataset of {len(dataset)} items cannot be split between {processes} processes")
        if drop_last and len(dataset) // processes < batch_size:
            raise ValueError(
                f"dataset of {len(dataset)} items is smaller than one batch of {batch_size}"
                + (f" per process ({processes} processes)" if processes > 1 else "")
            )
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {epochs}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epochs = epochs
        self.collate_fn = collate_fn
        self.shard = (rank, processes)
        self.epoch = 0
        self.position = 0  # index into this epoch's order of the next item to yield
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self._items()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> StatefulLoader:
        return self

    def __next__(self) -> Any:
        if self.position >= self._epoch_end():
            if self.epochs is not None and self.epoch + 1 >= self.epochs:
                raise StopIteration
            self.epoch += 1
            self.position = 0
            self._order = None
        indices = self._epoch_order()[self.position : self.position + self.batch_size]
        self.position += len(indices)
        return self.collate_fn([self.dataset[int(i)] for i in indices])

    def _epoch_end(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self._items()

    def _items(self) -> int:
        """Items per epoch (this process's share of the dataset)."""
        return len(self.dataset) // self.shard[1]

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = len(self.dataset)
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            rank, processes = self.shard
            self._order = order[rank::processes][: self._items()]
        return self._order

    def state_dict(self) -> dict:
        """JSON-serialisable position (plus what must match to restore it)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "dataset_len": len(self.dataset),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "shard": list(self.shard),
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        fixed = ("seed", "dataset_len", "batch_size", "shuffle", "shard")
        state = {"shard": [0, 1], **state}  # positions saved before shards existed were a single process's
        differ = [
            f"{k}: expected {mine[k]!r}, found {state.get(k)!r}" for k in fixed if state.get(k) != mine[k]
        ]
        if differ:
            raise ValueError("loader state does not fit this loader (" + "; ".join(differ) + ")")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = None
