"""AdamW (and Muon) parameter groups, the warmup + cosine learning-rate schedule, and gradient clipping."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from panglot.nn.precision import resolve_dtype
from panglot.training.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, max_steps: int, resized: Sequence[tuple[int, int]] = ()) -> float:
    """Learning rate for the update with 0-based index ``step``.

    Linear warmup reaches ``cfg.lr`` at update ``warmup_steps - 1``; a cosine then falls from ``cfg.lr``
    (at update ``warmup_steps``) to ``cfg.lr * min_lr_ratio`` at the last update (``max_steps - 1``).
    A pure function of the step, so resuming needs no scheduler state.

    ``resized``: the run's length changed during training (a budget's re-fits, `panglot.training.budget.StepRefit`),
    as ``(at, max_steps before)`` pairs in order, the last one's new length being ``max_steps``. Updates before the
    first ``at`` keep the original schedule; from each ``at`` on the cosine goes on from where it was there and
    reaches its floor at the new last update, so the rate never jumps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    lengths = [before for _, before in resized] + [max_steps]  # the run's length in each stretch of the schedule
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, lengths[0] - 1 - cfg.warmup_steps))
    start, pivot = 0.0, cfg.warmup_steps  # the current stretch starts at `pivot` with `start` of the cosine done
    for i, (at, _) in enumerate(resized):
        if step < at:
            break
        at = max(at, cfg.warmup_steps)  # the share done at this re-fit under the stretch before it ...
        start = min(1.0, start + (1.0 - start) * (at - pivot) / max(1, lengths[i] - 1 - pivot))
        pivot = at  # ... then the rest over the new length
        progress = min(1.0, start + (1.0 - start) * (step - pivot) / max(1, lengths[i + 1] - 1 - pivot))
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


def muon_names(model: nn.Module, exclude: Iterable[str] = ()) -> set[str]:
    """Names of the weights Muon updates: 2-D weights of ``nn.Linear`` layers whose module name matches none of
    the ``exclude`` globs (embeddings, norms, biases and factor tables are not linear weights)."""
    exclude = list(exclude)
    return {
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module.weight.ndim == 2
        and "weight" in module._parameters  # a parametrized weight (FactoredRows) is not a plain matrix
        and not any(fnmatch.fnmatchcase(module_name, pattern) for pattern in exclude)
    }


def param_groups(model: nn.Module, weight_decay: float, muon: set[str] = frozenset()) -> list[dict]:
    """The groups over the trainable parameters, each with its ``param_names`` and ``algorithm``: AdamW's decayed
    and not decayed ones, then the weights named in ``muon`` (decayed); empty groups are left out."""
    skip = no_decay_names(model)
    groups = {"decay": ([], []), "no_decay": ([], []), "muon": ([], [])}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = "muon" if name in muon else "no_decay" if name in skip else "decay"
            names, params = groups[kind]
            names.append(name)
            params.append(p)
    return [
        {
            "params": params,
            "param_names": names,
            "weight_decay": weight_decay if kind != "no_decay" else 0.0,
            "algorithm": "muon" if kind == "muon" else "adamw",
        }
        for kind, (names, params) in groups.items()
        if params
    ]


