import json

import pytest

from panglot.evaluation import EvalSuite, evaluate_model, evaluate_run


def test_evaluate_model_writes_report_and_summary(tmp_path, half_wrong_model):
    suite = EvalSuite("test", n_per_cell=2, questions_per_image=2)
    out = evaluate_model(half_wrong_model, tmp_path, suite, tasks=("t2i", "caption"), sweep_scales=[1.0, 3.0])
    assert out["summary"] == {
        "t2i_scene": {"seen": 0.5, "unseen": 0.5, "all": 0.5},
        "caption": {"seen": 0.5, "unseen": 0.5, "all": 0.5},
    }
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["t2i"] == out["t2i"] and saved["cfg_sweep"] == out["cfg_sweep"]
    assert (tmp_path / "cfg_sweep.png").stat().st_size > 0
    assert "## Captioning" in (tmp_path / "report.md").read_text()


def test_evaluate_run_needs_a_trained_run(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_run(tmp_path / "missing", n_per_cell=1)


def test_val_sweep_report_has_seen_prompts_only(tmp_path, needs_guidance_model):
    suite = EvalSuite("val", n_per_cell=1)
    out = evaluate_model(needs_guidance_model, tmp_path, suite, tasks=("t2i",), sweep_scales=[1.0, 3.0])
    assert out["cfg_sweep"]["best_scale"] == 3.0
    assert out["summary"] == {"t2i_scene": {"seen": 1 / 3, "all": 1 / 3}}
    md = (tmp_path / "report.md").read_text()
    assert "| CFG scale | seen 1 | seen 2 | seen 3 | seen all | all |" in md
    assert "unseen" not in md


def test_the_sweep_takes_the_main_figures_at_the_scale_given(tmp_path, needs_guidance_model):
    suite, scales = EvalSuite("val", n_per_cell=2), [1.0, 3.0]
    needs_guidance_model.calls.clear()
    given = evaluate_model(needs_guidance_model, tmp_path / "a", suite, tasks=("t2i",), cfg=3.0, sweep_scales=scales)
    drawn_given = len(needs_guidance_model.calls)
    needs_guidance_model.calls.clear()
    default = evaluate_model(needs_guidance_model, tmp_path / "b", suite, tasks=("t2i",), sweep_scales=scales)
    assert (drawn_given, len(needs_guidance_model.calls)) == (2, 3)  # one call per pass over the 6 prompts
    assert given["cfg_sweep"]["t2i"][1] == given["t2i"] and given["cfg_sweep"] == default["cfg_sweep"]
    needs_guidance_model.calls.clear()  # a sweep drawn its own way draws every scale
    own = evaluate_model(
        needs_guidance_model, tmp_path / "c", suite, tasks=("t2i",), cfg=3.0, sweep_scales=scales, sweep_sampling={}
    )
    assert len(needs_guidance_model.calls) == 3 and own["cfg_sweep"] == default["cfg_sweep"]
