"""One end-to-end run of the quickstart (the `ci` preset: a minute of codec, a few hundred unified steps):
data -> codec -> unified model -> CFG scale and temperature tuned on val -> test evaluation -> report. Learning
must be real: question answering well above chance."""

from __future__ import annotations

import json
import math

import pytest

from panglot.model.run import RunLoadError
from recipes import quickstart

pytestmark = pytest.mark.slow

# Chance for the suite's kind-balanced questions is about 30 %: yes/no and size 50 %, count 33 %,
# shape 25-20 %, colour 12.5 %, position 11 %.
VQA_FLOOR = 0.45


def test_reduced_quickstart_learns(tmp_path):
    metrics = quickstart.main(["--preset", "ci", "--out", str(tmp_path)])
    vqa = metrics["summary"]["vqa"]["all"]
    assert vqa >= VQA_FLOOR, f"VQA accuracy {vqa:.3f} is not well above chance"
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["summary"] == metrics["summary"]
    vocab_size = json.loads((tmp_path / "model" / "run.json").read_text())["backbone"]["vocab_size"]
    heldout = metrics["summary"]["heldout_loss"]  # val documents: far below guessing among the vocabulary
    assert set(heldout) == {"t2i", "caption", "vqa_text"}  # the recipe's lookup documents, as trained
    assert all(loss < 0.5 * math.log(vocab_size) for loss in heldout.values()), heldout
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Text to image" in report and (tmp_path / "eval" / "t2i_samples.png").stat().st_size > 1000
    run = json.loads((tmp_path / "model" / "run.json").read_text())
    assert run["generation"]["cfg_scale"] in quickstart.PRESETS["ci"].scales
    assert run["generation"]["temperature"] in quickstart.PRESETS["ci"].temperatures
    tuning = json.loads((tmp_path / "sampling_tuning.json").read_text())  # the val grid the defaults came from
    tuned = (tuning["best_scale"], tuning["best_temperature"])
    assert tuned == (run["generation"]["cfg_scale"], run["generation"]["temperature"])
    assert len(tuning["sweeps"]) == len(quickstart.PRESETS["ci"].temperatures)
    assert run["generation"]["candidates"] == quickstart.PRESETS["ci"].candidates == 2  # best of 2 drawn at test
    assert set(metrics["summary"]["t2i_scene_one_sample"]) == {"seen", "unseen", "all"}  # and one sample, beside
    assert saved["t2i_one_sample"]["all"]["n"] == saved["t2i"]["all"]["n"]
    assert run["generation"]["caption_candidates"] == 2 and "all" in metrics["summary"]["caption_greedy"]
    # --eval-only trains nothing: the same model tuned and evaluated again gives the same figures (seeded decoding)
    steps = (tmp_path / "train" / "metrics.jsonl").read_text()
    again = quickstart.main(["--preset", "ci", "--out", str(tmp_path), "--eval-only"])
    assert again["summary"] == metrics["summary"] and "unified_s" not in again["timings"]
    assert (tmp_path / "train" / "metrics.jsonl").read_text() == steps


def test_eval_only_needs_a_trained_run(tmp_path):
    with pytest.raises(RunLoadError, match="does not exist"):
        quickstart.main(["--preset", "ci", "--out", str(tmp_path / "nothing"), "--eval-only"])
    assert not (tmp_path / "nothing").exists()  # nothing created either
    with pytest.raises(ValueError, match=r"training options do not apply: train\.max_steps=5"):
        quickstart.main(["--out", str(tmp_path), "--eval-only", "train.max_steps=5"])
    with pytest.raises(ValueError, match=r"training options do not apply: --minutes 2"):
        quickstart.main(["--out", str(tmp_path), "--eval-only", "--minutes", "2"])


@pytest.mark.parametrize("overrides", [["model.code_factors=true", "train.optim.lr=1e-3"]])
def test_overrides_reach_the_unified_recipe(tmp_path, monkeypatch, overrides):
    seen = {}
    monkeypatch.setattr(quickstart.train_unified, "run", lambda cfg, **kwargs: seen.update(cfg=cfg, **kwargs))
    preset = quickstart.PRESETS["ci"]
    quickstart.train_unified_stage(preset, tmp_path, tmp_path / "codec", 2.0, overrides)
    cfg = seen["cfg"]
    assert cfg.model.code_factors and cfg.train.optim.lr == 1e-3 and seen["minutes"] == 2.0
    assert cfg.train.max_steps == 400 and cfg.codec_dir == str(tmp_path / "codec")  # the preset still applies
    with pytest.raises(ValueError, match=r"model\.code_factorz"):
        quickstart.train_unified_stage(preset, tmp_path, tmp_path / "codec", 2.0, ["model.code_factorz=true"])


