"""bf16 against fp32 on this machine: raw matrix products and each recipe's training step, and what
``precision: auto`` picks (``panglot.nn.fast_bf16``).

Every recipe trains under ``precision: auto`` since 2026-12-04: bf16 autocast where the device multiplies bf16
natively (a CPU with AMX or AVX-512 BF16, a CUDA GPU with bf16), fp32 elsewhere. This benchmark shows why on the
machine it runs on: the same step in each precision, rounds interleaved (every setting once per round, rotating
order) so that load from other jobs hits all alike; medians.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/precision.py --threads 1   # from the repository root

Rows:
- ``matmul M x K @ K x N``: one product (the sizes of the recipes' layers: batch 16 x 64 patches, width 128);
- ``dual encoder step``: ``recipes/train_dual_encoder.py``'s step (batch 128, its YAML), forward + backward;
- ``pixel codec step``: ``recipes/train_codec.py``'s step (batch 16, its YAML), rendering included;
- ``backbone step``: the quickstart's backbone size (``--size``), batch 8 x 256 tokens, cross-entropy.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from panglot.backbone import build_transformer
from panglot.codecs.image_vq import PixelVQ
from panglot.config import load_config
from panglot.data.world_images import WorldImages
from panglot.encoders import DualEncoder, dual_encoder_loss
from panglot.nn import autocast_context, fast_bf16, resolve_dtype
from recipes import train_codec, train_dual_encoder

ROOT = Path(__file__).resolve().parents[1]


def matmul(m: int, k: int, n: int, dtype: torch.dtype) -> Callable[[], None]:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    return lambda: a @ b


def dual_encoder_step(precision: str) -> Callable[[], None]:
    cfg = load_config(train_dual_encoder.DualEncoderRecipe, str(ROOT / "configs/dual_encoder.yaml"))
    tokenizer = train_dual_encoder.world_tokenizer(200, 0)
    encoder = DualEncoder(copy.deepcopy(cfg.encoder), tokenizer).train()
    data = train_dual_encoder.WorldPairs(cfg.train.batch_size, 0, cfg.train.paraphrase_prob)

    def step() -> None:
        with autocast_context("cpu", precision):
            loss, _ = dual_encoder_loss(encoder, next(data))
        loss.backward()

    return step


def pixel_codec_step(precision: str) -> Callable[[], None]:
    cfg = load_config(train_codec.CodecRecipe, str(ROOT / "configs/codec_pixel_vq.yaml"))
    codec = PixelVQ(copy.deepcopy(cfg.codec)).train()
    data = WorldImages(cfg.train.batch_size, 0)

    def step() -> None:
        with autocast_context("cpu", precision):
            loss, _ = train_codec.codec_loss(cfg.train, codec, next(data))
        loss.backward()

    return step


def backbone_step(precision: str, size: str) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_transformer(size, 4096, max_seq_len=256).train()
    tokens = torch.randint(0, 4096, (8, 257))

    def step() -> None:
        with autocast_context("cpu", precision):
            logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds")
    parser.add_argument("--size", default="tiny", help="backbone size (panglot.backbone.SIZES)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    auto = resolve_dtype("auto", "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {fast_bf16('cpu')} "
          f"-> auto = {str(auto).removeprefix('torch.')}\n")  # fmt: skip

    workloads: dict[str, dict[str, Callable[[], None]]] = {}
    for m, k, n in [(1024, 128, 384), (2048, 512, 1408)]:
        workloads[f"matmul {m} x {k} @ {k} x {n}"] = {
            p: matmul(m, k, n, resolve_dtype(p)) for p in ("fp32", "bf16")
        }
    workloads["dual encoder step (batch 128)"] = {p: dual_encoder_step(p) for p in ("fp32", "bf16")}
    workloads["pixel codec step (batch 16)"] = {p: pixel_codec_step(p) for p in ("fp32", "bf16")}
    workloads[f"backbone {args.size} step (8 x 256)"] = {p: backbone_step(p, args.size) for p in ("fp32", "bf16")}

    print("| workload | fp32 ms | bf16 ms | bf16 / fp32 | auto picks |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, settings in workloads.items():
        times: dict[str, list[float]] = {p: [] for p in settings}
        for fn in settings.values():  # warm-up: kernel selection, first allocations
            fn()
        order = list(settings)
        for r in range(args.rounds):
            for p in order[r % 2 :] + order[: r % 2]:
                start = time.perf_counter()
                settings[p]()
                times[p].append(time.perf_counter() - start)
        fp32, bf16 = (statistics.median(times[p]) * 1000 for p in ("fp32", "bf16"))
        pick = "bf16" if auto == torch.bfloat16 else "fp32"
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f}x | {pick} |", flush=True)


if __name__ == "__main__":
    main()
