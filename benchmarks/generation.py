"""Text-to-image decoding throughput: panglot's `generate` vs transformers' `LlamaForCausalLM.generate`.

Both decode the same 64 image codes per prompt from the same weights (a random-init backbone over the real
world tokenizer + the shipped pixel codec's 1920-id image block), with classifier-free guidance,
multinomial sampling over image codes only, and a KV cache:

- panglot: `panglot.generation.generate` as `Panglot.draw` calls it: on the backbone's decoding copy
  (`Transformer.for_decoding`: weights cast once to the decoding dtype), conditional and unconditional rows
  in one batched forward, `ModalityConstraint`, `Multinomial`;
- HF: `LlamaForCausalLM.generate(guidance_scale=..., negative_prompt_ids=...)`, i.e. transformers'
  `UnbatchedClassifierFreeGuidanceLogitsProcessor` (a second, unconditional forward per step), plus a
  logits processor that allows image codes only. Its log-softmax guidance differs from panglot's raw-logit
  guidance by a per-row constant, so both sample from the same distribution.

One process, interleaved rounds (every setting runs once per round, in rotating order) so that load from
other processes on a shared machine hits all settings alike; medians over rounds. A greedy fp32 run of both
first checks that they decode the same codes. Codec decoding (ids -> pixels) is left out: it is the same
for both and is timed once, apart.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/generation.py --breakdown   # tiny, batch 1 and 16, CFG 3
    .venv/bin/python benchmarks/generation.py --size small --rounds 7
    .venv/bin/python benchmarks/generation.py --compiled --threads 1  # also compiled decode steps
    .venv/bin/python benchmarks/generation.py --compiled --spans --threads 1  # and with span positions
    .venv/bin/python benchmarks/generation.py --profile --threads 1  # cProfile panglot's loop at batch 16 instead

`OMP_WAIT_POLICY=PASSIVE` matters on a loaded machine: with OpenMP's spin-waiting, two threads on two busy
cores make every small op wait for the other thread (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import platform
import pstats
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from panglot.backbone import Transformer, build_transformer, export_hf_state_dict, hf_config_from
from panglot.codecs.image_vq import PixelVQ, PixelVQConfig
from panglot.codecs.text import train_world_tokenizer
from panglot.data.mixture import world_texts
from panglot.generation import Greedy, ModalityConstraint, Multinomial, Sampler, generate, left_pad
from panglot.model import UnifiedModel
from panglot.model.unified import span_positions
from panglot.multimodal import UnifiedVocab
from panglot.nn import autocast_context, resolve_dtype
from panglot.world import language
from panglot.world.dataset import split_scenes

Decode = Callable[[int], torch.Tensor]  # seed -> codes (B, 64) long


@dataclass
class Bench:
    """A unified model (random-init backbone), its HF twin and the t2i prompts of a batch."""

    model: UnifiedModel
    hf: LlamaForCausalLM
    captions: list[list[int]]

    @property
    def layout(self):
        return self.model.layout

    @property
    def slot(self):
        return self.model.vocab.slot(self.model.image_slot)


@dataclass
class Setting:
    name: str
    batch: int
    decode: Decode
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def build_bench(size: str, max_batch: int, seed: int = 0) -> Bench:
    tokenizer = train_world_tokenizer(world_texts("train", 500, seed))
    # the shipped recipe's codec layout (configs/codec_pixel_vq.yaml: 240 shape codes x 8 colours = 1920
    # ids), untrained: speed only
    codec = PixelVQ(PixelVQConfig(res_blocks=0, encoder_input="mask_colour", code_split="shape_colour")).eval()
    vocab = UnifiedVocab.build(tokenizer, [("image", codec, "<boi>", "<eoi>")])
    torch.manual_seed(seed)
    model = UnifiedModel(build_transformer(size, vocab.size), vocab, codec).eval()
    hf = LlamaForCausalLM(LlamaConfig(**hf_config_from(model.backbone.cfg, "llama"))).eval()
    hf.load_state_dict(export_hf_state_dict(model.backbone, "llama"), strict=True)
    captions = [tokenizer.encode(language.caption(s)) for s in split_scenes("val", max_batch, seed)]
    return Bench(model, hf, captions)


def with_span_positions(bench: Bench) -> Transformer:
    """The bench backbone rebuilt with span positions on the image block (the quickstart recipe's
    ``model.span_positions``), same weights; its tables are zero, so it decodes the same codes as HF."""
    backbone = bench.model.backbone
    cfg = dataclasses.replace(backbone.cfg, **span_positions(bench.model.vocab, bench.model.codec))
    spans = Transformer(cfg).eval()
    missing, unexpected = spans.load_state_dict(backbone.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("span_") for name in missing), (missing, unexpected)
    return spans


def panglot_decoder(
    bench: Bench,
    batch: int,
    cfg: float,
    dtype: str,
    sampler: Callable[[int], Sampler],
    compile: bool = False,
    backbone: Transformer | None = None,
) -> Decode:
    """`generate` exactly as `Panglot.draw` calls it for one chunk of `batch` prompts (``compile``: as
    `panglot.load(..., compile=True)` does, compiled one-token steps over a static KV cache); ``backbone``
    replaces the bench's (same vocabulary)."""
    layout, slot = bench.layout, bench.slot
    prompts = [layout.t2i_prompt(c) for c in bench.captions[:batch]]
    uncond = [layout.t2i_prompt(None)] * batch
    lo, hi = slot.id_range
    constraint = ModalityConstraint(lo, hi, layout.boi, layout.eoi, slot.tokens_per_item)
    backbone = backbone or bench.model.backbone
    decoder = backbone.for_decoding(resolve_dtype(dtype), compile=compile)  # once, as `Panglot` does

    def decode(seed: int) -> torch.Tensor:
        out = generate(
            decoder,
            prompts,
            max_new_tokens=slot.tokens_per_item,
            processors=[constraint],
            sampler=sampler(seed),
            uncond_prompts=uncond,
            cfg_scale=cfg,
            dtype=dtype,
        )
        return torch.tensor(out)

    return decode


