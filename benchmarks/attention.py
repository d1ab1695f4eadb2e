"""Attention on CPU at panglot's short lengths: SDPA against explicit matrix products (``panglot.nn.attention``).

Part 1 times one attention call (bf16, forward + backward, or forward alone where panglot only ever runs forward) at
the shapes the recipes use, both paths forced. Part 2 times the Q-Former codec's stage-1 training step (the recipe's
configs/codec_qformer.yaml with the pixel codes, the raster prior and the grid term, random weights: time does not
depend on them) with ``attend`` choosing as shipped against SDPA everywhere. Rounds interleave the arms; medians.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/attention.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

import panglot.nn.attention as attention_module
from panglot.codecs.image_vq import PixelVQ
from panglot.config import load_config
from panglot.data.world_captions import WorldCaptionedImages
from panglot.encoders import DualEncoder
from panglot.nn import attend
from panglot.nn.precision import autocast_context
from recipes import train_codec, train_dual_encoder, train_qformer_codec

# name, (N, H, H_kv, T, S, Dh), mask ("causal", "bias", "keys" or None), backward
SHAPES = [
    ("packed document blocks (unified training)", (96, 4, 2, 104, 104, 64), "causal", True),
    ("Q-Former self-attention (32 causal queries)", (64, 4, 4, 32, 32, 32), "causal", True),
    ("Q-Former cross-attention (32 over 128, prior)", (64, 4, 4, 32, 128, 32), "bias", True),
    ("grid reader (64 cells over 32 codes, prior)", (64, 2, 2, 64, 32, 64), "bias", True),
    ("frozen image tower (65 patches, forward)", (64, 4, 4, 65, 65, 32), "keys", False),
    ("decode step (1 query over 200 slots, forward)", (32, 4, 2, 1, 200, 64), "keys", False),
]


def timed(rounds: int, reps: int, arms: dict[str, Callable[[], None]]) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name in list(arms)[r % len(arms) :] + list(arms)[: r % len(arms)]:  # rotating order
            arms[name]()
            start = time.perf_counter()
            for _ in range(reps):
                arms[name]()
            times[name].append((time.perf_counter() - start) / reps)
    return {name: statistics.median(values) for name, values in times.items()}


def call(shape: tuple[int, ...], mask_kind: str | None, backward: bool, explicit: bool) -> Callable[[], None]:
    n, h, h_kv, t, s, d = shape
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(n, h, t, d, generator=gen).bfloat16().requires_grad_(backward)
    k, v = (torch.randn(n, h_kv, s, d, generator=gen).bfloat16().requires_grad_(backward) for _ in range(2))
    mask = {
        "bias": torch.randn(t, s, generator=gen).bfloat16(),
        "keys": torch.ones(n, 1, 1, s, dtype=torch.bool),
    }.get(mask_kind)

    def run() -> None:
        with torch.set_grad_enabled(backward):
            out = attend(q, k, v, mask, is_causal=mask_kind == "causal", explicit=explicit)
            if backward:
                out.float().sum().backward()

    return run


def qformer_step(threads_note: str, rounds: int) -> None:
    torch.manual_seed(0)
    dual_cfg = load_config(train_dual_encoder.DualEncoderRecipe, "configs/dual_encoder.yaml", [])
    teacher = DualEncoder(dual_cfg.encoder, train_dual_encoder.world_tokenizer(dual_cfg.tokenizer_examples, 0)).requires_grad_(False)
    pixel = PixelVQ(load_config(train_codec.CodecRecipe, "configs/codec_pixel_vq.yaml", []).codec)
    cfg = load_config(
        train_qformer_codec.QFormerRecipe,
        "configs/codec_qformer.yaml",
        ["codec.qformer.features=teacher+pixel", "codec.qformer.locality=8.0",
         "codec.detokenizer.condition=embedding+grid", "loss.grid_weight=1.0", "loss.grid_loss=ce"],
    )  # fmt: skip
    codec = train_qformer_codec.build_codec(cfg, teacher, pixel).train()
    batch = next(WorldCaptionedImages(cfg.qformer_train.batch_size, 0))
    loss_fn = partial(train_qformer_codec.stage1_loss, cfg.loss, teacher)

    def step(max_length: int) -> None:
        attention_module.MATMUL_ATTENTION_MAX_LENGTH = max_length
        with autocast_context("cpu", "bf16"):
            loss, _ = loss_fn(codec, batch)
        loss.backward()

    shipped = attention_module.MATMUL_ATTENTION_MAX_LENGTH
    arms = {"SDPA everywhere": partial(step, 0), "as shipped (explicit when training)": partial(step, shipped)}
    times = timed(rounds, 2, arms)
    attention_module.MATMUL_ATTENTION_MAX_LENGTH = shipped
    print(f"\nQ-Former stage-1 step (forward + backward, batch {cfg.qformer_train.batch_size}, {threads_note}):\n")
    print("| arm | s/step | vs SDPA |")
    print("|---|---:|---:|")
    base = times["SDPA everywhere"]
    for name, value in times.items():
        print(f"| {name} | {value:.3f} | {base / value:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5, help="calls per arm and round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    note = f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.rounds} rounds"
    print(f"# {note}\n")
    print("| call | shape (N, H, H_kv, T, S, Dh) | SDPA ms | explicit ms | SDPA / explicit |")
    print("|---|---|---:|---:|---:|")
    for name, shape, mask_kind, backward in SHAPES:
        arms = {
            "sdpa": call(shape, mask_kind, backward, explicit=False),
            "explicit": call(shape, mask_kind, backward, explicit=True),
        }
        t = timed(args.rounds, args.reps, arms)
        print(f"| {name} | {shape} | {1e3 * t['sdpa']:.2f} | {1e3 * t['explicit']:.2f} | {t['sdpa'] / t['explicit']:.2f}x |")
    qformer_step(note, args.rounds)


if __name__ == "__main__":
    main()
