"""The trainer every stage uses: optimizer and schedule, precision, freezing, checkpoints, exact resume.

``Trainer(cfg, model, loss_fn, data, out_dir).train(resume=True)`` with ``loss_fn(model, batch) ->
(loss, metrics)`` and ``data`` a stateful iterator (``state_dict()/load_state_dict()``, e.g.
``panglot.data.loader.StatefulLoader``).
"""

from panglot.training.checkpoint import (
    CHECKPOINT_KIND,
    FORMAT_VERSION,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from panglot.training.config import OptimConfig, TrainConfig
from panglot.training.freeze import FreezeReport, freeze
from panglot.training.metrics_log import METRICS_FILE
from panglot.training.optim import build_optimizer, clip_gradients, lr_at, param_groups
from panglot.training.rng import capture_rng_state, restore_rng_state, seed_everything
from panglot.training.trainer import Callback, LossFn, StatefulData, Trainer, TrainSummary, every

__all__ = [
    "CHECKPOINT_KIND",
    "FORMAT_VERSION",
    "METRICS_FILE",
    "Callback",
    "CheckpointError",
    "FreezeReport",
    "LossFn",
    "OptimConfig",
    "StatefulData",
    "TrainConfig",
    "TrainSummary",
    "Trainer",
    "build_optimizer",
    "capture_rng_state",
    "clip_gradients",
    "every",
    "freeze",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_at",
    "param_groups",
    "read_state",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
]