def test_the_lookup_stage_trains_question_answering_first(tmp_path, monkeypatch):
    """The `lookup` preset's stage: VQA documents alone in OUT/stages/lookup, the user's overrides applied (the
    weights must fit), fitted to its own minutes; the unified training then starts from its weights. Both stages
    answer after marked descriptions."""
    runs = []
    monkeypatch.setattr(quickstart.train_unified, "run", lambda cfg, **kwargs: runs.append((cfg, kwargs)))
    preset, codec = quickstart.PRESETS["lookup"], tmp_path / "codec"
    lookup_dir = quickstart.train_lookup_stage(preset, tmp_path, codec, preset.lookup_minutes, ["model.size=small"])
    assert lookup_dir == tmp_path / "stages" / "lookup"
    quickstart.train_unified_stage(preset, tmp_path, codec, 5.0, ["model.size=small"], init_from=lookup_dir)
    (lookup, lookup_kwargs), (unified, unified_kwargs) = runs
    assert lookup.out_dir == str(lookup_dir) and lookup.codec_dir == str(codec) and lookup.init_from is None
    assert lookup.data.task_probs == {"vqa": 1.0} and lookup.batch_size == 64 and lookup.model.size == "small"
    assert lookup_kwargs["minutes"] == preset.lookup_minutes == 3.0
    assert unified.init_from == str(lookup_dir) and unified.out_dir == str(tmp_path) and unified.model.size == "small"
    assert set(unified.data.task_probs) == {"t2i", "caption", "vqa"} and unified.batch_size == 32
    assert unified_kwargs["minutes"] == 5.0
    for cfg in (lookup, unified):
        assert cfg.model.vqa_describe and cfg.data.vqa_description == "marked" and cfg.data.vqa_mark_weight == 25
    # an exported stage is reused, not trained again; no minutes, or a preset without the stage, trains none
    (lookup_dir / "model").mkdir(parents=True)
    (lookup_dir / "model" / "run.json").write_text("{}")
    assert quickstart.train_lookup_stage(preset, tmp_path, codec, 2.0) == lookup_dir and len(runs) == 2
    assert quickstart.train_lookup_stage(preset, tmp_path / "other", codec, 0) is None
    for name in ("quickstart", "long", "ci"):  # no stage in the other presets
        assert quickstart.train_lookup_stage(quickstart.PRESETS[name], tmp_path / "other", codec, 2.0) is None
    assert len(runs) == 2


@pytest.mark.parametrize(
    "argv, minutes, under_way",
    [(["--preset", "lookup"], 3.0, False), (["--preset", "lookup", "--lookup-minutes", "1.5"], 1.5, False),
     (["--preset", "lookup", "--lookup-minutes", "0"], None, False), (["--preset", "lookup"], None, True),
     ([], None, False)],
)  # fmt: skip
def test_the_quickstart_runs_its_lookup_stage_first(tmp_path, monkeypatch, argv, minutes, under_way):
    """... unless told not to, or the unified training is under way (it resumes from its own checkpoint)."""
    if under_way:
        (tmp_path / "train" / "step_00000100").mkdir(parents=True)
        (tmp_path / "train" / "latest").write_text("step_00000100")
    seen = []
    monkeypatch.setattr(quickstart, "train_codec_stage", lambda *args, **kwargs: tmp_path / "codec")
    monkeypatch.setattr(quickstart.train_unified, "run", lambda cfg, **kwargs: seen.append((cfg, kwargs)))

    class Stop(Exception):
        pass

    def load(out):
        raise Stop  # training is all this test looks at

    monkeypatch.setattr(quickstart.panglot, "load", load)
    with pytest.raises(Stop):
        quickstart.main(["--out", str(tmp_path), *argv])
    if minutes is None:  # no stage: the unified training alone (from fresh weights, or its checkpoint)
        [(unified, _)] = seen
        assert unified.init_from is None
        return
    (lookup, kwargs), (unified, _) = seen
    assert kwargs["minutes"] == minutes and unified.init_from == lookup.out_dir == str(tmp_path / "stages" / "lookup")


