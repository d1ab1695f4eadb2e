"""The evaluation report: ``report.md`` with metric tables, and PNG figures next to it.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), so
writing a report never changes the process-wide pyplot backend.

- ``t2i_samples.png``: per (group, object count) row, prompt -> [target | generated] with the oracle's
  verdict (green frame: exact scene; red: what the oracle saw instead);
- ``caption_samples.png``: image -> caption, red with the true caption when wrong;
- ``cfg_sweep.png``: scene accuracy against CFG scale, one line per object count;
- ``training_curves.png``: every numeric field of a ``metrics.jsonl`` (lines ``{"step": .., "loss": ..}``).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from panglot.evaluation.heldout import HELDOUT_SCENES
from panglot.evaluation.metrics import ALL, ATTRIBUTES, GROUPS, OBJECT_COUNTS
from panglot.evaluation.suite import CaptionSample, T2ISample, TaskResult, VQASample, sweep_series
from panglot.world.scene import Obj

GREEN, RED, GRAY = "#2e8b57", "#c0392b", "#7f8c8d"
LINE_COLORS = {"1": "#1f77b4", "2": "#ff7f0e", "3": "#2ca02c", ALL: "#222222"}
STYLE = {
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
}
MARKERS = {"1": "o", "2": "s", "3": "^", ALL: "D"}
PLAIN = FuncFormatter(lambda v, _: f"{v:.3g}")
# log-axis minor ticks: label only 2x and 5x of each decade, so labels never overlap
SPARSE = FuncFormatter(lambda v, _: f"{v:.3g}" if v > 0 and f"{v:.0e}"[0] in "25" else "")
T2I_COLUMNS = ("scene", "object", *ATTRIBUTES, "count")
HEADERS = {"color": "colour", "count": "object count"}
ROW_ORDER = [(g, str(n)) for g in GROUPS for n in OBJECT_COUNTS] + [(g, ALL) for g in GROUPS]


# ---------------------------------------------------------------- Markdown tables


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _rows(table: Mapping) -> list[tuple[str, str, Mapping]]:
    """(group, objects, cell) rows in reading order: seen 1-3, unseen 1-3, per-group all, overall."""
    rows = [(g, n, table[g][n]) for g, n in ROW_ORDER if n in table.get(g, {})]
    if ALL in table:
        rows.append((ALL, ALL, table[ALL]))
    return rows


def breakdown_markdown(table: Mapping, columns: Sequence[str]) -> str:
    """A Markdown table (percentages) of a :class:`~panglot.evaluation.metrics.Breakdown` table."""
    head = ["group", "objects", "n", *(f"{HEADERS.get(c, c)} %" for c in columns)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":--", ":-:", "--:"] + ["--:"] * len(columns)) + "|",
    ]
    for group, n, cell in _rows(table):
        bold = "**" if n == ALL else ""
        values = [f"{bold}{_pct(cell[c])}{bold}" for c in columns]
        lines.append("| " + " | ".join([group, n, str(cell["n"]), *values]) + " |")
    return "\n".join(lines)


def vqa_kind_markdown(per_kind: Mapping[str, Mapping]) -> str:
    """Accuracy per question kind: one column per group and overall, with counts."""
    groups = [g for g in (*GROUPS, ALL) if any(g in t for t in per_kind.values())]
    lines = [
        "| question kind | " + " | ".join(f"{g} % (n)" for g in groups) + " |",
        "|:--|" + "--:|" * len(groups),
    ]
    for kind, table in per_kind.items():
        cells = []
        for g in groups:
            cell = table.get(g, {}) if g == ALL else table.get(g, {}).get(ALL)
            cells.append("–" if not cell else f"{_pct(cell['accuracy'])} ({cell['n']})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_markdown(sweep: Mapping) -> str:
    """Scene accuracy per CFG scale and cell."""
    first = sweep["t2i"][0]
    cols = [(g, n) for g, n in ROW_ORDER if n in first.get(g, {})] + [(ALL, ALL)]
    lines = [
        "| CFG scale | " + " | ".join(f"{g} {n}" if g != ALL else "all" for g, n in cols) + " |",
        "|--:|" + "--:|" * len(cols),
    ]
    series = [sweep_series(sweep, g, n) for g, n in cols]
    for i, scale in enumerate(sweep["scales"]):
        mark = " (best)" if scale == sweep["best_scale"] else ""
        lines.append(f"| {scale:g}{mark} | " + " | ".join(_pct(s[i]) for s in series) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path)
    return path


def _short(obj: Obj) -> str:
    return f"{obj.size} {obj.color} {obj.shape} @ {obj.position}"


def _verdict(sample: T2ISample) -> str:
    if sample.correct:
        return "exact scene"
    return "oracle saw: " + ("; ".join(_short(o) for o in sample.parsed.objects) or "nothing")


def _pick(samples: Sequence, per_cell: int) -> dict[tuple[str, int], list]:
    """The first ``per_cell`` samples of every (group, object count) cell, in suite order."""
    cells: dict[tuple[str, int], list] = {}
    for s in samples:
        cell = cells.setdefault((s.item.group, s.item.n_objects), [])
        if len(cell) < per_cell:
            cell.append(s)
    return cells


def _frame(ax, ok: bool) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color(GREEN if ok else RED)
        spine.set_linewidth(2.5)


FONT = 6.5  # points, sample-grid text
LINE_PT = FONT * 1.25  # points per text line
BLOCK_GAP_PT = 2.0  # points between text blocks

Blocks = list[tuple[str, dict]]  # text blocks under a sample image: (wrapped text, text properties)


def printable(text: str) -> str:
    """``text`` with every character a font cannot draw (control bytes an untrained model may emit) written
    as its escape, ``\\x15``: the grid shows what the model said, and matplotlib has no missing glyph."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _wrap(blocks: Sequence[tuple[str, dict]], width: int) -> Blocks:
    return [(textwrap.fill(printable(text), width), props) for text, props in blocks]


