"""One optimizer step over the tiny backbone's weights: torch's Muon against ``BatchedMuon``, with fused AdamW.

Random gradients on every parameter of ``tiny`` (vocabulary 2400); the Muon arms update its 28 hidden linear
weights (what ``muon_names`` picks), the AdamW arm every parameter. Rounds interleave the arms; medians.

    .venv/bin/python benchmarks/optimizer_step.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from panglot.backbone.sizes import transformer_config
from panglot.backbone.transformer import Transformer
from panglot.training.config import OptimConfig
from panglot.training.optim import BatchedMuon, build_optimizer, muon_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps per arm and round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(transformer_config("tiny", 2400))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    names = muon_names(model, OptimConfig().muon_exclude)
    matrices = [p for n, p in model.named_parameters() if n in names]
    arms = {
        "torch.optim.Muon (one matrix at a time)": torch.optim.Muon(matrices, adjust_lr_fn="match_rms_adamw"),
        "BatchedMuon (stacked by shape)": BatchedMuon(matrices, adjust_lr_fn="match_rms_adamw"),
        "fused AdamW (every parameter)": build_optimizer(model, OptimConfig()),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, optimizer in arms.items():
            optimizer.step()  # state exists and caches are warm before timing
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {len(matrices)} hidden matrices, medians of {args.rounds} rounds")
    print("| optimizer | ms/step |")
    print("|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {1e3 * statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