def test_lookup_overrides_reach_the_lookup_stage_alone(tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(quickstart.train_unified, "run", lambda cfg, **kwargs: runs.append(cfg))
    preset, codec = quickstart.PRESETS["lookup"], tmp_path / "codec"
    overrides = ["lookup.data.task_probs={vqa: 0.75, caption: 0.25}", "lookup.train.max_steps=300", "train.seed=3"]
    lookup_dir = quickstart.train_lookup_stage(preset, tmp_path, codec, 1.0, overrides)
    quickstart.train_unified_stage(preset, tmp_path, codec, 5.0, overrides, init_from=lookup_dir)
    lookup, unified = runs
    assert lookup.data.task_probs == {"vqa": 0.75, "caption": 0.25} and lookup.train.max_steps == 300
    assert lookup.batch_size == 64 and lookup.train.seed == unified.train.seed == 3  # the rest of the stage stays
    assert set(unified.data.task_probs) == {"t2i", "caption", "vqa"} and unified.train.max_steps == 3000
    with pytest.raises(ValueError, match=r"no lookup stage to apply lookup\.data\.task_probs=.* lookup\.train\.max_steps=300 to"):
        quickstart.train_lookup_stage(preset, tmp_path / "other", codec, 0, overrides)


def test_lookup_minutes_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"--lookup-minutes must be >= 0, got -1"):
        quickstart.main(["--out", str(tmp_path), "--lookup-minutes", "-1"])
    with pytest.raises(ValueError, match=r"training options do not apply: --lookup-minutes 1"):
        quickstart.main(["--out", str(tmp_path), "--eval-only", "--lookup-minutes", "1"])
    with pytest.raises(ValueError, match=r"--preset quickstart has no lookup stage to give --lookup-minutes"):
        quickstart.main(["--out", str(tmp_path), "--lookup-minutes", "1"])
    assert not (tmp_path / "stages").exists()


def test_the_cli_passes_its_budgets_on(monkeypatch):
    from panglot.cli.main import main as cli

    seen = []
    monkeypatch.setattr(quickstart, "main", seen.append)
    assert cli(["quickstart", "--out", "q", "--minutes", "5", "--lookup-minutes", "0", "model.size=small"]) == 0
    argv = seen[0]
    assert argv[argv.index("--minutes") + 1] == "5.0" and argv[argv.index("--lookup-minutes") + 1] == "0.0"
    assert argv[-1] == "model.size=small"
    assert cli(["quickstart"]) == 0 and "--lookup-minutes" not in seen[1]  # the preset's own


def test_codec_stages_train_on_the_quickstarts_threads(tmp_path, monkeypatch):
    """The stage recipes default to 1 thread (a machine shared with other jobs); the quickstart runs its stages
    one at a time, so every stage gets the threads the unified stage gets (the preset's overrides stay)."""
    seen = {}

    def build(name, root, overrides):
        seen.update(name=name, overrides=overrides)
        (tmp_path / "codec.json").write_text("{}")
        return tmp_path

    monkeypatch.setattr(quickstart.stages, "build", build)
    quickstart.train_codec_stage(quickstart.PRESETS["ci"], tmp_path, "qformer", threads=2)
    overrides = seen["overrides"]
    assert set(overrides) == set(quickstart.stages.STAGES) and seen["name"] == "qformer"
    assert all(stage["threads"] == 2 for stage in overrides.values())
    assert overrides["pixel_vq"]["train"] == {"max_minutes": 1.0}


@pytest.mark.parametrize(
    "argv, expect_deadline", [([], True), (["--minutes", "3"], False), (["--codec", "qformer"], False)]
)
def test_the_quickstart_holds_its_15_minutes_unless_given_minutes(tmp_path, monkeypatch, argv, expect_deadline):
    """The quickstart preset hands the unified stage a deadline 15 minutes after it started, with the preset's
    reserve; ``--minutes`` is the user's own budget, and no deadline cuts it; nor does one cut the unified stage of
    another codec, whose extra stages come first."""
    import time

    seen = {}
    monkeypatch.setattr(quickstart, "train_codec_stage", lambda *args, **kwargs: tmp_path / "codec")
    monkeypatch.setattr(quickstart.train_unified, "run", lambda cfg, **kwargs: seen.update(kwargs))

    class Stop(Exception):
        pass

    def load(out):
        raise Stop  # training is all this test looks at

    monkeypatch.setattr(quickstart.panglot, "load", load)
    before = time.perf_counter()
    with pytest.raises(Stop):
        quickstart.main(["--out", str(tmp_path), *argv])
    preset, deadline = quickstart.PRESETS["quickstart"], seen["deadline"]
    assert seen["minutes"] == (3.0 if "--minutes" in argv else preset.unified_minutes)
    if not expect_deadline:
        assert deadline is None
        return
    assert preset.deadline_minutes == 15.0 and deadline.reserve_steps == preset.reserve_steps
    assert before + 15 * 60 <= deadline.end <= time.perf_counter() + 15 * 60
