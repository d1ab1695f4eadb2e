"""Sequence packing vs right padding: training throughput of the unified model on the same documents.

The same ShapesWorld mixture documents (``WorldMixture``: t2i / caption / VQA) go through the same model
(``UnifiedModel.loss`` + backward, bf16 autocast) once as right-padded batches of ``--batch`` documents
(``collate``) and once per ``--pack`` setting as packed rows (``DocumentPacker``, block-diagonal causal
attention). Rounds are interleaved (every arm once per round, rotating order) so that load from other
processes hits all arms alike. tokens/s counts only real document tokens (never padding or a row's
tail) per second; the padding share is the share of token slots the batches spent on padding.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/packing.py --threads 1 2
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/packing.py --threads 1 --pack 11x256 --compile

``--compile`` adds, for every packed setting, the same rows through a copy of the model whose blocks are
compiled (``Transformer.compile_layers``; its compilation happens in the untimed warm-up).

Image codes are random ids (throughput does not depend on their values); ``--image-tokens`` sets the
codec length (64 = the pixel VQ codec).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from panglot.backbone import build_transformer
from panglot.codecs.text import train_world_tokenizer
from panglot.data.mixture import MixtureConfig, WorldMixture, world_texts
from panglot.data.packing import DocumentPacker
from panglot.model import UnifiedModel, collate
from panglot.multimodal import UnifiedVocab
from panglot.nn import autocast_context
from panglot.world.dataset import split_scenes


@dataclass
class Arm:
    name: str
    batches: list[dict[str, torch.Tensor]]
    real: int  # document tokens in the batches
    compiled: bool = False  # through the model with compiled blocks
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def slots(self) -> int:
        return sum(b["tokens"].numel() for b in self.batches)


def build(args: argparse.Namespace) -> tuple[UnifiedModel, WorldMixture]:
    tokenizer = train_world_tokenizer(world_texts("train", 1000, 0))
    codec = SimpleNamespace(vocab_size=240, tokens_per_item=args.image_tokens)
    vocab = UnifiedVocab.build(tokenizer, [("image", codec, "<boi>", "<eoi>")])
    torch.manual_seed(0)
    model = UnifiedModel(build_transformer(args.size, vocab.size), vocab, nn.Module())
    scenes = split_scenes("train", args.docs, 0)
    codes = torch.randint(0, codec.vocab_size, (len(scenes), codec.tokens_per_item))
    return model, WorldMixture(
        MixtureConfig(n_scenes=len(scenes)), model.layout, tokenizer, scenes, codes, docs_per_scene=1
    )


def arms(args: argparse.Namespace, dataset: WorldMixture, pad_id: int) -> list[Arm]:
    """Padded batches and packed rows over the same documents, in the same order. Only full batches
    count: the last, part-filled batch of a finite document list says nothing about steady training."""
    docs = [dataset[i] for i in range(len(dataset))]
    padded = [
        collate(docs[i : i + args.batch], pad_id) for i in range(0, len(docs) - args.batch + 1, args.batch)
    ]
    out = [Arm(f"padded {args.batch} docs", padded, sum(int((b["tokens"] != pad_id).sum()) for b in padded))]
    for setting in args.pack:
        rows, pack_len = (int(x) for x in setting.split("x"))
        packer = DocumentPacker(
            docs, pack_len, rows, pad_id=pad_id, shuffle=False, epochs=1, lookahead=args.lookahead
        )
        packed = list(packer)[:-1]
        real = sum(int((b["task"] >= 0).sum()) for b in packed)
        out.append(Arm(f"packed {rows} x {pack_len}", packed, real))
        if args.compile:
            out.append(Arm(f"packed {rows} x {pack_len}, compiled", packed, real, compiled=True))
    return out


def run_arm(model: UnifiedModel, arm: Arm) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in arm.batches:
        with autocast_context(model.device, "bf16"):
            loss, _ = model.loss(batch)
        loss.backward()
    arm.wall.append(time.perf_counter() - wall)
    arm.cpu.append(time.process_time() - cpu)
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--docs", type=int, default=192, help="documents (one per scene)")
    parser.add_argument("--batch", type=int, default=32, help="documents per padded batch")
    parser.add_argument("--pack", nargs="+", default=["11x256", "6x512", "3x1024"], help="ROWSxPACK_LEN")
    parser.add_argument("--lookahead", type=int, default=8)
    parser.add_argument("--image-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--compile", action="store_true", help="also every packed arm with compiled blocks")
    args = parser.parse_args()

    model, dataset = build(args)
    model.train()
    compiled = copy.deepcopy(model)
    if args.compile:
        compiled.backbone.compile_layers()
    setups = arms(args, dataset, model.vocab.special("<pad>"))
    lengths = [len(dataset[i]) for i in range(len(dataset))]
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, size {args.size}, bf16, "
        f"{len(lengths)} documents of {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.1f})"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        for arm in setups:
            arm.wall, arm.cpu = [], []
        for arm in setups:  # warm-up (and the compilation)
            run_arm(compiled if arm.compiled else model, arm)
            arm.wall, arm.cpu = [], []
        for r in range(args.rounds):
            for k in range(len(setups)):
                arm = setups[(r + k) % len(setups)]
                run_arm(compiled if arm.compiled else model, arm)
        base = setups[0].real / statistics.median(setups[0].wall)
        base_cpu = setups[0].real / statistics.median(setups[0].cpu)
        print(f"\nthreads {threads}, medians over {args.rounds} rounds")
        print(
            "| arm | batches | real tokens | padding share | wall s | CPU s | real tokens/s | vs padded (wall / CPU) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for arm in setups:
            wall, cpu = statistics.median(arm.wall), statistics.median(arm.cpu)
            speed, speed_cpu = arm.real / wall, arm.real / cpu
            print(
                f"| {arm.name} | {len(arm.batches)} | {arm.real} | {1 - arm.real / arm.slots:.1%} | {wall:.2f} | "
                f"{cpu:.2f} | {speed:.0f} | {speed / base:.2f}x / {speed_cpu / base_cpu:.2f}x |"
            )


if __name__ == "__main__":
    main()
