"""The quickstart: from nothing to a trained, tuned and evaluated unified model on ShapesWorld.

    panglot quickstart [--out runs/quickstart] [--minutes M] [--preset quickstart|long] [--codec pixel_vq] [--eval-only]

1. trains the image codec (``--codec``: ``pixel_vq`` by default, or ``semantic_vq`` / ``qformer`` /
   ``qformer_layout`` with the dual encoder and pixel codec they need; recipes/stages.py),
2. trains the unified model on text-to-image + captioning + VQA (recipes/train_unified.py); with ``--preset lookup``
   first a short *lookup* stage on question answering alone (``OUT/stages/lookup``; ``--lookup-minutes M``, 0 for
   none) whose weights it starts from,
3. tunes the default classifier-free guidance scale and sampling temperature on ``val`` (seen prompts only) and
   sets the run to draw each image as the best of ``candidates`` by its own reading of them,
4. evaluates on the test suite (seen/unseen x 1/2/3 objects; drawings also one sample per prompt) and writes
   ``OUT/eval/report.md``.

Each stage is skipped when its output already exists and the unified training resumes from its last
checkpoint, so an interrupted quickstart continues where it stopped. ``--eval-only`` trains nothing and repeats 3
and 4 on the model already in ``OUT`` (after a change of decoding, say).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import yaml

import configs
import panglot
from panglot.config import from_dict, merge_dicts, parse_overrides
from panglot.config.loader import Whole
from panglot.evaluation import EvalSuite, eval_caption, evaluate_model, tqdm_progress
from panglot.evaluation.runner import TUNE_SCALES, TUNE_TEMPERATURES, headline, tune_sampling
from panglot.files import atomic_write_json
from panglot.training.budget import Deadline
from panglot.training.checkpoint import latest_checkpoint
from recipes import stages, train_unified

logger = logging.getLogger("panglot.quickstart")
DEFAULT_CODEC = "pixel_vq"


@dataclass
class Preset:
    unified_config: str  # YAML in configs/ for recipes/train_unified.py
    stages: dict = field(default_factory=dict)  # stage name (recipes/stages.py) -> overrides of its YAML
    unified: dict = field(default_factory=dict)  # overrides on top of the unified YAML
    unified_minutes: float | None = None  # fit the unified training to this budget (None: the YAML's steps)
    val_per_cell: int = 24  # val scenes per object count for tuning the CFG scale and temperature
    test_per_cell: int = 50  # test scenes per (seen/unseen, object count) cell
    scales: tuple[float, ...] = TUNE_SCALES  # the guidance scales and sampling temperatures tuned on val
    temperatures: tuple[float, ...] = TUNE_TEMPERATURES
    # Each drawing the best of this many by the model's own reading of them (DrawDefaults.candidates). The test
    # figures and the report's CFG sweep also draw one sample per prompt (t2i_one_sample). On the 20:37 run, test,
    # scale 1.5 and temperature 0.55: 50 -> 67 % of all scenes with 4, 54 -> 74 % with 8 (docs/quickstart_results.md
    # "Best of K").
    candidates: int = 4
    # Each caption the best of the greedy caption and this many sampled (temperature 1) by log p(image | caption) +
    # log p(caption | image) (DrawDefaults.caption_candidates, caption_direct_weight; the greedy figure under
    # caption_greedy). On the 20:37 run, test, seen, by the drawing alone: 77.3 -> 88.0 % with 16, unseen 20.7 ->
    # 56.0 % (docs/quickstart_results.md "Captions by the model's own drawing"); on the 2026-12-03 06:32 run, test,
    # seen / unseen: greedy 90.7 / 28.0 %, the drawing alone 90.0 / 62.7 %, both terms 94.0 / 57.3 % ("Noisy-channel
    # captions"). 8 rather than 16 since 06:54 (half the cost): with both terms 93.3 % of that run's val either way.
    caption_candidates: int = 8
    # The whole job's wall clock (None: none): the unified budget's re-fits stop training in time for the tuning
    # and evaluation after it, reckoned as ``reserve_steps`` unified steps (panglot.training.budget.Deadline), so
    # the run ends in time on a machine slower than the one the budgets were set on, down to half the unified budget
    # (Deadline.min_share; below that it runs late rather than train a useless model). Not with --minutes, nor with
    # another --codec (its teacher and codec stages come on top, and would eat the unified budget). On the
    # quickstarts of 2026-12-03 the work after training took 362-560 steps' time (146-247 s at 0.40-0.47 s/step).
    deadline_minutes: float | None = None
    reserve_steps: float = 500.0
    # A first unified stage whose last weights the unified training starts from (its ``init_from``): these
    # overrides on top of the unified config (and the user's overrides) for a run in OUT/stages/lookup, fitted to
    # ``lookup_minutes`` (at most its ``train.max_steps``). None: no such stage. The `lookup` preset's trains question
    # answering alone (docs/quickstart_results.md "The lookup stage"): in the mixture from the start, the
    # comparison of a question's names with the scene's description formed in one run of two (session 19).
    lookup: dict | None = None
    lookup_minutes: float | None = None
    # A describing run answers after its own best caption, marked by the model (DrawDefaults.answer_from_caption),
    # instead of a description it writes greedily from the image; None: the run's own default (``panglot.load``'s:
    # True for the quickstart's recipe, which draws no image VQA documents).
    answer_from_caption: bool | None = None
    # Guidance re-ranks only the tokens the conditional finds plausible (DrawDefaults.cfg_plausibility), tuned and
    # evaluated so; 0: plain guidance. 0.2 on the same weights of three runs (2026-12-04): one sample per prompt
    # +1.3 to +6.7 points, guidance's gain +5.5 / +8.0 / +12.0 (from +0 / +4.3 / +7.0), scale 3 no longer collapses;
    # but the best of 4, the runs' decoding, seen / unseen -1.3, -1.3 / +0.3, -2.3 / -4.0, +0.6 (fewer candidates to
    # rerank): not the presets' default (docs/quickstart_results.md "Guidance among plausible tokens").
    cfg_plausibility: float = 0.0


# The `lookup` preset's stage: VQA documents alone, twice the documents a step (their rows are shorter), 500 steps
# at most (0.33 s a step, 2.9 minutes, on 2026-12-03's machine; 250 steps then 1643 of the mixture answered VQA 76 %,
# `exists` 58 %: docs/quickstart_results.md "The lookup stage"), and both stages answering after a description that
# marks each object the question names, the marks weighing 25 (model.vqa_describe, data.vqa_description).
LOOKUP = {"batch_size": 64, "data": {"task_probs": Whole({"vqa": 1.0})}, "train": {"max_steps": 500}}
LOOKUP_MINUTES = 3.0
# The preset's mixture is session 20's, pinned: image VQA documents with marked descriptions weighing 25, no vqa_text
# (the quickstart's recipe since 2026-12-04 answers better, draws and captions as well: docs/quickstart_results.md).
MARKED = {
    "batch_size": 32,
    "task_loss_shares": None,
    "model": {"vqa_describe": True},
    "data": {
        "task_probs": Whole({"t2i": 0.4, "caption": 0.3, "vqa": 0.3}),
        "vqa_description": "marked",
        "vqa_mark_weight": 25.0,
        "vqa_balance_positions": False,
    },
}
LOOKUP_DIR = "lookup"  # under OUT/stages/

PRESETS = {
    # <= 15 minutes on 2 CPU cores: 3 min codec, 7.5 min unified model (each stage's steps re-fitted to its minutes
    # a fifth, half and 4/5 of the way in, stopped at 1.1x its minutes if later steps run slower:
    # panglot.training.budget; the unified model's also cut to keep the 15 minutes: deadline below), the rest (probes,
    # compilation, tuning, best-of-4 drawings, reranked captions, evaluation) 1-4 min (it grows on a slower machine;
    # 2026-12-03 22:27: codec 186 s, unified 462, tuning 13, evaluation 52: 713 s; 2026-12-04 08:13, with answers from
    # the run's caption: 185, 464, 13, 76: 738 s). With best-of-K
    # decoding and 16 caption candidates: 9 minutes took 922 s (2026-12-03 06:32: codec 189, unified 568, tuning 42,
    # evaluation 124), 8 minutes 964 s (06:54: 196, 521, 45, 202 on a slower stretch).
    # (with --codec semantic_vq, qformer or qformer_layout, the dual encoder and that codec's stages come on top).
    # Tuned over 3 x 3 (scale, temperature) pairs, not the library's 4 x 4: scale 3 and temperature 1 were picked
    # in none of the 3 quickstarts of 2026-12-03 that tuned over them (picks: (2, 0.35), (1.5, 0.35) twice), and
    # the 7 sweeps saved are ~30 s of the 15 minutes.
    "quickstart": Preset(
        "unified_quickstart.yaml",
        unified_minutes=7.5,
        scales=(1.0, 1.5, 2.0),
        temperatures=(0.7, 0.5, 0.35),
        deadline_minutes=15.0,
    ),
    # The quickstart with a lookup stage (3 min, VQA alone) before a 7-minute mixture, both on marked descriptions:
    # in three fresh seeds VQA 83.4-87.9 % (the quickstart: 71.8-73.1 %), guidance -8 to +16.5 points (+0 to +6.5),
    # but captions 88.0-93.3 % (97.3-98.0) and seen 3-object drawings 40-76 % (56-70): not the default
    # (docs/quickstart_results.md "The lookup stage"). 2026-12-03 23:35: codec 185 s, lookup 174, unified 437 (the
    # deadline's cut), tuning 13, evaluation 60: 869 s.
    "lookup": Preset(
        "unified_quickstart.yaml",
        unified=MARKED,
        unified_minutes=7.0,
        scales=(1.0, 1.5, 2.0),
        temperatures=(0.7, 0.5, 0.35),
        deadline_minutes=15.0,
        lookup=LOOKUP,
        lookup_minutes=LOOKUP_MINUTES,
    ),
    # A reduced run for CI: minutes, not a quarter of an hour; checks that learning happens at all.
    "ci": Preset(
        "unified_quickstart.yaml",
        stages={"pixel_vq": {"train": {"max_minutes": 1.0}, "eval": {"n_images": 200}}},
        unified={"data": {"n_scenes": 4000}, "tokenizer_scenes": 1000, "train": {"max_steps": 400, "ckpt_every": 0}},
        val_per_cell=8,
        test_per_cell=16,
        scales=(1.0, 3.0),
        temperatures=(1.0, 0.7),
        candidates=2,
        caption_candidates=2,
    ),
    "long": Preset(
        "unified_long.yaml",
        stages={"pixel_vq": {"train": {"max_minutes": 8.0}}},
        # at most 8.8 + 47.3 with the 1.1x guards: <= 60 minutes in all (2026-12-04 on the quickstart's recipe: codec
        # 211 s, unified 2660 s for 10 490 steps, tuning 25, evaluation 138: 3034 s)
        unified_minutes=43.0,
        test_per_cell=100,
        deadline_minutes=60.0,
        # twice the test scenes: 383 s of tuning and evaluation on 2026-12-03, when a step took ~0.4 s (now ~0.24 s)
        reserve_steps=1500.0,
    ),
}


def _config_dict(name: str) -> dict:
    return yaml.safe_load(resources.files(configs).joinpath(name).read_text())


def train_codec_stage(preset: Preset, out: Path, codec: str, threads: int = 1) -> Path:
    """The image codec (and the stages it needs) under ``OUT/stages/``; a finished stage is reused.

    Each stage trains on ``threads`` threads (the stage recipes default to 1, for a machine shared with other
    jobs; the quickstart runs its stages one after another, so they get what the unified stage gets)."""
    overrides = merge_dicts({name: {"threads": threads} for name in stages.STAGES}, preset.stages)
    codec_dir = stages.build(codec, out / "stages", overrides)
    metrics = json.loads((codec_dir / "codec.json").read_text()).get("metrics", {})
    logger.info("codec %s: %s", codec, json.dumps({k: v for k, v in metrics.items() if k != "train"}))
    return codec_dir


def unified_recipe(
    preset: Preset, out: Path, codec_dir: Path, overrides: list[str] = (), *stage: dict
) -> train_unified.UnifiedRecipe:
    """The unified recipe of ``preset`` writing ``out``: its YAML, the preset's overrides, the user's, then a
    stage's own, in order (merged one by one, so a `Whole` mapping among them replaces what came before it)."""
    data = merge_dicts(_config_dict(preset.unified_config), preset.unified)
    for extra in (parse_overrides(overrides), *stage):
        data = merge_dicts(data, extra)
    data = merge_dicts(data, {"out_dir": str(out), "codec_dir": str(codec_dir)})
    return from_dict(train_unified.UnifiedRecipe, data, source=preset.unified_config)


