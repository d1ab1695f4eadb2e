"""Freezing parts of a model by glob patterns on parameter (or module) names."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn


@dataclass(frozen=True)
class FreezeReport:
    frozen_tensors: int
    frozen_params: int  # number of elements
    trainable_tensors: int
    trainable_params: int


def matches(name: str, pattern: str) -> bool:
    """``pattern`` names the parameter itself or a module containing it (``"encoder"`` covers ``encoder.*``)."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def freeze(model: nn.Module, patterns: list[str]) -> FreezeReport:
    """Set ``requires_grad=False`` on every parameter matched by a pattern and count what is left.

    A pattern that matches no parameter is an error (a typo would otherwise silently train everything).
    Parameters already frozen by the caller stay frozen.
    """
    names = [name for name, _ in model.named_parameters()]
    unused = [pat for pat in patterns if not any(matches(n, pat) for n in names)]
    if unused:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"freeze patterns {unused} match no parameter; parameter names are: {shown}")
    for name, p in model.named_parameters():
        if any(matches(name, pat) for pat in patterns):
            p.requires_grad_(False)
    return count_trainable(model)


def count_trainable(model: nn.Module) -> FreezeReport:
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    return FreezeReport(
        frozen_tensors=len(frozen),
        frozen_params=sum(p.numel() for p in frozen),
        trainable_tensors=len(trainable),
        trainable_params=sum(p.numel() for p in trainable),
    )
