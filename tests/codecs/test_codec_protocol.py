"""Conformance: every registered codec kind passes the same checks, built from its ``debug_config``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from panglot.codecs import Codec, codec_class, codec_kinds, load_codec
from panglot.world.render import render
from panglot.world.splits import sample_scene


def sample_items(modality: str, n: int) -> list:
    """User-facing items of a modality; a new modality must add its samples here."""
    if modality == "image":
        rng = np.random.default_rng(0)
        return [render(sample_scene(rng, "train")) for _ in range(n)]
    raise AssertionError(f"no sample items for modality {modality!r}: add them to this test")


def check_item(modality: str, item, codec: Codec) -> None:
    if modality == "image":
        assert isinstance(item, Image.Image)
        assert item.mode == "RGB" and item.size == (codec.image_size, codec.image_size)


@pytest.fixture(params=codec_kinds())
def codec(request) -> Codec:
    torch.manual_seed(0)
    cls = codec_class(request.param)
    codec = cls(cls.debug_config())
    # One forward in training mode, as training would, so data-initialised state (k-means) exists.
    codec.train()
    codec(codec.items_to_tensor(sample_items(cls.modality, 8)))
    return codec.eval()


def test_registry_attributes(codec: Codec):
    assert codec_class(codec.kind) is type(codec)
    assert isinstance(codec.modality, str) and codec.modality
    assert isinstance(codec.vocab_size, int) and codec.vocab_size >= 0
    assert isinstance(codec.tokens_per_item, int) and codec.tokens_per_item > 0


def test_encode_decode_shapes_dtypes_and_range(codec: Codec):
    items = sample_items(codec.modality, 3)
    ids = codec.encode(items)
    if codec.is_continuous:
        assert ids.dtype.is_floating_point and ids.shape[:2] == (3, codec.tokens_per_item)
    else:
        assert ids.dtype == torch.long and ids.shape == (3, codec.tokens_per_item)
        assert int(ids.min()) >= 0 and int(ids.max()) < codec.vocab_size
    torch.testing.assert_close(codec.encode_tensor(codec.items_to_tensor(items)), ids)
    decoded = codec.decode(ids)
    assert len(decoded) == 3
    for item in decoded:
        check_item(codec.modality, item, codec)


def test_encode_never_changes_state(codec: Codec):
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    codec.train()  # even in training mode, encode_tensor is a pure lookup
    x = codec.items_to_tensor(sample_items(codec.modality, 4))
    first = codec.encode_tensor(x)
    torch.testing.assert_close(codec.encode_tensor(x), first)
    for name, value in codec.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=f"encode changed {name}")


def test_decode_rejects_bad_ids(codec: Codec):
    if codec.is_continuous:
        pytest.skip("continuous codecs have no ids")
    n = codec.tokens_per_item
    with pytest.raises(ValueError, match=rf"\[0, {codec.vocab_size}\)"):
        codec.decode(torch.full((1, n), codec.vocab_size))
    with pytest.raises(ValueError, match=rf"\(B, {n}\)"):
        codec.decode(torch.zeros(1, n + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        codec.decode(torch.zeros(1, n))


def test_save_load_round_trip(codec: Codec, tmp_path):
    items = sample_items(codec.modality, 4)
    codec.save(tmp_path, metrics={"note": 1.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codec.json", "codec.safetensors"]
    meta = json.loads((tmp_path / "codec.json").read_text())
    assert meta["kind"] == codec.kind and meta["format_version"] == type(codec).format_version
    assert meta["metrics"] == {"note": 1.5} and "panglot_version" in meta

    loaded = load_codec(tmp_path)
    assert type(loaded) is type(codec) and loaded.config == codec.config
    assert loaded.metrics == {"note": 1.5} and not loaded.training
    ids = codec.encode(items)
    torch.testing.assert_close(loaded.encode(items), ids, rtol=0, atol=0)
    for a, b in zip(codec.decode(ids), loaded.decode(ids)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert type(codec).load(tmp_path).kind == codec.kind