def _blocks_height_pt(blocks: Blocks) -> float:
    return sum((text.count("\n") + 1) * LINE_PT + BLOCK_GAP_PT for text, _ in blocks)


def _text_below(ax, blocks: Blocks) -> None:
    offset = 3.0  # points below the axes
    for text, props in blocks:
        ax.annotate(
            text, xy=(0.5, 0), xycoords="axes fraction", xytext=(0, -offset), textcoords="offset points",
            ha="center", va="top", fontsize=FONT, **props,
        )  # fmt: skip
        offset += (text.count("\n") + 1) * LINE_PT + BLOCK_GAP_PT


def _sample_grid(
    cells: Mapping[tuple[str, int], list],
    image_of,
    ok_of,
    blocks_of,
    title: str,
    image_size: tuple[float, float],
    wrap: int,
    image_title: str = "",
) -> Figure:
    """One row per (group, object count) cell, one column per sample: the image (``image_size`` (w, h)
    inches) framed green / red by ``ok_of(sample)``, and ``blocks_of(sample)`` text under it. Laid out in
    inches, each row as tall as its longest text, so no space is wasted."""
    keys = sorted(cells, key=lambda k: (GROUPS.index(k[0]), k[1]))
    blocks = {key: [_wrap(blocks_of(s), wrap) for s in cells[key]] for key in keys}
    ncols = max(len(v) for v in cells.values())
    iw, ih = image_size
    head = 0.2 if image_title else 0.08  # inches above each image
    heights = [head + ih + max(_blocks_height_pt(b) for b in blocks[k]) / 72 + 0.2 for k in keys]
    cw, left, top = iw + 0.3, 0.6, 0.45
    fw, fh = left + cw * ncols, top + sum(heights)
    fig = Figure(figsize=(fw, fh))
    fig.suptitle(title, fontsize=11, fontweight="bold", y=1 - 0.12 / fh, va="top")
    y_top = fh - top
    for key, height in zip(keys, heights):
        y = y_top - head - ih  # bottom of the images, inches
        for c, (sample, text) in enumerate(zip(cells[key], blocks[key])):
            ax = fig.add_axes(((left + c * cw + 0.15) / fw, y / fh, iw / fw, ih / fh))
            ax.imshow(image_of(sample), interpolation="nearest", aspect="auto")
            _frame(ax, ok_of(sample))
            if image_title:
                ax.set_title(image_title, fontsize=FONT, color=GRAY, pad=2)
            _text_below(ax, text)
        label = f"{key[0]}\n{key[1]} object{'s' * (key[1] > 1)}"
        fig.text(0.3 / fw, (y + ih / 2) / fh, label, rotation=90, ha="center", va="center", fontsize=10,
                 fontweight="bold")  # fmt: skip
        y_top -= height
    return fig


def _pair_image(target: np.ndarray, generated: np.ndarray) -> np.ndarray:
    gap = np.full((target.shape[0], 3, 3), 200, np.uint8)
    return np.concatenate([target, gap, generated], axis=1)


