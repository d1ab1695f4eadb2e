"""The unified recipe's whole training step (forward, loss, backward, optimizer), before and after a change.

Builds the quickstart's model and packed batches exactly as ``recipes/train_unified.py`` does (its YAML, a
trained codec, compiled blocks) and times full steps of each arm over the same batches, rounds interleaved
(every arm once per round, rotating order) so that load from other jobs hits all arms alike.

Arms (each names what differs from the shipped code, which is the last):
- ``before``: the step before 2026-12-02: packed rows attend through one block-diagonal (B, 1, T, T)
  mask (``document_layout``, SDPA's CPU flash kernel), the loss projects every position to logits
  (reproduced here by ``full_logits_loss``) and AdamW runs torch's CPU default, a loop over tensors.
- ``+ counted logits``: the shipped loss (logits only where a target counts).
- ``+ document blocks``: and one causal attention block per document (``document_blocks``).
- ``+ fused AdamW``: ``build_optimizer``'s fused kernel.
- ``+ one-hot factor rows``: ``FactoredRows`` (``model.code_factors``) adds its shared rows as one matmul against a
  one-hot membership matrix; the arms before index each factor's table (``gathered_rows``), whose backward
  scatter-adds.
- ``+ logit rows in multiples of 64``: the counted positions are padded to a multiple of 64 rows
  before the output projection (``counted_rows``); the arms before project exactly the counted ones
  (``exact_counted_loss``), a count that changes from batch to batch, and the CPU's bf16 matrix products build
  a kernel for each new shape. Only fresh batches show that (with the same batches in every round, every shape
  has been met in the warm-up), and only between two arms: the kernels are cached for the whole process, so
  four arms with exact counts meet each other's shapes. ``--fresh --arms 4,5`` times the last two alone.
- ``+ Muon on the hidden matrices``: the shipped step (``optim.algorithm: muon`` in the recipe since 2026-12-02
  evening): ``BatchedMuon`` on the hidden linear weights, AdamW on the rest (``build_optimizer``); the arms before
  run AdamW on every weight (the optimizer of the recipe before).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_step.py --threads 1 [--codec-dir DIR] [--fresh]

``--fresh``: every arm draws its own new batches in every round, as training does (new document mixes, new
counts of counted positions); without it every arm steps over the same batches in every round.

``--codec-dir`` defaults to the pixel codec a ``make quickstart`` trains (runs/quickstart/stages/pixel_vq).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import panglot.backbone.transformer as transformer_module
from panglot.config import load_config
from panglot.model import UnifiedModel
from panglot.nn import autocast_context
from panglot.nn.attention import document_blocks, document_layout
from panglot.nn.factored_rows import FactoredRows
from panglot.training.optim import build_optimizer, param_groups
from recipes.train_unified import UnifiedRecipe, build


def full_logits_loss(model: UnifiedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The packed loss as it was: logits and an fp32 log-softmax at every position, weights applied after."""
    tokens, weights, doc = batch["tokens"], batch["weights"], batch["doc"]
    logits = model.backbone(tokens[:, :-1], document_ids=doc[:, :-1])
    w = weights[:, 1:].float() * (doc[:, 1:] == doc[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")
    return (nll * w).sum() / w.sum().clamp_min(1.0)


def gathered_rows(self: FactoredRows) -> torch.Tensor:
    """``FactoredRows.shared`` as it was: each table indexed by its factor's values, summed."""
    out, column = 0, 0
    for table in self.tables:
        values = self.membership[:, column : column + table.shape[0]].argmax(1)
        column += table.shape[0]
        out = out + table[values]
    return out


SHARED_ROWS = {"gathers": gathered_rows, "one-hot": FactoredRows.shared}


def exact_counted_loss(model: UnifiedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss with logits at exactly the counted positions, as it was before ``counted_rows`` padded them."""
    tokens, weights, doc = batch["tokens"], batch["weights"], batch["doc"]
    hidden = model.backbone.forward_hidden(tokens[:, :-1], document_ids=doc[:, :-1])
    w = weights[:, 1:].float() * (doc[:, 1:] == doc[:, :-1])
    counted = w > 0
    nll = F.cross_entropy(model.backbone.logits(hidden[counted]).float(), tokens[:, 1:][counted], reduction="none")
    return (nll * w[counted]).sum() / w.sum().clamp_min(1.0)


def shipped_loss(model: UnifiedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.loss(batch)[0]


@dataclass
class Arm:
    name: str
    layout: Callable  # what the backbone regroups packed rows with
    loss: Callable[[UnifiedModel, dict[str, torch.Tensor]], torch.Tensor]
    optimizer: str  # "fused": the shipped AdamW (build_optimizer); "loop": torch's per-tensor loop; "muon"
    rows: str = "gathers"  # how FactoredRows adds its shared rows (SHARED_ROWS)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # document tokens stepped over, per round


ARMS = [
    Arm("before: mask, all logits, AdamW loop", document_layout, full_logits_loss, "loop"),
    Arm("+ counted logits", document_layout, exact_counted_loss, "loop"),
    Arm("+ document blocks", document_blocks, exact_counted_loss, "loop"),
    Arm("+ fused AdamW", document_blocks, exact_counted_loss, "fused"),
    Arm("+ one-hot factor rows", document_blocks, exact_counted_loss, "fused", "one-hot"),
    Arm("+ logit rows in multiples of 64", document_blocks, shipped_loss, "fused", "one-hot"),
    Arm("+ Muon on the hidden matrices (now)", document_blocks, shipped_loss, "muon", "one-hot"),
]


def run_arm(model: UnifiedModel, optimizers: dict[str, torch.optim.Optimizer], arm: Arm, batches: list[dict]) -> None:
    transformer_module.document_blocks = arm.layout  # the name forward_hidden calls for packed rows
    FactoredRows.shared = SHARED_ROWS[arm.rows]
    optimizer = optimizers[arm.optimizer]
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        with autocast_context(model.device, "bf16"):
            loss = arm.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    arm.wall.append(time.perf_counter() - wall)
    arm.cpu.append(time.process_time() - cpu)
    arm.tokens.append(sum(int((b["task"] >= 0).sum()) for b in batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/unified_quickstart.yaml")
    parser.add_argument("--codec-dir", default="runs/quickstart/stages/pixel_vq")
    parser.add_argument("--steps", type=int, default=8, help="batches per arm and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="new batches for every arm and round, as in training")
    parser.add_argument("--arms", default=None, help="comma-separated indices into the arms (default: all)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(UnifiedRecipe, args.config, [f"out_dir={out}", f"codec_dir={args.codec_dir}"])
        model, loader = build(cfg)
    model.train()
    if cfg.compile:
        model.backbone.compile_layers()
    optim = cfg.train.optim
    optimizers = {
        "fused": build_optimizer(model, dataclasses.replace(optim, algorithm="adamw")),
        "loop": torch.optim.AdamW(
            param_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas, eps=optim.eps, foreach=False
        ),
        "muon": build_optimizer(model, dataclasses.replace(optim, algorithm="muon")),
    }
    batches = [next(loader) for _ in range(args.steps)]
    real = sum(int((b["task"] >= 0).sum()) for b in batches)
    shape = tuple(batches[0]["tokens"].shape)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.config}: size "
        f"{cfg.model.size}, compiled {cfg.compile}, bf16, {args.threads} thread(s), {args.steps} packed batches of "
        f"{shape[0]} x {shape[1]} ({real} document tokens){', fresh batches per arm and round' if args.fresh else ''}"
    )
    arms = ARMS if args.arms is None else [ARMS[int(i)] for i in args.arms.split(",")]
    for arm in arms:  # warm-up: compiles every shape the batches bring
        run_arm(model, optimizers, arm, batches)
        arm.wall, arm.cpu, arm.tokens = [], [], []
    for r in range(args.rounds):
        for k in range(len(arms)):
            arm = arms[(r + k) % len(arms)]
            run_arm(model, optimizers, arm, [next(loader) for _ in range(args.steps)] if args.fresh else batches)
    transformer_module.document_blocks = document_blocks
    FactoredRows.shared = SHARED_ROWS["one-hot"]
    base_wall, base_cpu = statistics.median(arms[0].wall), statistics.median(arms[0].cpu)
    print(f"\nmedians over {args.rounds} rounds")
    print("| arm | wall s/step | CPU s/step | document tokens/s | vs the first arm (wall / CPU) |")
    print("|---|---:|---:|---:|---:|")
    for arm in arms:
        wall, cpu = statistics.median(arm.wall), statistics.median(arm.cpu)
        print(
            f"| {arm.name} | {wall / args.steps:.3f} | {cpu / args.steps:.3f} | {sum(arm.tokens) / sum(arm.wall):.0f} | "
            f"{base_wall / wall:.2f}x / {base_cpu / cpu:.2f}x |"
        )


if __name__ == "__main__":
    main()
