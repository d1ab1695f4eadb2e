"""The trainer every stage uses (codec training, LM pretraining, SFT): generic over model, loss and data."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from panglot.nn.precision import autocast_context, resolve_dtype, warn_if_slow_bf16
from panglot.training import distributed
from panglot.training.budget import Deadline, StepRefit, recorded_refits
from panglot.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
    step_dir_name,
)
from panglot.training.config import TrainConfig
from panglot.training.freeze import FreezeReport, freeze
from panglot.training.metrics_log import MetricsLog, truncate_after
from panglot.training.optim import build_optimizer, clip_gradients, lr_at, set_lr
from panglot.training.rng import capture_rng_state, restore_rng_state, seed_everything

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
"""``loss_fn(model, batch) -> (scalar loss, metrics)``; a ``"tokens"`` metric is summed, not averaged,
and gives ``tokens_per_s``. The loss function moves the batch to the model's device."""


class StatefulData(Iterator, Protocol):
    """An iterator of batches whose position can be saved (JSON-serialisable) and restored."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


Callback = Callable[["Trainer", dict[str, float]], "dict[str, float] | None"]
"""Called after every optimizer step with that step's metrics (``trainer.step`` is the step count).
Metrics it returns (e.g. an eval loss) are written to the metrics log at that step."""


def every(n: int, fn: Callback) -> Callback:
    """A callback that runs ``fn`` on steps ``n, 2n, ...`` only."""

    def callback(trainer: Trainer, metrics: dict[str, float]) -> dict[str, float] | None:
        return fn(trainer, metrics) if trainer.step % n == 0 else None

    return callback


@dataclass(frozen=True)
class TrainSummary:
    steps: int  # optimizer steps done in total (including those before a resume)
    resumed_from: int | None  # step of the checkpoint resumed from
    final_loss: float | None  # loss of the last step (None when no step ran)
    elapsed_s: float
    tokens: float  # summed "tokens" metric of this run
    trainable_params: int
    frozen_params: int
    checkpoint: Path | None  # last checkpoint written
    data_exhausted: bool  # the data iterator ended before max_steps
    out_of_time: bool = False  # cfg.max_wall_minutes passed before max_steps


class Trainer:
    """AdamW + warmup/cosine, bf16 autocast, grad accumulation and clipping, freezing, atomic checkpoints
    and exact resume.

    The caller seeds and builds the model (on its device) and the data; the trainer freezes the parameters
    named by ``cfg.freeze``, builds the optimizer over the rest, and owns the loop.

    Data parallel inside a process group (`panglot.training.distributed.launch`): every process builds the same
    model and its own shard of the data; the trainer starts them from rank 0's weights, averages the gradients
    (and the logged loss and token count) after each backward pass, so every process takes the same update, and
    lets rank 0 alone decide the steps (budget re-fits, the wall-clock guard), log, run the callbacks and write
    checkpoints, which hold every process's data position and RNG state: a resumed group trains exactly as the
    uninterrupted one, and must have as many processes. Other metrics than loss and tokens are rank 0's own.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        loss_fn: LossFn,
        data: StatefulData,
        out_dir: str | Path,
        callbacks: Sequence[Callback] = (),
        deadline: Deadline | None = None,  # a budgeted run's re-fits also end training in time for it (StepRefit)
    ):
        self.cfg = cfg
        self.deadline = deadline
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks)
        self.device = _device_of(model)
        self.freeze_report: FreezeReport = freeze(model, cfg.freeze)
        self.optimizer = build_optimizer(model, cfg.optim)
        self.step = 0
        self.main = distributed.is_main()
        self.resized: list[tuple[int, int]] = []  # (update, max_steps before) of each of a budget's re-fits, for lr_at
        self._trainable = [p for p in model.parameters() if p.requires_grad]

    def train(self, resume: bool = False) -> TrainSummary:
        """Train up to ``cfg.max_steps``; with ``resume``, continue from ``out_dir``'s latest checkpoint
        (starting fresh when there is none)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.main:
            remove_stale_temporaries(self.out_dir)
        budgeted = self.cfg.budget_minutes is not None  # max_steps is re-fitted as the run goes (StepRefit)
        if budgeted and (recorded := recorded_refits(self.out_dir)):  # before _resume compares configs
            self.cfg = dataclasses.replace(self.cfg, max_steps=recorded[-1][0])
            self.resized = [(at, fitted) for _, at, fitted in recorded]
        resumed_from = self._resume() if resume else None
        distributed.barrier()  # every process has read the files rank 0 is about to write
        refit = None
        if budgeted and self.main:
            refit = StepRefit(self.out_dir, self.cfg, resumed_from or 0, deadline=self.deadline)
        if resumed_from is None:
            seed_everything(self.cfg.seed + 1000 * distributed.rank())  # rank 0: as a single process
            distributed.broadcast_module(self.model)
        report = self.freeze_report
        warn_if_slow_bf16(self.cfg.precision, self.device)
        logger.info(
            "training %d trainable params (%d tensors), %d frozen (%d tensors), from step %d to %d, precision %s (%s)",
            report.trainable_params, report.trainable_tensors, report.frozen_params, report.frozen_tensors,
            self.step, self.cfg.max_steps, self.cfg.precision,
            str(resolve_dtype(self.cfg.precision, self.device)).removeprefix("torch."),
        )  # fmt: skip
        start = time.perf_counter()
        log = MetricsLog(self.out_dir, tensorboard=self.cfg.tensorboard) if self.main else None
        window = _Window()
        last_loss, tokens, saved_at, exhausted, out_of_time = None, 0.0, self.step, False, False
        deadline = None if self.cfg.max_wall_minutes is None else start + 60 * self.cfg.max_wall_minutes
        quiet = not self.main or not sys.stderr.isatty()
        bar = tqdm(total=self.cfg.max_steps, initial=self.step, disable=quiet, unit="step")
        try:
            while self.step < self.cfg.max_steps:
                try:
                    metrics = self._train_step()
                except StopIteration:
                    exhausted = True
                    logger.warning("data ran out at step %d of %d", self.step, self.cfg.max_steps)
                    break
                self.step += 1
                bar.update(1)
                steps = refit.after_step(self.step, self.cfg.max_steps) if refit is not None else None
                late = deadline is not None and self.step < self.cfg.max_steps and time.perf_counter() > deadline
                if distributed.world_size() > 1:  # rank 0 decides for all
                    steps, late = distributed.from_main([-1 if steps is None else steps, int(late)])
                    steps = None if steps < 0 else steps
                if steps is not None:
                    self.resized.append((self.step, self.cfg.max_steps))
                    self.cfg = dataclasses.replace(self.cfg, max_steps=steps)
                    bar.total = steps
                last_loss, tokens = metrics["loss"], tokens + metrics.get("tokens", 0.0)
                window.add(metrics)
                if log is not None and self.step % self.cfg.log_every == 0:
                    self._write_record(log, window.flush(), bar)
                for callback in self.callbacks if self.main else ():
                    if extra := callback(self, metrics):
                        log.write(self.step, extra)
                if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                if late:
                    out_of_time = True
                    logger.warning(
                        "stopping at step %d of %d: the %.1f-minute wall-clock guard (max_wall_minutes) has passed",
                        self.step, self.cfg.max_steps, self.cfg.max_wall_minutes,
                    )  # fmt: skip
                    break
            if log is not None and window.steps:  # the last, partial logging window
                self._write_record(log, window.flush(), bar)
            if self.step != saved_at:
                self.save_checkpoint()
            distributed.barrier()  # the last checkpoint is written before any process goes on
        finally:
            bar.close()
            if log is not None:
                log.close()
        return TrainSummary(
            steps=self.step,
            resumed_from=resumed_from,
            final_loss=last_loss,
            elapsed_s=time.perf_counter() - start,
            tokens=tokens,
            trainable_params=report.trainable_params,
            frozen_params=report.frozen_params,
            checkpoint=latest_checkpoint(self.out_dir),
            data_exhausted=exhausted,
            out_of_time=out_of_time,
        )

    def _write_record(self, log: MetricsLog, record: dict[str, float], bar: tqdm) -> None:
        log.write(self.step, record)
        bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}")

    def _train_step(self) -> dict[str, float]:
        """One optimizer update over ``grad_accum`` micro-batches; returns its metrics."""
        cfg = self.cfg
        self.model.train()
        lr = lr_at(self.step, cfg.optim, cfg.max_steps, self.resized)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        sums: dict[str, float] = defaultdict(float)
        for _ in range(cfg.grad_accum):
            batch = next(self.data)
            with autocast_context(self.device, self.cfg.precision):
                loss, metrics = self.loss_fn(self.model, batch)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float()
            for name, value in metrics.items():
                sums[name] += float(value)
        if distributed.world_size() > 1:  # every process takes the group's mean gradient
            extra = [loss_sum.item(), sums.get("tokens", 0.0)]
            loss_mean, tokens = distributed.average_gradients(self._trainable, extra)
            loss_sum = torch.tensor(loss_mean)
            if "tokens" in sums:
                sums["tokens"] = tokens * distributed.world_size()  # the group's tokens: summed, not averaged
        grad_norm = clip_gradients(self._trainable, cfg.optim.grad_clip)
        loss_value = loss_sum.item() / cfg.grad_accum
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {self.step + 1}")
        self.optimizer.step()
        means = {name: value if name == "tokens" else value / cfg.grad_accum for name, value in sums.items()}
        return {"loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), **means}

    def save_checkpoint(self) -> Path:
        """Checkpoint the current step (weights, optimizer, data position, RNG) and prune old ones. In a process
        group every process calls it; rank 0 writes every process's data position and RNG state (``ranks``)."""
        own = {"data": self.data.state_dict(), "rng": capture_rng_state()}
        state = {"config": asdict(self.cfg), **own}
        if distributed.world_size() > 1:
            state["ranks"] = distributed.gather(own)
        path = self.out_dir / step_dir_name(self.step)
        if self.main:
            path = save_checkpoint(self.out_dir, self.step, self.model, self.optimizer, state)
            if self.cfg.keep_last is not None:
                prune_checkpoints(self.out_dir, self.cfg.keep_last)
        return path

    def _resume(self) -> int | None:
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            logger.info("no checkpoint in %s; starting at step 0 with the model's current weights", self.out_dir)
            return None
        state = load_checkpoint(ckpt, self.model, self.optimizer)
        ranks = state.get("ranks", [{"data": state["data"], "rng": state["rng"]}])
        if len(ranks) != distributed.world_size():
            raise ValueError(
                f"{ckpt} was written by {len(ranks)} training process(es), this run has {distributed.world_size()}: "
                "resume with as many (the data shards and RNG states are per process)"
            )
        own = ranks[distributed.rank()]
        self.data.load_state_dict(own["data"])
        restore_rng_state(own["rng"])
        self.step = state["step"]
        _warn_config_changes(state["config"], asdict(self.cfg), ckpt)
        if self.main:
            truncate_after(self.out_dir, self.step)
        logger.info("resumed from %s (step %d)", ckpt, self.step)
        return self.step


class _Window:
    """Metrics of the steps since the last record: means, except the current lr and the token rate."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._start = time.perf_counter()
        self._lr = 0.0

    def add(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._sums[name] += value
        self.steps += 1
        self._lr = metrics["lr"]

    def flush(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._start
        record = {name: value / self.steps for name, value in self._sums.items() if name != "tokens"}
        record["lr"] = self._lr
        record["step_time_s"] = elapsed / self.steps
        if "tokens" in self._sums:  # summed: the tokens trained on since the previous record
            record["tokens"] = self._sums["tokens"]
            record["tokens_per_s"] = self._sums["tokens"] / elapsed
        self._reset()
        return record


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError(f"{type(model).__name__} has no parameters to train")
    return param.device


def _warn_config_changes(saved: dict, current: dict, ckpt: Path) -> None:
    saved_flat, current_flat = _flatten(saved), _flatten(json.loads(json.dumps(current)))
    changed = [
        f"{key}: {saved_flat.get(key)!r} -> {current_flat.get(key)!r}"
        for key in sorted(saved_flat.keys() | current_flat.keys())
        if saved_flat.get(key) != current_flat.get(key)
    ]
    if changed:
        logger.warning("resuming from %s with a changed config: %s", ckpt, "; ".join(changed))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