class ImageCodesOnly(LogitsProcessor):
    """HF logits processor: only LM ids in [lo, hi) (the image block) may be sampled."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.lo : self.hi] = scores[:, self.lo : self.hi]
        return masked


def hf_decoder(bench: Bench, batch: int, cfg: float, dtype: str, do_sample: bool) -> Decode:
    """`LlamaForCausalLM.generate` with transformers' own CFG, left-padded prompts, image codes only."""
    layout, slot = bench.layout, bench.slot
    prompts = [layout.t2i_prompt(c) for c in bench.captions[:batch]]
    pad = bench.model.vocab.special("<pad>")
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (B, P)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    uncond = torch.tensor([layout.t2i_prompt(None)] * batch)  # (B, P_u)
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if do_sample else {}  # plain softmax sampling
    config = GenerationConfig(
        do_sample=do_sample,
        **sampling,
        max_new_tokens=slot.tokens_per_item,
        min_new_tokens=slot.tokens_per_item,
        guidance_scale=cfg,
        use_cache=True,
        pad_token_id=pad,
        bos_token_id=layout.bos,
        eos_token_id=layout.eos,
    )
    processors = LogitsProcessorList([ImageCodesOnly(*slot.id_range)])

    def decode(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with autocast_context("cpu", dtype):
            out = bench.hf.generate(
                input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                negative_prompt_ids=uncond,
                negative_prompt_attention_mask=torch.ones_like(uncond),
            )
        return out[:, width:]

    return decode


def panglot_forwards(bench: Bench, batch: int, dtype: str) -> Decode:
    """The model work alone of a panglot call: the same decoding copy, 2B-row prefill and cached
    single-token forwards, greedy on the conditional rows; no guidance, processors or sampler."""
    slot = bench.slot
    rows = [bench.layout.t2i_prompt(c) for c in bench.captions[:batch]] + [bench.layout.t2i_prompt(None)] * batch
    tokens, valid = left_pad(rows, 0, torch.device("cpu"))  # (2B, P)

    backbone = bench.model.backbone.for_decoding(resolve_dtype(dtype))

    def decode(seed: int) -> torch.Tensor:
        codes = []
        with torch.inference_mode():
            cache = backbone.new_cache(2 * batch, tokens.shape[1] + slot.tokens_per_item)
            logits = backbone(tokens, valid=valid, cache=cache)[:, -1]  # (2B, V)
            for step in range(slot.tokens_per_item):
                codes.append(logits[:batch].argmax(-1))
                if step + 1 < slot.tokens_per_item:
                    logits = backbone(codes[-1].repeat(2)[:, None], cache=cache)[:, -1]
        return torch.stack(codes, 1)

    return decode


def hf_forwards(bench: Bench, batch: int, dtype: str) -> Decode:
    """The model work alone of an HF call: a conditional and an unconditional cached forward per step,
    greedy on the conditional logits; none of `generate`'s machinery."""
    layout, slot = bench.layout, bench.slot
    tokens, valid = left_pad([layout.t2i_prompt(c) for c in bench.captions[:batch]], 0, torch.device("cpu"))
    uncond = torch.tensor([layout.t2i_prompt(None)] * batch)  # (B, P_u)

    def decode(seed: int) -> torch.Tensor:
        codes, mask = [], valid.long()
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad(), autocast_context("cpu", dtype):
            cond = bench.hf(tokens, attention_mask=mask, position_ids=positions, use_cache=True)
            free = bench.hf(uncond, use_cache=True)
            for step in range(slot.tokens_per_item):
                codes.append(cond.logits[:, -1].argmax(-1))
                if step + 1 == slot.tokens_per_item:
                    break
                ids, mask = codes[-1][:, None], torch.cat([mask, torch.ones(batch, 1, dtype=torch.long)], 1)
                positions = positions[:, -1:] + 1
                cond = bench.hf(
                    ids, attention_mask=mask, position_ids=positions, past_key_values=cond.past_key_values
                )
                free = bench.hf(ids, past_key_values=free.past_key_values)
        return torch.stack(codes, 1)

    return decode


def check_same_codes(bench: Bench, batch: int, cfg: float) -> str:
    """Greedy fp32 decoding of both must give the same codes (up to rare argmax near-ties)."""
    ours = panglot_decoder(bench, batch, cfg, "fp32", lambda seed: Greedy())(0)
    theirs = hf_decoder(bench, batch, cfg, "fp32", do_sample=False)(0)
    if ours.shape != theirs.shape:
        raise RuntimeError(f"panglot decoded {tuple(ours.shape)} codes, HF {tuple(theirs.shape)}")
    rows = int((ours == theirs).all(1).sum())
    tokens = (ours == theirs).float().mean().item()
    if tokens < 0.9:
        raise RuntimeError(f"greedy panglot and HF disagree on {1 - tokens:.1%} of codes: not the same decoding")
    return f"greedy fp32 check, batch {batch}: {rows}/{batch} rows identical, {tokens:.1%} of codes"


def build_settings(
    bench: Bench, batches: list[int], cfg: float, breakdown: bool, compiled: bool, spans: bool = False
) -> list[Setting]:
    settings = []
    span_backbone = with_span_positions(bench) if spans else None
    for batch in batches:
        for dtype in ("fp32", "bf16"):
            multinomial = lambda seed, b=batch: Multinomial(tuple(seed + i for i in range(b)))  # noqa: E731
            settings.append(Setting(f"panglot {dtype}", batch, panglot_decoder(bench, batch, cfg, dtype, multinomial)))
            if compiled:
                decode = panglot_decoder(bench, batch, cfg, dtype, multinomial, compile=True)
                settings.append(Setting(f"panglot {dtype} compiled", batch, decode))
            if spans:
                decode = panglot_decoder(bench, batch, cfg, dtype, multinomial, compiled, span_backbone)
                settings.append(Setting(f"panglot {dtype}{' compiled' if compiled else ''} spans", batch, decode))
            settings.append(Setting(f"HF {dtype}", batch, hf_decoder(bench, batch, cfg, dtype, do_sample=True)))
            if breakdown:
                settings.append(Setting(f"panglot {dtype} forwards only", batch, panglot_forwards(bench, batch, dtype)))
                settings.append(Setting(f"HF {dtype} forwards only", batch, hf_forwards(bench, batch, dtype)))
    return settings


def run_rounds(settings: list[Setting], rounds: int, warmup: int) -> None:
    for setting in settings:
        for i in range(warmup):
            setting.decode(i)
    for round_index in range(rounds):
        shift = round_index % len(settings)
        for setting in settings[shift:] + settings[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            codes = setting.decode(round_index)
            setting.wall.append(time.perf_counter() - wall)
            setting.cpu.append(time.process_time() - cpu)
            if codes.shape[0] != setting.batch:
                raise RuntimeError(f"{setting.name} returned {codes.shape[0]} rows for batch {setting.batch}")


def report(settings: list[Setting]) -> None:
    """One row per setting. The panglot / HF ratio twice: of the medians, and the median of each round's ratio (HF and
    panglot timed in the same round, minutes apart at most), which moves less with the shared machine's speed."""
    print(
        "| batch | setting | wall s/call (median) | CPU s/call | images/s | panglot / HF (same dtype): wall (CPU) "
        "| median of per-round wall ratios (min-max) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for s in settings:
        wall = statistics.median(s.wall)
        ratio = paired = ""
        if s.name.startswith("panglot"):
            hf_name = s.name.replace("panglot", "HF").removesuffix(" spans").removesuffix(" compiled")
            hf = next(o for o in settings if o.batch == s.batch and o.name == hf_name)
            cpu_ratio = statistics.median(hf.cpu) / statistics.median(s.cpu)
            ratio = f"{statistics.median(hf.wall) / wall:.1f}x ({cpu_ratio:.1f}x)"
            rounds = [theirs / ours for theirs, ours in zip(hf.wall, s.wall, strict=True)]
            paired = f"{statistics.median(rounds):.2f}x ({min(rounds):.2f}-{max(rounds):.2f})"
        print(
            f"| {s.batch} | {s.name} | {wall:.3f} | {statistics.median(s.cpu):.3f} "
            f"| {s.batch / wall:.1f} | {ratio} | {paired} |"
        )


def time_codec(bench: Bench, batch: int) -> float:
    ids = torch.randint(0, bench.slot.vocab_size, (batch, bench.slot.tokens_per_item))
    with torch.inference_mode():
        bench.model.codec.decode(ids)
        start = time.perf_counter()
        bench.model.codec.decode(ids)
    return time.perf_counter() - start


def profile_panglot(bench: Bench, batch: int, cfg: float, dtype: str, calls: int) -> None:
    multinomial = lambda seed: Multinomial(tuple(seed + i for i in range(batch)))  # noqa: E731
    decode = panglot_decoder(bench, batch, cfg, dtype, multinomial)
    decode(0)
    profiler = cProfile.Profile()
    profiler.enable()
    for seed in range(calls):
        decode(seed)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="backbone size (panglot.backbone.SIZES)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="prompts per call")
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per setting")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time each side's model forwards alone (greedy, no processors)"
    )
    parser.add_argument(
        "--compiled", action="store_true", help="also time panglot with compiled decode steps (compile_for_decoding)"
    )
    parser.add_argument(
        "--spans", action="store_true", help="also time panglot with span positions on the image block (the recipe's)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile panglot's loop instead of comparing")
    parser.add_argument("--dtype", default="bf16", help="with --profile: panglot's dtype")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    bench = build_bench(args.size, max(args.batch))
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()} {platform.processor()}"
    )
    print(
        f"size={args.size} ({sum(p.numel() for p in bench.model.backbone.parameters()) / 1e6:.1f} M params) "
        f"vocab={bench.model.vocab.size} cfg={args.cfg} codes/image={bench.slot.tokens_per_item}\n"
    )
    if args.profile:
        profile_panglot(bench, max(args.batch), args.cfg, args.dtype, calls=args.rounds)
        return
    print(check_same_codes(bench, max(args.batch), args.cfg))
    settings = build_settings(bench, args.batch, args.cfg, args.breakdown, args.compiled, args.spans)
    run_rounds(settings, args.rounds, args.warmup)
    print()
    report(settings)
    batch = max(args.batch)
    print(f"\ncodec decode (ids -> 64x64 pixels), batch {batch}: {time_codec(bench, batch):.3f} s, apart from above")


if __name__ == "__main__":
    main()