def plot_t2i_samples(samples: Sequence[T2ISample], path: Path, per_cell: int = 4) -> Path:
    def blocks(s: T2ISample) -> Blocks:
        return [
            (s.item.prompt, {}),
            (_verdict(s), {"color": GREEN if s.correct else RED, "fontweight": "bold"}),
        ]

    fig = _sample_grid(
        _pick(samples, per_cell),
        image_of=lambda s: _pair_image(s.item.image, s.image),
        ok_of=lambda s: s.correct,
        blocks_of=blocks,
        title="Text to image: prompt -> image, judged by the oracle",
        image_size=(2.3, 2.3 * 64 / 131),
        wrap=44,
        image_title="target  |  generated",
    )
    return _save(fig, path)


def plot_caption_samples(samples: Sequence[CaptionSample], path: Path, per_cell: int = 4) -> Path:
    def blocks(s: CaptionSample) -> Blocks:
        said = (s.caption or "(empty caption)", {"color": GREEN if s.correct else RED, "fontweight": "bold"})
        return [said] if s.correct else [said, ("true: " + s.item.prompt, {"color": GRAY})]

    fig = _sample_grid(
        _pick(samples, per_cell),
        image_of=lambda s: s.item.image,
        ok_of=lambda s: s.correct,
        blocks_of=blocks,
        title="Captioning: image -> caption",
        image_size=(1.6, 1.6),
        wrap=34,
    )
    return _save(fig, path)


def plot_cfg_sweep(sweep: Mapping, path: Path) -> Path:
    groups = [g for g in GROUPS if g in sweep["t2i"][0]]
    fig = Figure(figsize=(4.2 * len(groups), 3.4))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    scales = sweep["scales"]
    for ax, group in zip(axes, groups):
        for cell in (*(str(n) for n in OBJECT_COUNTS), ALL):
            ys = sweep_series(sweep, group, cell)
            if all(y is None for y in ys):
                continue
            ys = [np.nan if y is None else 100 * y for y in ys]
            label = "all" if cell == ALL else f"{cell} object{'s' * (cell != '1')}"
            style = {"linestyle": "--", "linewidth": 2.2} if cell == ALL else {"linewidth": 1.6}
            ax.plot(
                scales,
                ys,
                marker=MARKERS[cell],
                markersize=4.5,
                alpha=0.9,
                color=LINE_COLORS[cell],
                label=label,
                **style,
            )
        ax.axvline(sweep["best_scale"], color=GRAY, linestyle=":", linewidth=1.2)
        ax.set_title(f"{group} prompts", fontweight="bold")
        ax.set_xlabel("CFG scale")
        ax.set_ylabel("scene accuracy (%)")
        ax.set_ylim(-3, 103)
    axes[0].legend(fontsize=8, frameon=False, loc="best")
    at = f", temperature {sweep['temperature']:g}" if "temperature" in sweep else ""
    fig.suptitle(f"Text to image vs CFG scale (best {sweep['best_scale']:g}, dotted{at})", fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)


def read_metrics_jsonl(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{field: (steps, values)}`` for every numeric field (other than ``step``) of a metrics.jsonl.

    A record whose step is not past a field's last step starts over from there (a resumed or re-run
    training appends to the same file): earlier points at that step or later are dropped.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
        if "step" not in record:
            raise ValueError(f"{path}:{lineno}: expected a 'step' field, got keys {sorted(record)}")
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                steps, values = series.setdefault(key, ([], []))
                while steps and steps[-1] >= record["step"]:
                    steps.pop()
                    values.pop()
                steps.append(record["step"])
                values.append(float(value))
    return series


def _smooth(values: Sequence[float]) -> np.ndarray:
    """Centred moving average (no lag) over about 1/25 of the curve, shrinking at the ends."""
    half = max(1, len(values) // 50)
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(values))
    return (csum[hi] - csum[lo]) / (hi - lo)


