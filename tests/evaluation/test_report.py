import json

import numpy as np
import pytest
from PIL import Image

from panglot.evaluation import cfg_sweep, read_metrics_jsonl, run_tasks, write_report
from panglot.evaluation.report import printable


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, suite, half_wrong_model, needs_guidance_model):
    out = tmp_path_factory.mktemp("report")
    results = run_tasks(half_wrong_model, suite)
    sweep = cfg_sweep(needs_guidance_model, suite, [1.0, 2.0, 3.0, 4.0])
    lines = [{"step": s, "loss": 5.0 * np.exp(-s / 30) + 0.1, "lr": 1e-3} for s in range(0, 120, 2)]
    lines.insert(10, {"step": 20, "eval/scene": 0.25})
    (out / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    jsonl = out / "metrics.jsonl"
    write_report(out, results, sweep=sweep, metrics_jsonl=jsonl, suite=suite.describe(), samples_per_cell=2)
    return out


@pytest.mark.parametrize("name", ["t2i_samples", "caption_samples", "cfg_sweep", "training_curves"])
def test_figures_are_written(report_dir, name):
    with Image.open(report_dir / f"{name}.png") as img:
        assert img.width > 300 and img.height > 200
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # not a blank canvas


def test_markdown_holds_the_tables(report_dir):
    md = (report_dir / "report.md").read_text()
    for heading in ("## Text to image", "## CFG scale", "## Captioning", "## Visual question answering"):
        assert heading in md
    assert "| group | objects | n | scene % | object % | shape % | colour % | size % | position % |" in md
    assert "| seen | 1 | 4 | 50.0 | 50.0 | 100.0 | 50.0 | 100.0 | 100.0 | 100.0 |" in md
    assert "| unseen | all | 12 | **50.0** |" in md
    assert "| 3 (best) |" in md
    assert "| where | 0.0 (" in md
    for png in ("t2i_samples.png", "caption_samples.png", "cfg_sweep.png", "training_curves.png"):
        assert f"]({png})" in md
    saved = json.loads((report_dir / "metrics.json").read_text())
    assert saved["t2i"]["seen"]["1"]["scene"] == 0.5
    assert saved["cfg_sweep"]["best_scale"] == 3.0


def test_metrics_jsonl_reading(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"step": 1, "loss": 2.0, "tag": "x", "ok": true}\n\n{"step": 2, "loss": 1.5, "acc": 0.5}\n'
    )
    assert read_metrics_jsonl(path) == {"loss": ([1, 2], [2.0, 1.5]), "acc": ([2], [0.5])}
    restarted = [{"step": s, "loss": 10.0 - s} for s in (1, 2, 3)] + [
        {"step": s, "loss": 1.0} for s in (2, 3, 4)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in restarted))
    assert read_metrics_jsonl(path) == {"loss": ([1, 2, 3, 4], [9.0, 1.0, 1.0, 1.0])}
    path.write_text('{"loss": 2.0}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:1: expected a 'step' field"):
        read_metrics_jsonl(path)
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: not a JSON line"):
        read_metrics_jsonl(path)


def test_printable_escapes_what_no_font_draws():
    assert printable("a red\x15 circle\n\x03") == "a red\\x15 circle\\n\\x03"
    assert printable("small blue square") == "small blue square"
