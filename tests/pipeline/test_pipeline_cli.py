"""The `panglot` command on a tiny trained run, and its errors for people."""

from __future__ import annotations

import numpy as np
from PIL import Image

from panglot.cli.main import main


def test_draw_caption_ask_round_trip(debug_run, tmp_path, capsys):
    out = tmp_path / "pic.png"
    assert main(["draw", str(debug_run), "a large red circle at the top left", "-o", str(out), "--seed", "2"]) == 0
    assert Image.open(out).size == (64, 64)
    assert main(["draw", str(debug_run), "a small cyan cross at the left", "-o", str(out), "-n", "2"]) == 0
    assert (tmp_path / "pic-0.png").is_file() and (tmp_path / "pic-1.png").is_file()
    capsys.readouterr()
    assert main(["caption", str(debug_run), str(out)]) == 0
    assert isinstance(capsys.readouterr().out, str)
    assert main(["ask", str(debug_run), str(out), "how many objects are there?"]) == 0


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
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert main(["ask", str(debug_run), str(broken), "how many objects are there?"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
