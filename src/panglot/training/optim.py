"""AdamW parameter groups, the warmup + cosine learning-rate schedule, and gradient clipping."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from panglot.training.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, max_steps: int, resized: tuple[int, int] | None = None) -> float:
    """Learning rate for the update with 0-based index ``step``.

    Linear warmup reaches ``cfg.lr`` at update ``warmup_steps - 1``; a cosine then falls from ``cfg.lr``
    (at update ``warmup_steps``) to ``cfg.lr * min_lr_ratio`` at the last update (``max_steps - 1``).
    A pure function of the step, so resuming needs no scheduler state.

    ``resized=(at, old_max_steps)``: the run's length changed from ``old_max_steps`` to ``max_steps`` at update
    ``at`` (a budget's re-fit, `panglot.training.budget.StepRefit`). Updates before ``at`` keep the old schedule;
    from ``at`` on the cosine goes on from where it was at ``at`` and reaches its floor at the new last update,
    so the rate never jumps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps

    def progress_under(last: int, update: int) -> float:  # share of the cosine done at `update` of a run to `last`
        return min(1.0, (update - cfg.warmup_steps) / max(1, last - 1 - cfg.warmup_steps))

    at, old_max_steps = resized if resized is not None else (None, max_steps)
    if at is None or step < at:
        progress = progress_under(old_max_steps, step)
    else:  # the rest of the cosine, stretched or squeezed from `at` to the new last update
        pivot = max(at, cfg.warmup_steps)
        start = progress_under(old_max_steps, pivot)
        progress = min(1.0, start + (1.0 - start) * (step - pivot) / max(1, max_steps - 1 - pivot))
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + (cfg.lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: biases, norm weights (all < 2-D) and embeddings."""
    embedding_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag)
        for p in m.parameters()
    }
    return {name for name, p in model.named_parameters() if p.ndim < 2 or id(p) in embedding_ids}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed and not decayed; each keeps its ``param_names``."""
    skip = no_decay_names(model)
    groups = {"decay": ([], []), "no_decay": ([], [])}
    for name, p in model.named_parameters():
        if p.requires_grad:
            names, params = groups["no_decay" if name in skip else "decay"]
            names.append(name)
            params.append(p)
    return [
        {"params": params, "param_names": names, "weight_decay": wd}
        for (names, params), wd in ((groups["decay"], weight_decay), (groups["no_decay"], 0.0))
        if params
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters (frozen ones are left out)."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters (all frozen?)")
    # The fused kernel: one pass over every tensor, the same updates (to float rounding) 5x faster on CPU than
    # the per-tensor loop torch picks there by default (docs/benchmarks.md "Unified training step").
    params = [p for g in groups for p in g["params"]]
    fused = len({p.device for p in params}) == 1 and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (None: no clipping); returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    return nn.utils.clip_grad_norm_(params, math.inf if max_norm is None else max_norm)
