"""The `panglot` command on a tiny trained run, and its errors for people."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panglot.cli.main import main
from panglot.model.run import read_run_meta, update_run_meta


def test_draw_caption_ask_round_trip(debug_run, tmp_path, capsys):
    out = tmp_path / "pic.png"
    assert main(["draw", str(debug_run), "a large red circle at the top left", "-o", str(out), "--seed", "2"]) == 0
    assert Image.open(out).size == (64, 64)
    assert main(["draw", str(debug_run), "a small cyan cross at the left", "-o", str(out), "-n", "2"]) == 0
    assert (tmp_path / "pic-0.png").is_file() and (tmp_path / "pic-1.png").is_file()
    capsys.readouterr()
    assert main(["caption", str(debug_run), str(out)]) == 0
    assert isinstance(capsys.readouterr().out, str)
    assert main(["caption", str(debug_run), str(out), "--candidates", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    assert main(["caption", str(debug_run), str(out), "--candidates", "3", "--direct-weight", "0.5"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    assert main(["ask", str(debug_run), str(out), "how many objects are there?"]) == 0
    answer = capsys.readouterr().out
    assert main(["ask", str(debug_run), str(out), "how many objects are there?", "--explain"]) == 0
    assert capsys.readouterr().out == answer  # a run that answers at once has nothing to explain
    assert main(["ask", str(debug_run), str(out), "how many objects are there?", "--from-caption"]) == 0
    assert capsys.readouterr().out == answer  # nor a caption to answer from


def test_user_mistakes_exit_2_with_one_line(debug_run, tmp_path, capsys):
    assert main(["draw", str(tmp_path / "missing"), "a red circle"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["draw", str(debug_run), "a purple unicorn", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "unicorn" in err and "Traceback" not in err
    bad = tmp_path / "small.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(bad)
    assert main(["caption", str(debug_run), str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "64x64" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", str(debug_run), str(bad), "--direct-weight", "-1"])
    assert exit_info.value.code == 2 and "expected a weight >= 0, got '-1'" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert main(["ask", str(debug_run), str(broken), "how many objects are there?"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    recipe = Path(__file__).parents[2] / "configs" / "dual_encoder.yaml"
    for device, message in (("gpu0", "unknown device 'gpu0'"), ("cuda:7", "device 'cuda:7': this machine has")):
        assert main(["train", str(recipe), f"out_dir={tmp_path / 'dual'}", "--device", device]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "dual").exists()  # refused before anything was written


def test_eval_sweeps_the_runs_scale_at_its_temperature_and_takes_other_scales(debug_run, tmp_path, capsys):
    """`panglot eval` writes metrics.json and a report with a CFG sweep: by default scale 1 and the run's tuned
    scale, drawn at the run's tuned temperature; `--sweep` names other scales, `none` skips it."""
    run = tmp_path / "run"
    shutil.copytree(debug_run, run)
    update_run_meta(run, generation={**read_run_meta(run)["generation"], "cfg_scale": 2.0, "temperature": 0.7})
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--n-per-cell", "1", "--out", str(out)]) == 0
    assert "t2i_scene" in json.loads(capsys.readouterr().out)
    sweep = json.loads((out / "metrics.json").read_text())["cfg_sweep"]
    assert (sweep["scales"], sweep["temperature"]) == ([1.0, 2.0], 0.7)
    assert "guidance scale at sampling temperature 0.7" in (out / "report.md").read_text()
    assert main(["eval", str(run), "--n-per-cell", "1", "--out", str(out), "--sweep", "1,3", "--cfg", "1.5"]) == 0
    assert json.loads((out / "metrics.json").read_text())["cfg_sweep"]["scales"] == [1.0, 3.0]
    assert main(["eval", str(run), "--n-per-cell", "1", "--out", str(out), "--sweep", "none"]) == 0
    assert "cfg_sweep" not in json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(run), "--sweep", "0.5,2"])
    assert exit_info.value.code == 2 and "guidance scales must be >= 1" in capsys.readouterr().err


def test_tune_makes_the_best_val_pair_the_runs_drawing_defaults(debug_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(debug_run, run)
    args = ["tune", str(run), "--n-per-cell", "2", "--scales", "1,2", "--temperatures", "1,0.5", "--candidates", "2"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    tuning = json.loads((run / "sampling_tuning.json").read_text())
    generation = read_run_meta(run)["generation"]
    assert printed == generation and generation["candidates"] == 2  # the tuning itself drew one sample per prompt
    assert (generation["cfg_scale"], generation["temperature"]) == (tuning["best_scale"], tuning["best_temperature"])
    assert all(s["candidates"] == 1 for s in tuning["sweeps"])
    assert tuning["temperatures"] == [1.0, 0.5] and [s["scales"] for s in tuning["sweeps"]] == [[1.0, 2.0]] * 2
    out = tmp_path / "cold.png"
    assert main(["draw", str(run), "a large red circle at the top left", "-o", str(out), "--temperature", "0.5"]) == 0
    assert Image.open(out).size == (64, 64)
    assert main(["tune", str(run), "--n-per-cell", "1", "--scales", "1,3", "--temperatures", "1", "--cfg-plausibility", "0.2"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])  # after the drawing's path
    assert printed["cfg_plausibility"] == 0.2 == read_run_meta(run)["generation"]["cfg_plausibility"]
    assert read_run_meta(run)["generation"]["candidates"] == 2  # kept from the first tuning
    bad_args = [(["--temperatures", "1,0"], "temperature must be > 0"), (["--scales", "0.5"], ">= 1")]
    bad_args += [(["--cfg-plausibility", "1"], "0 <= alpha < 1")]
    for bad, message in [*bad_args, (["--candidates", "0"], "count >= 1")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["tune", str(run), *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
