"""Experiment: do semantic image tokens make the unified model learn faster? (issue 4; ILLUME, SEED-LLaMA)

    python recipes/tokenizer_experiment.py --out runs/exp_tokenizers --budgets 1 2 4     # minutes
    python recipes/tokenizer_experiment.py --out runs/exp_tokenizers --steps 200 450 900  # optimizer steps
    python recipes/tokenizer_experiment.py model.size=small --steps 300  # overrides of the unified recipe first

Trains each image codec (``pixel_vq``, ``semantic_vq``, ``qformer``; with the dual encoder and pixel codec
they need, see ``recipes/stages.py``), then the same unified-model recipe on each codec at several equal
budgets, evaluates every run on the same test suite (seen/unseen x 1/2/3 objects; text-to-image scene
accuracy, captioning, VQA) at one fixed CFG scale, and writes ``OUT/results.json``, ``OUT/tokenizers.md``
(table), ``OUT/tokenizers.png`` (accuracy vs training tokens) and ``OUT/tokenizers_cpu.png`` (vs training
CPU seconds). A budget is either wall-clock minutes
of unified training on this machine, fitted to steps before training (``panglot.training.budget``), or a
number of optimizer steps (``--steps``: the same documents for every codec, whatever else the machine is
running); each run records the tokens it trained on and its measured wall and CPU time, so the curves can
be read either way.
``--seeds 0 1 2`` repeats every run with other training and data seeds (the model's initialisation, the scenes and
the order they come in; the codecs stay as trained): the table gets a row per seed and a mean over seeds, and the
curves draw the mean with the seeds' range.
Finished runs are reused, so an interrupted experiment continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import yaml
from matplotlib.figure import Figure

import panglot
from panglot.config import from_dict, merge_dicts, parse_overrides
from panglot.evaluation import EvalSuite, evaluate_model
from panglot.files import atomic_write_json, atomic_write_text
from recipes import stages, train_unified

logger = logging.getLogger("panglot.recipes.tokenizer_experiment")

FIGURES = (  # (label, path in the run's summary)
    ("t2i scene seen", ("t2i_scene", "seen")),
    ("t2i scene unseen", ("t2i_scene", "unseen")),
    ("caption seen", ("caption", "seen")),
    ("caption unseen", ("caption", "unseen")),
    ("VQA seen", ("vqa", "seen")),
    ("VQA unseen", ("vqa", "unseen")),
)


def train_run(codec_dir: Path, out: Path, budget: tuple[str, float], unified: dict) -> dict:
    """One unified run on ``codec_dir`` with ``budget`` = ("minutes", M) or ("steps", N); returns steps,
    tokens and wall and CPU time."""
    summary_path = out / "train_summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    data = yaml.safe_load(Path(stages.config_path("unified_quickstart.yaml")).read_text())
    data = merge_dicts(merge_dicts(data, unified), {"out_dir": str(out), "codec_dir": str(codec_dir)})
    kind, amount = budget
    minutes = amount if kind == "minutes" else None
    if kind == "steps":
        data = merge_dicts(data, {"train": {"max_steps": int(amount)}})
    cfg = from_dict(train_unified.UnifiedRecipe, data, source="unified_quickstart.yaml")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    train_unified.run(cfg, resume=True, minutes=minutes)
    steps, tokens = 0, 0.0
    for line in (out / "train" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:  # a training record (callbacks may log others)
            steps, tokens = record["step"], tokens + record.get("tokens", 0.0)
    result = {
        "budget": f"{amount:g} {kind}",
        "steps": steps,
        "tokens": tokens,
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
    }
    atomic_write_json(summary_path, result, indent=2)
    return result


def eval_run(out: Path, per_cell: int, cfg_scale: float) -> dict:
    path = out / "eval" / "metrics.json"
    if path.is_file():
        return json.loads(path.read_text())
    m = panglot.load(out)
    metrics = evaluate_model(
        m, out / "eval", EvalSuite("test", n_per_cell=per_cell), cfg=cfg_scale, progress=False,
        metrics_jsonl=out / "train" / "metrics.jsonl", title=f"tokenizer experiment: {out.name}",
    )  # fmt: skip
    return metrics


def figure(summary: dict, path: tuple[str, str]) -> float:
    task, group = path
    return float(summary[task][group])


T2I_ATTRIBUTES = ("object", "count", "shape", "color", "size", "position")


def detail_table(results: list[dict]) -> list[str]:
    """Where the scene-level figures come from: text-to-image attribute accuracy of the generated objects and
    VQA accuracy per question kind (all test prompts), read from each run's ``eval/metrics.json``."""
    rows = []
    for r in results:
        metrics = json.loads((Path(r["run"]) / "eval" / "metrics.json").read_text())
        t2i = metrics["t2i"]["all"]
        kinds = metrics["vqa"]["per_kind"]
        rows.append((r, [t2i[a] for a in T2I_ATTRIBUTES], {k: v["all"]["accuracy"] for k, v in sorted(kinds.items())}))
    if not rows:
        return []
    kind_names = list(rows[0][2])
    header = ["codec", "budget", *(f"t2i {a}" for a in T2I_ATTRIBUTES), *(f"VQA {k}" for k in kind_names)]
    lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
    for r, attrs, kinds in rows:
        cells = [f"{100 * v:.0f}" for v in [*attrs, *(kinds.get(k, float("nan")) for k in kind_names)]]
        budget = r["budget"] + (f", seed {r['seed']}" if r.get("seed") else "")
        lines.append(f"| {r['codec']} | {budget} | " + " | ".join(cells) + " |")
    return lines


def spread(group: list[dict], path: tuple[str, str]) -> tuple[float, float, float]:
    """Mean, minimum and maximum (%) of one figure over a group's runs (its seeds)."""
    values = [100 * figure(r["summary"], path) for r in group]
    return sum(values) / len(values), min(values), max(values)


