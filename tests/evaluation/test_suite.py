import json

import numpy as np
import pytest
from PIL import Image

from panglot.evaluation import (
    EvalSuite,
    cfg_sweep,
    eval_caption,
    eval_text_to_image,
    eval_vqa,
    evaluate,
    sampling_sweep,
    sweep_series,
    tqdm_progress,
)
from panglot.world import language
from panglot.world.render import render
from panglot.world.scene import HELD_OUT, Scene
from panglot.world.vqa import KINDS

CELLS = [(g, str(n)) for g in ("seen", "unseen") for n in (1, 2, 3)]


def cells(table):
    return [table[g][n] for g, n in CELLS]


def test_suite_is_seeded_balanced_and_split_by_group(suite):
    assert len(suite) == 24
    again = EvalSuite("test", n_per_cell=4, seed=0)
    assert [it.prompt for it in again.items] == [it.prompt for it in suite.items]
    assert [it.qa for it in again.items] == [it.qa for it in suite.items]
    other = EvalSuite("test", n_per_cell=4, seed=1)
    assert [it.prompt for it in other.items] != [it.prompt for it in suite.items]
    bigger = EvalSuite("test", n_per_cell=6, seed=0)
    for g, n in CELLS:
        small = [it.prompt for it in suite.items if (it.group, str(it.n_objects)) == (g, n)]
        large = [it.prompt for it in bigger.items if (it.group, str(it.n_objects)) == (g, n)]
        assert len(small) == 4 and large[:4] == small  # a larger suite extends every cell
    for it in suite.items:
        held = any(o.pair in HELD_OUT for o in it.scene.objects)
        assert held == (it.group == "unseen")
        assert it.image.shape == (64, 64, 3) and len(it.qa) == 6


def test_val_suite_has_seen_prompts_only():
    val = EvalSuite("val", n_per_cell=2)
    assert val.groups == ("seen",) and len(val) == 6
    assert not any(o.pair in HELD_OUT for it in val.items for o in it.scene.objects)
    with pytest.raises(ValueError, match="unknown suite split 'train'"):
        EvalSuite("train")


def test_oracle_model_scores_100_percent_everywhere(suite, oracle_model):
    metrics = evaluate(oracle_model, suite)
    for cell in cells(metrics["t2i"]):
        assert cell["n"] == 4
        assert all(v == 1.0 for k, v in cell.items() if k != "n")
    assert all(c == {"accuracy": 1.0, "n": 4} for c in cells(metrics["caption"]))
    assert all(c == {"accuracy": 1.0, "n": 24} for c in cells(metrics["vqa"]))
    assert metrics["vqa"]["all"]["n"] == 6 * 24
    assert set(metrics["vqa"]["per_kind"]) == set(KINDS)
    assert all(t["all"]["accuracy"] == 1.0 for t in metrics["vqa"]["per_kind"].values())
    assert json.loads(json.dumps(metrics)) == metrics
    assert metrics["suite"]["items"] == 24
    # whole lists per call: one call per task at the default batch sizes
    assert oracle_model.calls == [("draw", 24), ("caption", 24), ("ask", 144)]


def test_half_wrong_colours_halve_scene_and_colour_accuracy_only(suite, half_wrong_model):
    t2i = eval_text_to_image(half_wrong_model, suite).metrics
    for cell in cells(t2i):
        assert cell["scene"] == cell["color"] == cell["object"] == 0.5
        assert cell["shape"] == cell["size"] == cell["position"] == cell["count"] == 1.0
    caption = eval_caption(half_wrong_model, suite).metrics
    assert all(c["accuracy"] == 0.5 for c in cells(caption))
    vqa = eval_vqa(half_wrong_model, suite)
    per_kind = vqa.metrics["per_kind"]
    assert per_kind["exists"]["all"]["accuracy"] == pytest.approx(
        np.mean([s.answer == "yes" for s in vqa.samples if s.kind == "exists"])
    )
    assert 0 < per_kind["exists"]["all"]["accuracy"] < 1
    assert per_kind["where"]["all"]["accuracy"] == 0.0
    wrong = [s for s in vqa.samples if not s.correct]
    assert wrong and all(s.predicted == "Yes." for s in wrong)


def test_samples_keep_what_the_oracle_saw(suite, half_wrong_model):
    result = eval_text_to_image(half_wrong_model, suite, batch_size=24)
    assert len(result.samples) == 24
    assert [s.correct for s in result.samples] == [i % 2 == 0 for i in range(24)]
    odd = result.samples[1]
    assert len(odd.parsed) == len(odd.item.scene)
    assert [o.color for o in odd.parsed.objects] != [o.color for o in odd.item.scene.objects]