def plot_training_curves(series: Mapping[str, tuple[list[float], list[float]]], path: Path) -> Path:
    names = sorted(series, key=lambda k: (not k.startswith("loss"), k))
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 2.9 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        steps, values = series[name]
        color = "#1f77b4" if "loss" in name else "#9467bd"
        if len(values) > 20:  # noisy per-step values: raw faint, smoothed on top
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _smooth(values), color=color, linewidth=1.6)
        else:
            ax.plot(steps, values, color=color, marker="o", markersize=3, linewidth=1.6)
        positive = min(values) > 0
        if "loss" in name and positive and max(values) / min(values) > 10:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(PLAIN)
            ax.yaxis.set_minor_formatter(SPARSE)
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(name, fontweight="bold")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("Training curves", fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- the report


def _vqa_examples_markdown(samples: Sequence[VQASample]) -> str:
    """Per question kind, the first wrong and the first right answer (when there is one), as a table."""
    chosen: dict[tuple[str, bool], VQASample] = {}
    for s in samples:
        chosen.setdefault((s.kind, s.correct), s)
    lines = ["| kind | group | question | answer | model | |", "|:--|:--|:--|:--|:--|:-:|"]
    for (kind, correct), s in sorted(chosen.items()):
        mark = "✓" if correct else "✗"
        predicted = s.predicted.replace("|", "\\|")
        lines.append(f"| {kind} | {s.item.group} | {s.question} | {s.answer} | {predicted} | {mark} |")
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    results: Mapping[str, TaskResult],
    sweep: Mapping | None = None,
    metrics_jsonl: str | Path | None = None,
    title: str = "ShapesWorld evaluation",
    suite: Mapping | None = None,
    samples_per_cell: int = 4,
    heldout: Mapping[str, float] | None = None,
) -> Path:
    """Write ``report.md``, ``metrics.json`` and the PNG figures into ``out_dir``; returns the report path.

    ``results`` maps task names (``t2i``, ``caption``, ``vqa``) to :class:`TaskResult` (a result without
    samples gives its table only); ``sweep`` is a :func:`~panglot.evaluation.suite.cfg_sweep` result;
    ``suite`` is ``EvalSuite.describe()``; ``heldout`` is :func:`~panglot.evaluation.heldout.heldout_loss`'s result.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    if suite:
        md += [
            f"Suite: split `{suite['split']}`, {suite['n_per_cell']} scenes per (group, object count) cell, "
            f"seed {suite['seed']} ({suite['items']} scenes). Figures are percentages; `n` counts samples "
            "(images, captions or questions). Definitions: `panglot/evaluation/metrics.py`.",
            "",
        ]
    with matplotlib.rc_context(STYLE):
        if "t2i" in results:
            r = results["t2i"]
            md += ["## Text to image", "", breakdown_markdown(r.metrics, T2I_COLUMNS), ""]
            md += [
                "`scene`: the oracle's parse equals the prompt's scene exactly. Attribute columns: share of "
                "prompt objects whose best-matching generated object agrees on that attribute; `object`: on "
                "all four; `object count`: images with exactly the prompt's number of objects.",
                "",
            ]
            if r.samples:
                plot_t2i_samples(r.samples, out / "t2i_samples.png", samples_per_cell)
                md += ["![text-to-image samples](t2i_samples.png)", ""]
        if sweep is not None:
            plot_cfg_sweep(sweep, out / "cfg_sweep.png")
            at = f" at sampling temperature {sweep['temperature']:g}" if "temperature" in sweep else ""
            at += f", best of {sweep['candidates']} candidates" if sweep.get("candidates", 1) > 1 else ""
            md += ["## CFG scale", "", f"Scene accuracy (%) per classifier-free guidance scale{at}.", ""]
            md += [sweep_markdown(sweep), "", "![CFG sweep](cfg_sweep.png)", ""]
        if "caption" in results:
            r = results["caption"]
            md += ["## Captioning", "", breakdown_markdown(r.metrics, ("accuracy",)), ""]
            if r.samples:
                plot_caption_samples(r.samples, out / "caption_samples.png", samples_per_cell)
                md += ["![captioning samples](caption_samples.png)", ""]
        if "vqa" in results:
            r = results["vqa"]
            overall = {k: v for k, v in r.metrics.items() if k != "per_kind"}
            md += ["## Visual question answering", "", breakdown_markdown(overall, ("accuracy",)), ""]
            md += ["### Per question kind", "", vqa_kind_markdown(r.metrics["per_kind"]), ""]
            if r.samples:
                md += ["### Examples", "", _vqa_examples_markdown(r.samples), ""]
        if heldout:
            md += ["## Held-out loss", "", "| task | loss |", "| --- | ---: |"]
            md += [f"| {task} | {loss:.4f} |" for task, loss in heldout.items()]
            md += [
                "",
                "Mean next-token loss over each task's target tokens, one document per `val` scene (the first "
                f"{HELDOUT_SCENES}; `panglot.evaluation.heldout`): steadier than the sampled figures above from run "
                "to run, so it is the figure to compare recipes by at equal codecs.",
                "",
            ]
        if metrics_jsonl is not None:
            series = read_metrics_jsonl(Path(metrics_jsonl))
            if series:
                plot_training_curves(series, out / "training_curves.png")
                md += ["## Training", "", "![training curves](training_curves.png)", ""]
    payload = {"suite": dict(suite or {}), **{t: r.metrics for t, r in results.items()}}
    if sweep is not None:
        payload["cfg_sweep"] = dict(sweep)
    if heldout:
        payload["heldout_loss"] = dict(heldout)
    (out / "metrics.json").write_text(json.dumps(payload, indent=2))
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