LOOKUP_PREFIX = "lookup."  # overrides of the lookup stage alone: lookup.train.max_steps=300


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """The user's overrides for both unified stages, and those for the lookup stage alone (prefix removed)."""
    shared = [item for item in overrides if not item.startswith(LOOKUP_PREFIX)]
    return shared, [item.removeprefix(LOOKUP_PREFIX) for item in overrides if item.startswith(LOOKUP_PREFIX)]


def train_lookup_stage(
    preset: Preset, out: Path, codec_dir: Path, minutes: float | None, overrides: list[str] = ()
) -> Path | None:
    """The preset's lookup stage in ``OUT/stages/lookup`` (reused once its model is exported, resumed from its last
    checkpoint if interrupted); its directory, or None where the preset has none or ``minutes`` is 0. ``overrides``
    apply to it, those prefixed ``lookup.`` to it alone."""
    shared, own = split_overrides(list(overrides))
    if preset.lookup is None or minutes == 0:
        if own:
            raise ValueError(f"no lookup stage to apply {' '.join(LOOKUP_PREFIX + item for item in own)} to")
        return None
    run_dir = out / "stages" / LOOKUP_DIR
    if (run_dir / "model" / "run.json").is_file():
        logger.info("lookup stage: reusing %s", run_dir)
        return run_dir
    cfg = unified_recipe(preset, run_dir, codec_dir, shared, preset.lookup, parse_overrides(own))
    train_unified.run(cfg, resume=True, minutes=minutes)
    return run_dir


