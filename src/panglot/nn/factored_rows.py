"""Rows of an embedding (or output) matrix that share parameters through the structure of their ids.

A codec's ids often have parts that mean the same thing across many ids: the pixel VQ's token colour, each
digit of an FSQ code. ``FactoredRows`` is a ``torch.nn.utils.parametrize`` parametrization of a
``(V, D)`` weight: rows ``start .. start + n - 1`` become ``own row + sum over factors of table_f[value_f(id)]``.
Each factor's table is learned from every id that shares a value, so a model sees "red" in all 240 red
shape codes at once instead of learning 1920 unrelated rows. The tables start at zero: adding the
parametrization does not change the function.

A module keeps its plain layout on disk: ``plain_state_dict`` writes each parametrized weight as the
computed matrix under its usual name, so saved runs load, decode and compile without knowing of factors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class FactoredRows(nn.Module):
    """weight (V, D) -> weight with rows ``[start, start + n)`` plus their factors' shared rows and, with
    ``features`` (n, F), a learned linear map of each row's fixed features (``features @ proj``, proj (F, D))."""

    def __init__(
        self, start: int, factors: Sequence[tuple[torch.Tensor, int]], dim: int, features: torch.Tensor | None = None
    ):
        super().__init__()
        if not factors and features is None:
            raise ValueError("FactoredRows needs at least one factor or features")
        n = len(factors[0][0]) if factors else len(features)
        if features is not None and (features.ndim != 2 or len(features) != n):
            raise ValueError(f"features must be (n, F) with n = {n} rows, got {tuple(features.shape)}")
        if any(len(values) != n for values, _ in factors):
            raise ValueError(f"every factor must give a value for each of the {n} ids")
        for values, size in factors:
            if int(values.min()) < 0 or int(values.max()) >= size:
                raise ValueError(f"factor values must lie in [0, {size}), got [{int(values.min())}, {int(values.max())}]")
        self.start, self.n = start, n
        self.tables = nn.ParameterList([nn.Parameter(torch.zeros(size, dim)) for _, size in factors])
        # row r's factor values as one-hot columns (n, sum of sizes): the shared rows are one matmul against the
        # stacked tables. Indexing each table instead (``table[values]``) costs a scatter-add per table in the
        # backward, 18 ms against 1.4 for the matmul per weight and step on the quickstart's 1920 ids (2 threads)
        membership = [F.one_hot(values.long(), size) for values, size in factors]
        self.register_buffer(
            "membership", torch.cat(membership, 1).float() if membership else torch.zeros(n, 0), persistent=False
        )
        self.proj = None
        if features is not None:
            self.register_buffer("features", features.float().clone(), persistent=False)
            self.proj = nn.Parameter(torch.zeros(features.shape[1], dim))

    def shared(self) -> torch.Tensor:
        """(n, D): what the factors (and the features) add to each of the ``n`` rows."""
        out = 0
        with torch.autocast(self.membership.device.type, enabled=False):  # exact sums of the tables' rows
            if len(self.tables):
                stacked = torch.cat(list(self.tables))
                out = self.membership.to(stacked.dtype) @ stacked
            if self.proj is not None:
                out = out + self.features.to(self.proj.dtype) @ self.proj
        return out

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        a, b = self.start, self.start + self.n
        if b > weight.shape[0]:
            raise ValueError(f"rows [{a}, {b}) do not fit a weight of {weight.shape[0]} rows")
        rows = weight[a:b] + self.shared().to(weight.dtype)
        return torch.cat([weight[:a], rows, weight[b:]])


def factor_rows(
    module: nn.Module,
    start: int,
    factors: Sequence[tuple[torch.Tensor, int]],
    name: str = "weight",
    features: torch.Tensor | None = None,
) -> None:
    """Register ``FactoredRows`` on ``module.<name>`` (an ``nn.Embedding`` or ``nn.Linear`` weight)."""
    weight = getattr(module, name)
    parametrize.register_parametrization(module, name, FactoredRows(start, factors, weight.shape[1], features))


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every parametrized tensor stored as its computed value under its plain
    name (``tok_embeddings.weight``), so a module built without the parametrization loads it."""
    state = {k: v for k, v in module.state_dict().items() if "parametrizations" not in k.split(".")}
    for prefix, sub in module.named_modules():
        if parametrize.is_parametrized(sub):
            for name in sub.parametrizations:
                state[f"{prefix}.{name}" if prefix else name] = getattr(sub, name).detach()
    return state
