"""User image validation (panglot.data.images): every accepted form, every refused one, with files the
test writes itself."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from panglot.data.images import ImageInputError, load_image, load_images


@pytest.fixture
def img(world_images) -> np.ndarray:
    return world_images(1, seed=3)[1][0]


def save(pil: Image.Image, path, fmt="PNG"):
    pil.save(path, format=fmt)
    return path


def test_rgb_in_every_form_gives_the_same_array(img, tmp_path):
    path = save(Image.fromarray(img), tmp_path / "a.png")
    for x in (img, Image.fromarray(img), path, str(path), path.read_bytes()):
        out = load_image(x)
        assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
        np.testing.assert_array_equal(out, img)


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match=r"nope.png: no such file"):
        load_image(tmp_path / "nope.png")


def test_directory(tmp_path):
    with pytest.raises(ImageInputError, match="expected an image file"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text")
    with pytest.raises(ImageInputError, match=r"notes.png: not an image file"):
        load_image(path)


def test_truncated_png(img, tmp_path):
    data = save(Image.fromarray(img), tmp_path / "full.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match=r"cut.png: truncated or corrupt"):
        load_image(cut)
    with pytest.raises(ImageInputError, match=r"image bytes: truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_wrong_size_is_refused_not_resized(tmp_path):
    path = save(Image.new("RGB", (128, 96), "white"), tmp_path / "big.png")
    with pytest.raises(ImageInputError, match=r"big.png: expected 64x64, got 128x96"):
        load_image(path)
    with pytest.raises(ImageInputError, match="expected 64x64, got 32x64"):
        load_image(np.zeros((64, 32, 3), np.uint8))


def test_opaque_rgba_is_plain_rgb(img, tmp_path):
    rgba = np.concatenate([img, np.full((64, 64, 1), 255, np.uint8)], axis=2)
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(path), img)
    np.testing.assert_array_equal(load_image(rgba), img)


def test_transparency_composites_on_white(img):
    rgba = np.concatenate([img, np.full((64, 64, 1), 255, np.uint8)], axis=2)
    rgba[:10, :, :3] = (0, 0, 0)
    rgba[:10, :, 3] = 0  # fully transparent black -> background white
    rgba[10, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    out = load_image(Image.fromarray(rgba, "RGBA"))
    assert (out[:10] == 255).all()
    np.testing.assert_array_equal(out[10, 0], (127, 127, 127))
    np.testing.assert_array_equal(out[11:], img[11:])


def test_grey_bilevel_and_palette_convert(img, tmp_path):
    grey = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    for pil in (Image.fromarray(grey, "L"),):
        out = load_image(save(pil, tmp_path / "g.png"))
        np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    bilevel = Image.fromarray(grey > 100).convert("1")
    assert set(np.unique(load_image(bilevel))) <= {0, 255}
    pal = Image.fromarray(img).quantize(colors=16)
    assert pal.mode == "P"
    np.testing.assert_array_equal(load_image(save(pal, tmp_path / "p.png")), img)
    np.testing.assert_array_equal(load_image(grey), np.repeat(grey[:, :, None], 3, axis=2))


def test_grey_with_alpha(tmp_path):
    la = Image.new("LA", (64, 64), (0, 0))  # black, fully transparent
    assert (load_image(save(la, tmp_path / "la.png")) == 255).all()


def test_palette_with_transparency(img, tmp_path):
    pal = Image.fromarray(img).quantize(colors=16)
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])  # the background entry
    path = tmp_path / "t.png"
    pal.save(path, transparency=pal.info["transparency"])
    np.testing.assert_array_equal(load_image(path), img)  # background was white: unchanged


def test_sixteen_bit_grey_is_scaled(tmp_path):
    grey8 = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 256
    pil = Image.fromarray((grey8 * 257).astype(np.uint16))
    assert pil.mode.startswith("I;16")
    out = load_image(save(pil, tmp_path / "g16.png"))
    np.testing.assert_array_equal(out[:, :, 0], grey8.astype(np.uint8))


@pytest.mark.parametrize("mode", ["I", "F"])
def test_wide_modes_are_refused(mode):
    pil = Image.new(mode, (64, 64), 1000)
    with pytest.raises(ImageInputError, match=rf"got Pillow mode '{mode}'.*no fixed range"):
        load_image(pil)


def test_cmyk_converts(tmp_path):
    pil = Image.new("CMYK", (64, 64), (0, 0, 0, 0))  # no ink = white
    out = load_image(save(pil, tmp_path / "c.jpg", fmt="JPEG"))
    assert out.shape == (64, 64, 3) and out.min() >= 250


def test_numpy_dtype_and_shape(img):
    with pytest.raises(ImageInputError, match=r"expected dtype uint8.*got float32"):
        load_image(img.astype(np.float32) / 255)
    with pytest.raises(ImageInputError, match=r"expected shape \(H, W, 3\).*got \(64, 64, 2\)"):
        load_image(img[:, :, :2])
    with pytest.raises(ImageInputError, match=r"got \(1, 64, 64, 3\)"):
        load_image(img[None])


def test_unsupported_type():
    with pytest.raises(ImageInputError, match="expected a path, bytes, PIL image or numpy array, got int"):
        load_image(7)


def test_load_images_names_the_bad_index(img, tmp_path):
    batch = load_images([img, Image.fromarray(img)])
    assert batch.shape == (2, 64, 64, 3)
    with pytest.raises(ImageInputError, match=r"item 2: expected 64x64, got 8x8"):
        load_images([img, img, np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ImageInputError, match=r"item 1 \(.*gone.png\): no such file"):
        load_images([img, tmp_path / "gone.png"])
    with pytest.raises(ImageInputError, match="expected a list of images"):
        load_images(img)
    with pytest.raises(ImageInputError, match="empty list"):
        load_images([])