def train_unified_stage(
    preset: Preset,
    out: Path,
    codec_dir: Path,
    minutes: float | None,
    overrides: list[str] = (),
    deadline: Deadline | None = None,
    init_from: Path | None = None,
) -> None:
    stage = [{"init_from": str(init_from)}] if init_from is not None else []
    cfg = unified_recipe(preset, out, codec_dir, split_overrides(list(overrides))[0], *stage)
    train_unified.run(cfg, resume=True, minutes=minutes, deadline=deadline)


def tune_and_evaluate(m: panglot.Panglot, out: Path, preset: Preset, title: str, lap=lambda name: None) -> dict:
    """Tune the run's CFG scale and temperature on ``val`` (one sample per prompt), then evaluate on test with the
    run's decoding (best of ``preset.candidates``, captions from ``preset.caption_candidates``), beside one sample per
    prompt and the greedy caption; ``lap(name)`` marks the end of each part. The metrics, as written to ``OUT/eval``."""
    fixed = {
        "candidates": preset.candidates,
        "caption_candidates": preset.caption_candidates,
        "cfg_plausibility": preset.cfg_plausibility,
    }
    if preset.answer_from_caption is not None:
        fixed["answer_from_caption"] = preset.answer_from_caption
    tune_sampling(m, out, preset.scales, preset.temperatures, preset.val_per_cell, defaults=fixed)
    lap("tune_sampling_s")
    test, tuned = EvalSuite("test", n_per_cell=preset.test_per_cell), m.defaults.cfg_scale
    sampling = {"temperature": m.defaults.temperature, "candidates": m.defaults.candidates}
    metrics = evaluate_model(
        m,
        out / "eval",
        test,
        cfg=tuned,
        sweep_scales=sorted({1.0, tuned}),
        sampling=sampling,
        # the CFG sweep one sample per prompt: guidance's own effect, without the best-of-K reranking on top
        sweep_sampling={**sampling, "candidates": 1},
        metrics_jsonl=out / "train" / "metrics.jsonl",
        title=title,
    )
    if m.defaults.candidates > 1:  # one sample per prompt at the tuned scale (the sweep's), beside the best of K
        one = metrics["cfg_sweep"]["t2i"][metrics["cfg_sweep"]["scales"].index(tuned)]
        metrics["t2i_one_sample"] = one
        metrics["summary"]["t2i_scene_one_sample"] = headline(one, "scene")
    if m.defaults.caption_candidates > 1:  # the greedy caption, beside the reranked one
        greedy = eval_caption(m, test, candidates=1, progress=tqdm_progress()).metrics
        metrics["caption_greedy"] = greedy
        metrics["summary"]["caption_greedy"] = headline(greedy, "accuracy")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="train, tune and evaluate a unified model on ShapesWorld")
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--minutes", type=float, default=None, help="budget for the unified model's training")
    parser.add_argument(
        "--lookup-minutes", type=float, default=None, help="budget for the lookup stage before it (0: none)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quickstart")
    parser.add_argument("--codec", choices=stages.IMAGE_CODECS, default=DEFAULT_CODEC, help="the image codec")
    parser.add_argument("--eval-only", action="store_true", help="no training: tune and evaluate OUT's model again")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides of the unified recipe (model.size=small; lookup.* its first stage's)"
    )
    args = parser.parse_args(argv)
    preset, out = PRESETS[args.preset], Path(args.out)
    if args.eval_only and (args.overrides or args.minutes is not None or args.lookup_minutes is not None):
        given = args.overrides or [
            f"--{name.replace('_', '-')} {value:g}"
            for name, value in (("minutes", args.minutes), ("lookup_minutes", args.lookup_minutes))
            if value is not None
        ]
        raise ValueError(f"--eval-only trains nothing, so training options do not apply: {' '.join(given)}")
    if args.lookup_minutes is not None and args.lookup_minutes < 0:
        raise ValueError(f"--lookup-minutes must be >= 0, got {args.lookup_minutes:g}")
    if args.lookup_minutes and preset.lookup is None:
        raise ValueError(f"--preset {args.preset} has no lookup stage to give --lookup-minutes (--preset lookup has)")
    if not args.eval_only:
        out.mkdir(parents=True, exist_ok=True)
    threads = max(1, torch.get_num_threads())  # OMP_NUM_THREADS, else the cores torch sees
    torch.set_num_threads(threads)
    times, start = {}, time.perf_counter()

    def lap(name: str) -> None:
        times[name] = round(time.perf_counter() - start - sum(times.values()), 1)

    if not args.eval_only:
        codec_dir = train_codec_stage(preset, out, args.codec, threads)
        lap("codec_s")
        lookup_minutes = args.lookup_minutes if args.lookup_minutes is not None else preset.lookup_minutes
        lookup_dir = None  # a unified training already under way resumes from its own checkpoint instead
        if latest_checkpoint(out / "train") is None:
            lookup_dir = train_lookup_stage(preset, out, codec_dir, lookup_minutes, args.overrides)
        if lookup_dir is not None:
            lap("lookup_s")
        minutes = args.minutes if args.minutes is not None else preset.unified_minutes
        deadline = None  # the preset's time limit is the default codec's: the others train more stages first
        if args.minutes is None and preset.deadline_minutes is not None and args.codec == DEFAULT_CODEC:
            deadline = Deadline(start + preset.deadline_minutes * 60, preset.reserve_steps)
        train_unified_stage(preset, out, codec_dir, minutes, args.overrides, deadline, lookup_dir)
        lap("unified_s")
    m = panglot.load(out)
    metrics = tune_and_evaluate(m, out, preset, f"panglot quickstart ({args.preset}, {args.codec})", lap)
    lap("eval_s")
    times["total_s"] = round(time.perf_counter() - start, 1)
    metrics["timings"] = times
    atomic_write_json(out / "eval" / "metrics.json", metrics, indent=2)
    tuned = dataclasses.asdict(m.defaults)
    print(json.dumps({"summary": metrics["summary"], **tuned, "timings": times}, indent=2))
    print(f"report: {out / 'eval' / 'report.md'}")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
