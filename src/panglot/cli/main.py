"""``panglot``: quickstart, train, draw, caption, ask, eval, tune.

User mistakes (a missing run directory, a bad image, an unknown word, a mistyped config key) end with one
clear line on stderr and exit status 2, never a stack trace from deep inside torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
from pathlib import Path

import yaml

# Recipe name (the YAML's `recipe:` key) -> module with `main(argv)`. Only the CLI imports recipes.
RECIPES = {
    "unified": "recipes.train_unified",
    "codec": "recipes.train_codec",
    "dual_encoder": "recipes.train_dual_encoder",
    "qformer_codec": "recipes.train_qformer_codec",
    "semantic_codec": "recipes.train_semantic_codec",
}


def _recipe_module(name: str):
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return importlib.import_module(RECIPES[name])


def cmd_quickstart(args: argparse.Namespace) -> None:
    quickstart = importlib.import_module("recipes.quickstart")
    argv = ["--out", args.out, "--preset", args.preset, "--codec", args.codec]
    if args.minutes is not None:
        argv += ["--minutes", str(args.minutes)]
    if args.lookup_minutes is not None:
        argv += ["--lookup-minutes", str(args.lookup_minutes)]
    if args.eval_only:
        argv.append("--eval-only")
    quickstart.main(argv + list(args.overrides))


def cmd_train(args: argparse.Namespace) -> None:
    path = Path(args.recipe)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe YAML must be a mapping, got {type(data).__name__}")
    name = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("recipe=")), data.get("recipe", "unified"))
    argv = [str(path), *args.overrides, "--device", args.device] + (["--resume"] if args.resume else [])
    _recipe_module(name).main(argv)


def cmd_draw(args: argparse.Namespace) -> None:
    import panglot

    m = panglot.load(args.run)
    sampling = {"temperature": args.temperature, "candidates": args.candidates}
    images = m.draw([args.prompt], seed=args.seed, cfg=args.cfg, n=args.n, **sampling)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
        print(path)


def cmd_caption(args: argparse.Namespace) -> None:
    import panglot

    captions = panglot.load(args.run).caption(args.images, candidates=args.candidates, direct_weight=args.direct_weight)
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}" if len(args.images) > 1 else caption)


def cmd_ask(args: argparse.Namespace) -> None:
    import panglot

    m = panglot.load(args.run)
    if args.from_caption is not None:  # else the run's own default (DrawDefaults.answer_from_caption)
        m.defaults = dataclasses.replace(m.defaults, answer_from_caption=args.from_caption)
    ((description, answer),) = m.explain([args.image], [args.question])
    if args.explain and description:
        print(description)
    print(answer)


def cmd_eval(args: argparse.Namespace) -> None:
    from panglot.evaluation.runner import evaluate_run

    metrics = evaluate_run(
        args.run,
        n_per_cell=args.n_per_cell,
        out_dir=args.out,
        cfg=args.cfg,
        temperature=args.temperature,
        candidates=args.candidates,
        sweep_scales=args.sweep,
        compile=args.compile,
    )
    print(json.dumps(metrics["summary"], indent=2))


def cmd_tune(args: argparse.Namespace) -> None:
    import panglot
    from panglot.evaluation.runner import tune_sampling

    grid = {k: v for k, v in {"scales": args.scales, "temperatures": args.temperatures}.items() if v is not None}
    m = panglot.load(args.run, compile=args.compile)
    fixed = {
        "candidates": args.candidates,
        "caption_candidates": args.caption_candidates,
        "cfg_plausibility": args.cfg_plausibility,
    }
    defaults = {k: v for k, v in fixed.items() if v is not None}
    tune_sampling(m, args.run, n_per_cell=args.n_per_cell, defaults=defaults, **grid)
    print(json.dumps(dataclasses.asdict(m.defaults)))


def _numbers(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,1.5,2, got {text!r}") from None


def _plausibility(text: str) -> float:
    """Guidance's plausibility alpha, 0 <= alpha < 1."""
    value = _numbers(text)
    if len(value) != 1 or not 0 <= value[0] < 1:
        raise argparse.ArgumentTypeError(f"expected one number 0 <= alpha < 1, got {text!r}")
    return value[0]


def _scales(text: str) -> list[float]:
    """Comma-separated guidance scales >= 1."""
    scales = _numbers(text)
    if any(not s >= 1 for s in scales):
        raise argparse.ArgumentTypeError(f"guidance scales must be >= 1, got {text!r}")
    return scales


def _sweep(text: str) -> list[float]:
    """``--sweep``: comma-separated guidance scales >= 1, or ``none``."""
    return [] if text.strip().lower() == "none" else _scales(text)


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a sampling temperature must be > 0, got {text!r}")
    return value


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a weight >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1, got {text!r}")
    return value


