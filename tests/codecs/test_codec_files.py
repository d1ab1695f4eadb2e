"""Bad codec directories give errors that name the file, what was expected and what was found."""

from __future__ import annotations

import json

import pytest
import torch

from panglot.codecs import CodecLoadError, load_codec, register_codec
from panglot.codecs.image_vq import PixelVQ


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    codec = PixelVQ(PixelVQ.debug_config())
    codec.save(tmp_path / "codec")
    return tmp_path / "codec"


def edit_meta(directory, **changes):
    path = directory / "codec.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_codec(tmp_path / "nowhere")


def test_not_a_codec_directory(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(CodecLoadError, match=r"not a codec directory: expected codec.json.*model.bin"):
        load_codec(tmp_path)


def test_invalid_json(saved):
    (saved / "codec.json").write_text("{not json")
    with pytest.raises(CodecLoadError, match=r"codec.json: not valid JSON"):
        load_codec(saved)


def test_missing_keys(saved):
    (saved / "codec.json").write_text(json.dumps({"kind": "image_vq"}))
    with pytest.raises(CodecLoadError, match=r"missing key\(s\) \['format_version', 'config'\]"):
        load_codec(saved)


def test_wrong_expected_kind(saved):
    with pytest.raises(CodecLoadError, match="expected a codec of kind 'speech_vq', found kind 'image_vq'"):
        load_codec(saved, kind="speech_vq")


def test_unknown_kind(saved):
    edit_meta(saved, kind="hologram")
    with pytest.raises(CodecLoadError, match=r"unknown codec kind 'hologram'; known kinds: .*image_vq"):
        load_codec(saved)


def test_newer_format_version(saved):
    newer = PixelVQ.format_version + 1
    edit_meta(saved, format_version=newer, panglot_version="9.0")
    expected = rf"format_version {newer} .*panglot 9.0.*reads versions 1 to {PixelVQ.format_version}\b"
    with pytest.raises(CodecLoadError, match=expected):
        load_codec(saved)


def test_unknown_config_key(saved):
    meta = json.loads((saved / "codec.json").read_text())
    meta["config"]["codebok_size"] = 3
    (saved / "codec.json").write_text(json.dumps(meta))
    with pytest.raises(CodecLoadError, match=r"unknown key 'codebok_size'.*did you mean 'codebook_size'"):
        load_codec(saved)


def test_missing_weights(saved):
    (saved / "codec.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"codec.safetensors: weights file missing"):
        load_codec(saved)


def test_corrupt_weights(saved):
    (saved / "codec.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CodecLoadError, match="not a readable safetensors file"):
        load_codec(saved)


def test_weights_that_do_not_fit_the_config(saved):
    meta = json.loads((saved / "codec.json").read_text())
    meta["config"]["latent_dim"] = 24
    (saved / "codec.json").write_text(json.dumps(meta))
    with pytest.raises(CodecLoadError, match=r"weights do not fit the image_vq config: .*expected \(24"):
        load_codec(saved)


def test_register_rejects_duplicate_kind():
    with pytest.raises(ValueError, match="already registered"):

        @register_codec
        class Impostor(PixelVQ):
            kind = "image_vq"


def test_save_leaves_no_temporaries(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["codec.json", "codec.safetensors"]