def seed_groups(results: list[dict]) -> list[list[dict]]:
    """The runs grouped by (codec, budget), in first-seen order: one group per point of the curves."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["codec"], r["budget"]), []).append(r)
    return list(groups.values())


def mean_table(results: list[dict]) -> list[str]:
    """Mean over seeds of each (codec, budget) and the seeds' range, for experiments run with several seeds."""
    groups = [g for g in seed_groups(results) if len(g) > 1]
    if not groups:
        return []
    lines = [
        "| codec | budget | seeds | " + " | ".join(label for label, _ in FIGURES) + " |",
        "| --- " * (3 + len(FIGURES)) + "|",
    ]
    for group in groups:
        cells = [f"{mean:.1f} ({lo:.0f}-{hi:.0f})" for mean, lo, hi in (spread(group, path) for _, path in FIGURES)]
        lines.append(f"| {group[0]['codec']} | {group[0]['budget']} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def write_outputs(out: Path, results: list[dict], codecs_info: dict) -> None:
    """``results.json``, ``tokenizers.md`` (table) and the curves: ``tokenizers.png`` against training tokens,
    ``tokenizers_cpu.png`` against training CPU seconds (wall time depends on what else the machine runs); with
    several seeds, the table's mean over seeds and curves of the mean with the seeds' range."""
    atomic_write_json(out / "results.json", {"codecs": codecs_info, "runs": results}, indent=2)
    lines = [
        "| codec | tokens/image | budget | seed | steps | train tokens | wall s | CPU s | "
        + " | ".join(label for label, _ in FIGURES)
        + " |",
        "| --- " * (8 + len(FIGURES)) + "|",
    ]
    for r in results:
        cells = [f"{100 * figure(r['summary'], p):.1f}" for _, p in FIGURES]
        lines.append(
            f"| {r['codec']} | {codecs_info[r['codec']]['tokens_per_item']} | {r['budget']} | {r.get('seed', 0)} | "
            f"{r['steps']} | {r['tokens'] / 1e6:.2f} M | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
            + " | ".join(cells) + " |"
        )
    means = mean_table(results)
    lines += ["", *means, *([""] if means else []), *detail_table(results)]
    atomic_write_text(out / "tokenizers.md", "\n".join(lines) + "\n")
    for name, key, scale, xlabel in (
        ("tokenizers.png", "tokens", 1e-6, "unified training tokens (M)"),
        ("tokenizers_cpu.png", "cpu_s", 1.0, "unified training CPU seconds"),
    ):
        fig = Figure(figsize=(12, 6.5))
        axes = fig.subplots(2, 3, sharex=True).flatten()
        for ax, (label, path) in zip(axes, FIGURES):
            for codec in dict.fromkeys(r["codec"] for r in results):
                groups = sorted((g for g in seed_groups(results) if g[0]["codec"] == codec), key=lambda g: g[0][key])
                x = [sum(r[key] for r in g) / len(g) * scale for g in groups]
                mean, lo, hi = zip(*(spread(g, path) for g in groups))
                err = [[m - low for m, low in zip(mean, lo)], [high - m for m, high in zip(mean, hi)]]
                ax.errorbar(x, mean, yerr=err, fmt="o-", capsize=3, label=codec)
            ax.set_title(label)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        for ax in axes[3:]:
            ax.set_xlabel(xlabel)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/exp_tokenizers")
    parser.add_argument("--codecs", nargs="+", default=list(stages.IMAGE_CODECS), choices=stages.IMAGE_CODECS)
    parser.add_argument("--budgets", nargs="+", type=float, default=[1.0, 2.0, 4.0], help="minutes per run")
    parser.add_argument("--steps", nargs="+", type=int, default=None, help="steps per run (instead of minutes)")
    parser.add_argument("--test-per-cell", type=int, default=30, help="test scenes per seen/unseen x 1/2/3 cell")
    parser.add_argument("--cfg", type=float, default=3.0, help="one CFG scale for every run")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the unified recipe, e.g. model.size=small")
    parser.add_argument("--stage-dir", default=None, help="where codecs are trained (default OUT/stages)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training and data seeds of every run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    stage_root = Path(args.stage_dir) if args.stage_dir else out / "stages"
    unified = merge_dicts(parse_overrides(args.overrides), {"cfg_scale": args.cfg})
    results, codecs_info = [], {}
    for codec in args.codecs:
        codec_dir = stages.build(codec, stage_root)
        meta = json.loads((codec_dir / "codec.json").read_text())
        codecs_info[codec] = {"dir": str(codec_dir), "kind": meta["kind"], "tokens_per_item": meta["tokens_per_item"],
                              "metrics": {k: v for k, v in meta.get("metrics", {}).items() if k != "train"}}  # fmt: skip
        budgets = [("steps", n) for n in args.steps] if args.steps else [("minutes", m) for m in args.budgets]
        for budget in budgets:
            name = f"{codec}-{budget[1]:g}{'steps' if budget[0] == 'steps' else 'min'}"
            for seed in args.seeds:
                run_dir = out / "runs" / (name if seed == 0 else f"{name}-seed{seed}")
                seeded = merge_dicts(unified, {"train": {"seed": seed}, "data": {"seed": seed}}) if seed else unified
                train = train_run(codec_dir, run_dir, budget, seeded)
                metrics = eval_run(run_dir, args.test_per_cell, args.cfg)
                results.append({"codec": codec, "seed": seed, **train, "run": str(run_dir), "summary": metrics["summary"]})
                logger.info("%s %s seed %d: %s", codec, train["budget"], seed, json.dumps(metrics["summary"]))
                write_outputs(out, results, codecs_info)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