def _temperatures(text: str) -> list[float]:
    return [_temperature(part) for part in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panglot", description="Unified autoregressive multimodal models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="train and evaluate a unified model on ShapesWorld, from scratch")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--minutes", type=float, default=None, help="time budget for the unified model's training")
    p.add_argument(
        "--lookup-minutes", type=float, default=None,
        help="time budget for the question-answering stage before it (--preset lookup; 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--preset", choices=["quickstart", "lookup", "long", "ci"], default="quickstart",
        help="recipe (lookup: the quickstart with a question-answering stage first)",
    )  # fmt: skip
    codecs = importlib.import_module("recipes.stages").IMAGE_CODECS  # the stage table's names (a light import)
    p.add_argument("--codec", choices=codecs, default="pixel_vq", help="the image codec")
    p.add_argument(
        "--eval-only", action="store_true",
        help="no training: tune and evaluate the model already trained in OUT again (with this version's decoding)",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the unified recipe")
    p.set_defaults(fn=cmd_quickstart)

    p = sub.add_parser("train", help="run a training recipe: panglot train RECIPE.yaml [key=value ...]")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--device", default="cpu", help="where to train: cpu (the recipes' figures), cuda, cuda:1, mps")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("draw", help="text -> image")
    p.add_argument("run")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="out.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's tuned scale)")
    p.add_argument("--temperature", type=_temperature, default=None, help="sampling temperature (default: the run's)")
    p.add_argument("--candidates", type=_count, default=None, metavar="K", help="best of K (default: the run's)")
    p.add_argument("-n", type=int, default=1, help="images to draw")
    p.set_defaults(fn=cmd_draw)

    p = sub.add_parser("caption", help="image -> caption")
    p.add_argument("run")
    p.add_argument("images", nargs="+")
    p.add_argument("--candidates", type=_count, default=None, metavar="K", help="rerank K sampled (default: the run's)")
    p.add_argument(
        "--direct-weight", type=_weight, default=None, metavar="W",
        help="rank by log p(image | caption) + W x log p(caption | image) (default: the run's)",
    )  # fmt: skip
    p.set_defaults(fn=cmd_caption)

    p = sub.add_parser("ask", help="image + question -> answer")
    p.add_argument("run")
    p.add_argument("image")
    p.add_argument("question")
    p.add_argument("--explain", action="store_true", help="also print what a describing run writes before its answer")
    p.add_argument(
        "--from-caption", action=argparse.BooleanOptionalAction, default=None,
        help="a describing run answers after its own best caption (default: the run's setting)",
    )  # fmt: skip
    p.set_defaults(fn=cmd_ask)

    p = sub.add_parser("eval", help="evaluate a run on the test suite; writes metrics.json and a report")
    p.add_argument("run")
    p.add_argument("--n-per-cell", type=int, default=50, help="prompts per (seen/unseen, 1/2/3 objects) cell")
    p.add_argument("--out", default=None, help="where to write metrics.json and the report (default: RUN/eval)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's tuned scale)")
    p.add_argument("--temperature", type=_temperature, default=None, help="sampling temperature (default: the run's)")
    p.add_argument("--candidates", type=_count, default=None, metavar="K", help="best of K (default: the run's)")
    p.add_argument(
        "--sweep", type=_sweep, default=None, metavar="S,S,...",
        help="CFG scales to sweep for the report (default: 1 and the scale evaluated; 'none': no sweep)",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="compiled decode steps (2-3x faster after ~15-20 s of tracing per batch shape)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("tune", help="make the guidance scale and temperature that draw val best the run's defaults")
    p.add_argument("run")
    p.add_argument("--n-per-cell", type=int, default=24, help="val prompts per object count (seen prompts only)")
    p.add_argument("--scales", type=_scales, default=None, metavar="S,S,...", help="default 1,1.5,2,3")
    p.add_argument("--temperatures", type=_temperatures, default=None, metavar="T,T,...", help="default 1,0.7,0.5,0.35")
    p.add_argument(
        "--candidates", type=_count, default=None, metavar="K",
        help="draw K candidates per image and keep the one the model reads best as its prompt (default: the run's)",
    )  # fmt: skip
    p.add_argument(
        "--caption-candidates", type=_count, default=None, metavar="K",
        help="caption from the greedy caption and K sampled, by the model's own drawing and reading of each (default: the run's)",
    )  # fmt: skip
    p.add_argument(
        "--cfg-plausibility", type=_plausibility, default=None, metavar="ALPHA",
        help="guidance re-ranks only tokens with p >= ALPHA x the most likely one's; sweeps and keeps it (default: the run's)",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="compiled decode steps")
    p.set_defaults(fn=cmd_tune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as exc:
        if args.verbose:
            raise
        print(f"panglot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
