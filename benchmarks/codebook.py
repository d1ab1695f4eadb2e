"""The learned codebook's training step: ``vector-quantize-pytorch``'s own against ``IndexedCodebook``'s.

One ``VectorQuantize`` as the codecs build it (cosine similarity, k-means init, EMA, dead-code expiry, commitment
loss; ``panglot.codecs.indexed_vq.cosine_ema_vq``) and a copy whose codebook steps by index; forward + backward of
the same batch in training mode (so every step also updates the EMA statistics), rounds interleaved (both once a
round, alternating order); medians.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/codebook.py --threads 2

Default sizes: the layout Q-Former's (8192 codes looked up in 32 dimensions, batch 16 x 32 queries of width 128).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from vector_quantize_pytorch import VectorQuantize

from panglot.codecs.indexed_vq import index_codebook_updates


def step(vq: VectorQuantize, z: torch.Tensor) -> float:
    start = time.perf_counter()
    x = z.clone().requires_grad_(True)
    codes, _, loss = vq(x)
    (codes.square().mean() + loss).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--codes", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32, help="vectors per item (the Q-Former's queries)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--codebook-dim", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"{torch.backends.cpu.get_cpu_capability()}; batch {args.batch} x {args.tokens} vectors of {args.dim}\n")  # fmt: skip
    print("| codes | library ms | indexed ms | speed-up |")
    print("| ---: | ---: | ---: | ---: |")
    for codes in args.codes:
        torch.manual_seed(0)
        library = VectorQuantize(
            dim=args.dim, codebook_size=codes, codebook_dim=args.codebook_dim, use_cosine_sim=True, kmeans_init=True,
            decay=0.95, threshold_ema_dead_code=1.0, commitment_weight=0.25,
        ).train()  # fmt: skip
        indexed = index_codebook_updates(copy.deepcopy(library))
        z = torch.randn(args.batch, args.tokens, args.dim)
        times: dict[str, list[float]] = {"library": [], "indexed": []}
        arms = {"library": library, "indexed": indexed}
        for vq in arms.values():  # k-means init and first allocations
            step(vq, z)
        for r in range(args.rounds):
            for name in (("library", "indexed") if r % 2 == 0 else ("indexed", "library")):
                times[name].append(step(arms[name], z))
        lib, ind = (statistics.median(times[n]) * 1000 for n in ("library", "indexed"))
        print(f"| {codes} | {lib:.1f} | {ind:.1f} | {lib / ind:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
