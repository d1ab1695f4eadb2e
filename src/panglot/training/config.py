"""Training configuration: plain nested dataclasses (loaded strictly from YAML by ``panglot.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class OptimConfig:
    """AdamW (or Muon on the hidden matrices) with linear warmup then cosine decay to ``lr * min_lr_ratio``.

    ``algorithm: muon``: the 2-D weights of linear layers (attention and MLP projections) are updated by Muon
    (``optim.BatchedMuon``: torch.optim.Muon's update, batched by weight shape; momentum, then the update
    orthogonalised by Newton-Schulz iterations; its rate scaled to
    match AdamW's update size, so ``lr`` keeps its meaning); embeddings, norms, biases and the linear layers named
    by ``muon_exclude`` (the output head: Muon is for hidden layers) stay on AdamW. One schedule drives both.
    """

    algorithm: Literal["adamw", "muon"] = "adamw"
    muon_momentum: float = 0.95
    muon_lr_scale: float = 1.0  # Muon's groups run at lr * this (the schedule scales both alike)
    # module name globs; the default names the output heads of panglot's backbone and of Hugging Face models
    muon_exclude: list[str] = field(default_factory=lambda: ["output", "*.output", "lm_head", "*.lm_head"])
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # not applied to biases, norm weights or embeddings
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping

    def __post_init__(self) -> None:
        problems = []
        if self.algorithm not in ("adamw", "muon"):
            problems.append(f"algorithm must be 'adamw' or 'muon', got {self.algorithm!r}")
        if not 0 <= self.muon_momentum < 1:
            problems.append(f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.muon_lr_scale <= 0:
            problems.append(f"muon_lr_scale must be > 0, got {self.muon_lr_scale}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        _raise_if(problems)
        self.betas = tuple(self.betas)


@dataclass
class TrainConfig:
    """Everything the trainer decides; the model, loss and data are passed to ``Trainer`` directly.

    One *step* is one optimizer update over ``grad_accum`` micro-batches.
    """

    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 1000
    grad_accum: int = 1
    # bf16 = autocast around forward + loss (weights stay fp32); auto = bf16 where the device multiplies bf16
    # natively, else fp32 (panglot.nn.precision.fast_bf16: an AVX2-only CPU emulates bf16, ~30x slower)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0
    log_every: int = 10  # steps between metrics.jsonl records
    ckpt_every: int = 500  # steps between checkpoints; 0 = only at the end
    keep_last: int | None = 3  # checkpoints kept on disk; None = keep all
    freeze: list[str] = field(default_factory=list)  # glob patterns on parameter / module names
    tensorboard: bool = False
    # A wall-clock guard: stop (with a checkpoint) once this many minutes of a ``train()`` call have passed,
    # even before max_steps; the learning-rate schedule stays the one for max_steps. None = no guard.
    max_wall_minutes: float | None = None
    # Set by ``panglot.training.budget.budgeted``, not by hand: the minutes ``max_steps`` was fitted to and the
    # step cap it was fitted under. The trainer then re-fits ``max_steps`` a fifth, half and 4/5 of the way in,
    # from the steps it has timed itself (``panglot.training.budget.StepRefit``).
    budget_minutes: float | None = None
    budget_cap: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            problems.append(f"budget_minutes must be > 0 or null, got {self.budget_minutes}")
        if self.max_wall_minutes is not None and self.max_wall_minutes <= 0:
            problems.append(f"max_wall_minutes must be > 0 or null, got {self.max_wall_minutes}")
        if self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.grad_accum < 1:
            problems.append(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.precision not in ("auto", "bf16", "fp32"):
            problems.append(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        if self.log_every < 1:
            problems.append(f"log_every must be >= 1, got {self.log_every}")
        if self.ckpt_every < 0:
            problems.append(f"ckpt_every must be >= 0, got {self.ckpt_every}")
        if self.keep_last is not None and self.keep_last < 1:
            problems.append(f"keep_last must be >= 1 or null, got {self.keep_last}")
        _raise_if(problems)


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))