def orthogonalize(updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iterations on a stack of same-shape matrices at once, in bf16 where the device
    multiplies it natively (else fp32; `fast_bf16`): (n, A, B) -> (n, A, B) with singular values pushed towards 1
    (the same arithmetic as torch's one-matrix version)."""
    x = updates.to(resolve_dtype("auto", updates.device))
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    a, b, c = coefficients
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def muon_rate(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """``torch.optim.Muon``'s per-shape rate: Keller Jordan's ``sqrt(max(1, A / B))`` ("original", torch's
    default) or Moonshot's ``0.2 * sqrt(max(A, B))`` ("match_rms_adamw")."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown adjust_lr_fn {adjust_lr_fn!r}")


def _closure_loss(closure):
    """torch's optimizer protocol: a step may be given a closure that recomputes the loss (with gradients)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class BatchedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` whose step orthogonalises all matrices of one shape in one batched product.

    Torch's step runs the Newton-Schulz iterations one matrix at a time (its ``foreach`` path is not implemented),
    and on a CPU small matrix products use threads badly: the tiny model's 28 hidden matrices took 111-120 ms a step
    on 2 threads (96 on 1); stacked by shape (4 shapes), 62-74 ms (docs/benchmarks.md "Muon"). The update is the same
    (Nesterov momentum, the same iterations and rates; tested against torch's step); groups, state and state
    dicts are torch's.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            if not params:
                continue
            torch._foreach_lerp_(buffers, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, buffers, group["momentum"]) if group["nesterov"] else buffers
            if group["weight_decay"]:  # decoupled, before the update; the recipes train without it
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            by_shape: dict[torch.Size, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(p.shape, []).append(i)
            for shape, members in by_shape.items():
                stacked = torch.stack([updates[i] for i in members])
                ortho = orthogonalize(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"])
                rate = muon_rate(group["lr"], group["adjust_lr_fn"], shape)
                for i, update in zip(members, ortho.unbind(0)):
                    params[i].add_(update, alpha=-rate)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """``BatchedMuon`` on some groups and ``torch.optim.AdamW`` on the others, as one optimizer.

    The two share this optimizer's group dicts and state, so setting a group's ``lr``, ``zero_grad``,
    ``state_dict`` and ``load_state_dict`` (hence checkpoints and exact resumes) work as for one optimizer.
    Each group says its ``algorithm``.
    """

    def __init__(
        self,
        groups: list[dict],
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        momentum: float,
        fused: bool | None,
        muon_lr_scale: float = 1.0,
    ) -> None:
        adamw_groups = [g for g in groups if g["algorithm"] == "adamw"]
        muon_groups = [g for g in groups if g["algorithm"] == "muon"]
        if not muon_groups:
            raise ValueError("Muon was asked for, but no trainable parameter is a linear layer's weight")
        # An orthogonalised (A, B) update has RMS ~1 / sqrt(max(A, B)); "match_rms_adamw" scales its rate by
        # 0.2 * sqrt(max(A, B)), the RMS of a typical AdamW update (Moonshot, "Muon is Scalable for LLM Training",
        # 2025), so AdamW's learning rate and schedule serve both.
        for group in muon_groups:
            group["lr_scale"] = muon_lr_scale  # `set_lr` applies it
        muon = BatchedMuon(
            muon_groups, lr=lr * muon_lr_scale, momentum=momentum, adjust_lr_fn="match_rms_adamw"
        )
        inner = [muon]
        if adamw_groups:
            inner.insert(0, torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, fused=fused))
        self._inner = inner
        self._sizes = [len(o.param_groups) for o in inner]
        super().__init__([g for o in inner for g in o.param_groups], defaults={})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (again after ``load_state_dict``)."""
        start = 0
        for optimizer, size in zip(self._inner, self._sizes):
            optimizer.param_groups = self.param_groups[start : start + size]
            optimizer.state = self.state
            start += size

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for optimizer in self._inner:
            optimizer.step()
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (``cfg.algorithm: muon``: Muon on the hidden matrices, AdamW on the rest) over the model's trainable
    parameters (frozen ones are left out)."""
    muon = muon_names(model, cfg.muon_exclude) if cfg.algorithm == "muon" else set()
    groups = param_groups(model, cfg.weight_decay, muon)
    if not groups:
        raise ValueError("the model has no trainable parameters (all frozen?)")
    # The fused kernel: one pass over every tensor, the same updates (to float rounding) 5x faster on CPU than
    # the per-tensor loop torch picks there by default (docs/benchmarks.md "Unified training step").
    params = [p for g in groups for p in g["params"]]
    fused = len({p.device for p in params}) == 1 and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )
    if cfg.algorithm == "muon":
        return MuonWithAdamW(
            groups,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            momentum=cfg.muon_momentum,
            fused=fused or None,
            muon_lr_scale=cfg.muon_lr_scale,
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's rate: ``lr`` times the group's ``lr_scale`` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (None: no clipping); returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    return nn.utils.clip_grad_norm_(params, math.inf if max_norm is None else max_norm)