def test_batches_seeds_and_progress(suite, oracle_model):
    events = []
    eval_text_to_image(oracle_model, suite, seed=7, batch_size=10, progress=lambda *e: events.append(e))
    assert oracle_model.calls == [("draw", 10), ("draw", 10), ("draw", 4)]
    assert oracle_model.seeds == [7, 17, 27]  # item k draws with seed + k under per-row seeding
    assert events == [("t2i", 0, 24), ("t2i", 10, 24), ("t2i", 20, 24), ("t2i", 24, 24)]


def test_cfg_sweep_finds_the_scale_that_works(suite, needs_guidance_model):
    sweep = cfg_sweep(needs_guidance_model, suite, [1.0, 3.0, 5.0])
    assert sweep["scales"] == [1.0, 3.0, 5.0]
    assert sweep["best_scale"] == 3.0
    assert sweep_series(sweep, "seen", "1") == [1.0, 1.0, 1.0]
    assert sweep_series(sweep, "unseen", "3") == [0.0, 1.0, 1.0]
    assert sweep_series(sweep, "all", "all") == pytest.approx([1 / 3, 1.0, 1.0])
    assert json.loads(json.dumps(sweep)) == sweep


class NeedsGuidanceOrCold:
    """Draws the prompt's scene, without its last object in multi-object scenes unless ``cfg / temperature >= 4``;
    records the temperatures it was asked for."""

    def __init__(self) -> None:
        self.temperatures: list[float | None] = []

    def draw(self, prompts, seed=0, cfg=None, n=1, temperature=None):
        self.temperatures.append(temperature)
        guided = (cfg or 1.0) / (1.0 if temperature is None else temperature) >= 4
        scenes = [language.parse_caption(p) for p in prompts]
        scenes = [s if guided or len(s) == 1 else Scene(s.objects[:-1]) for s in scenes]
        return [Image.fromarray(render(s)) for s in scenes for _ in range(n)]


def test_sampling_sweep_picks_the_smallest_scale_that_works_then_the_warmest_temperature(suite):
    """At temperature 1 only scale 5 draws every object, at 0.5 scales 2, 3 and 5 do: the sweep takes (2, 0.5).
    Where several temperatures draw equally well at the best scale, the warmest is taken."""
    cold = NeedsGuidanceOrCold()
    sweep = sampling_sweep(cold, suite, [1.0, 2.0, 3.0, 5.0], temperatures=[1.0, 0.5])
    assert (sweep["best_scale"], sweep["best_temperature"]) == (2.0, 0.5)
    assert [s["temperature"] for s in sweep["sweeps"]] == [1.0, 0.5] and set(cold.temperatures) == {1.0, 0.5}
    assert sweep_series(sweep["sweeps"][0], "all", "all") == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert sweep_series(sweep["sweeps"][1], "all", "all") == pytest.approx([1 / 3, 1.0, 1.0, 1.0])
    assert json.loads(json.dumps(sweep)) == sweep
    tie = sampling_sweep(NeedsGuidanceOrCold(), suite, [1.0, 5.0], temperatures=[0.5, 1.0, 0.8])
    assert (tie["best_scale"], tie["best_temperature"]) == (5.0, 1.0)  # at 5 every temperature draws all
    with pytest.raises(ValueError, match="temperatures > 0"):
        sampling_sweep(cold, suite, [1.0], temperatures=[0.0])
    eval_text_to_image(cold, suite, cfg=1.0)
    assert cold.temperatures[-1] is None  # no temperature given: the model's default, not 1.0 forced


class BadModel:
    def __init__(self, size=(64, 64), extra=0):
        self.size, self.extra = size, extra

    def draw(self, prompts, seed=0, cfg=None, n=1):
        return [Image.new("RGB", self.size, "white")] * (len(prompts) * n + self.extra)


def test_model_output_is_checked(suite):
    with pytest.raises(ValueError, match=r"64 x 64 RGB image, got uint8 array of shape \(32, 32, 3\)"):
        eval_text_to_image(BadModel(size=(32, 32)), suite)
    with pytest.raises(ValueError, match=r"model\.draw returned 25 results for 24 inputs"):
        eval_text_to_image(BadModel(extra=1), suite)
    blank = eval_text_to_image(BadModel(), suite).metrics
    assert blank["all"]["scene"] == 0.0 and blank["all"]["count"] == 0.0
    with pytest.raises(ValueError, match="unknown tasks"):
        evaluate(BadModel(), suite, tasks=["t2v"])


def test_tqdm_progress_shows_one_bar_per_run(suite, oracle_model, capsys):
    progress = tqdm_progress()
    for _ in range(2):
        eval_caption(oracle_model, suite, batch_size=10, progress=progress)
    err = capsys.readouterr().err
    assert err.count("24/24") == 2 and "caption" in err
