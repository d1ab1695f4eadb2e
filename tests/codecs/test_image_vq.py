"""Pixel VQ: shapes per quantizer, config checks, the pure id lookup, and a loss that falls."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from panglot.codecs import CodecLoadError, images_to_tensor, load_codec
from panglot.codecs.image_vq import PixelVQ, PixelVQConfig, pixel_vq_loss
from panglot.codecs.image_vq.model import MaskColourStem, compose_palette, edge_mask, token_colours


def tiny(**changes) -> PixelVQConfig:
    cfg = PixelVQ.debug_config()
    return PixelVQConfig(**{**cfg.__dict__, **changes})


@pytest.mark.parametrize(
    ("changes", "vocab"),
    [
        ({"quantizer": "vq", "pixels": "rgb", "encoder_input": "pixels"}, 64),
        ({"quantizer": "fsq", "fsq_levels": [5, 4, 3], "pixels": "rgb", "encoder_input": "pixels"}, 60),
        ({"quantizer": "lfq", "pixels": "rgb", "encoder_input": "pixels"}, 64),
    ],
)
def test_shapes_per_quantizer(changes, vocab, world_images):
    torch.manual_seed(0)
    codec = PixelVQ(tiny(**changes))
    x = images_to_tensor(world_images(3)[1])
    out = codec(x)
    assert out.decoded.shape == (3, 3, 64, 64) and out.ids.shape == (3, 64) and out.aux_loss.ndim == 0
    codec.eval()
    ids = codec.encode_tensor(x)
    assert codec.vocab_size == vocab and ids.shape == (3, 64) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < vocab
    assert codec.decode_tensor(ids).shape == (3, 3, 64, 64)


def test_palette_output_decodes_to_exact_palette_colours(world_images):
    torch.manual_seed(0)
    codec = PixelVQ(tiny(pixels="palette"))
    x = images_to_tensor(world_images(2)[1])
    assert codec(x).decoded.shape == (2, 9, 64, 64)  # background + 8 colours
    codec.eval()
    pixels = codec.decode_tensor(codec.encode_tensor(x)).permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.cdist(pixels, codec.palette).min(dim=1).values.max() < 1e-6
    torch.testing.assert_close(
        codec.palette_index(codec.palette.T[None, :, :, None]), torch.arange(9)[None, :, None]
    )


def test_token_grid_follows_the_config():
    assert PixelVQ(tiny(patch=4, channels=[8, 16])).tokens_per_item == 64
    assert PixelVQ(tiny(patch=4, channels=[16])).tokens_per_item == 256


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 60}, "divisible by patch"),
        ({"quantizer": "lfq", "codebook_size": 100}, "power-of-2"),
        ({"patch": 4, "channels": [8, 16], "upsample_channels": [8, 8, 8]}, r"upsample_channels\) = 8"),
        ({"pixels": "rgb", "encoder_input": "mask_colour"}, 'needs pixels "palette"'),
        (
            {"code_split": "shape_colour", "palette_head": "classes"},
            r'code_split "shape_colour" needs .*"classes"',
        ),
        (
            {"code_split": "shape_colour", "encoder_input": "pixels"},
            r'code_split "shape_colour" needs .*"pixels"',
        ),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(**changes)


def test_constructor_wants_its_config():
    with pytest.raises(TypeError, match="expects a PixelVQConfig"):
        PixelVQ({"patch": 8})


def test_pure_lookup_matches_the_library(world_images):
    torch.manual_seed(0)
    codec = PixelVQ(tiny(quantizer="vq"))
    x = images_to_tensor(world_images(8)[1])
    codec(x)  # training-mode forward: k-means init
    codec.eval()
    with torch.no_grad():
        _, lib_ids, _ = codec.quantizer.vq(codec._latents(x)[0])
    torch.testing.assert_close(codec.encode_tensor(x), lib_ids)


def test_check_images_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"expected a float tensor \(B, 3, 64, 64\)"):
        PixelVQ(tiny()).encode_tensor(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_a_few_steps_make_the_loss_fall(quantizer, world_images):
    torch.manual_seed(0)
    codec = PixelVQ(tiny(quantizer=quantizer, fsq_levels=[4, 4, 4], pixels="rgb", encoder_input="pixels"))
    opt = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    x = images_to_tensor(world_images(16, seed=1)[1])
    losses = []
    for _ in range(25):
        loss, _ = pixel_vq_loss(codec, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_edge_mask_marks_both_sides_of_a_colour_edge():
    classes = torch.zeros(1, 6, 6, dtype=torch.long)
    classes[0, 2:4, 2:4] = 3  # a 2 x 2 square: every pixel within one step of it is an edge pixel
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, 1:5, 1:5] = True
    torch.testing.assert_close(edge_mask(classes), expected)


def test_mask_head_gives_log_probabilities_and_classes_head_raw_logits(world_images):
    torch.manual_seed(0)
    x = images_to_tensor(world_images(2)[1])
    mask = PixelVQ(tiny(palette_head="mask"))(x).decoded
    torch.testing.assert_close(mask.logsumexp(dim=1), torch.zeros(2, 64, 64), atol=1e-5, rtol=0)
    classes = PixelVQ(tiny(palette_head="classes"))(x).decoded
    assert classes.shape == mask.shape and classes.logsumexp(dim=1).abs().max() > 0.1


def test_a_codec_directory_from_before_the_mask_head_fails_naming_the_moved_conv(tmp_path):
    codec = PixelVQ(tiny())
    codec.save(tmp_path)
    state = load_file(str(tmp_path / "codec.safetensors"))
    # the old layout: the head conv sat in the decoder itself
    old = {k.replace(".conv.", "."): v for k, v in state.items()}
    save_file(old, str(tmp_path / "codec.safetensors"))
    with pytest.raises(CodecLoadError, match=r"decoder\.\d+\.conv\.weight"):
        load_codec(tmp_path)


def test_mask_colour_stem_sees_one_shape_whatever_its_colour():
    onehot = torch.zeros(1, 9, 8, 8)
    onehot[0, 0] = 1.0
    onehot[0, 0, 1:3, 2:7] = 0.0
    onehot[0, 3, 1:3, 2:7] = 1.0  # a 2 x 5 bar in colour 3
    recoloured = onehot[:, [0, 1, 2, 7, 4, 5, 6, 3, 8]]  # colours 3 and 7 swapped: the bar is colour 7
    stem = MaskColourStem(patch=4)
    out, out_recoloured = stem(onehot), stem(recoloured)  # (1, 16 + 8, 2, 2)
    assert out.shape == (1, 24, 2, 2)
    torch.testing.assert_close(out[:, :16], out_recoloured[:, :16])  # the shape channels: the same
    torch.testing.assert_close(out[:, 16 + 2], out_recoloured[:, 16 + 6])  # colour 3's share is colour 7's
    torch.testing.assert_close(out[:, 16:].sum(dim=1), out[:, :16].mean(dim=1))  # shares add up to the mask's
    assert out[0, 16 + 2, 0, 0] == 2 * 2 / 16  # the top-left patch holds 2 x 2 bar pixels


@pytest.mark.parametrize(
    "changes", [{"upsample_channels": [8]}, {"patch": 4, "channels": [8, 16], "upsample_channels": [8, 4]}]
)
def test_upsample_stages_keep_the_token_grid_and_the_output(changes, world_images):
    torch.manual_seed(0)
    codec = PixelVQ(tiny(**changes))
    x = images_to_tensor(world_images(2)[1])
    out = codec(x)
    assert out.decoded.shape == (2, 9, 64, 64) and out.ids.shape == (2, 64)


@pytest.mark.parametrize("version", [1, 2])
def test_a_config_from_before_encoder_input_loads_with_the_encoder_it_was_trained_with(
    version, tmp_path, world_images
):  # runs/ holds such directories, and the semantic and Q-Former codecs nest such configs
    torch.manual_seed(0)
    codec = PixelVQ(tiny(encoder_input="pixels")).eval()
    codec.save(tmp_path)
    meta = json.loads((tmp_path / "codec.json").read_text())
    del meta["config"]["encoder_input"], meta["config"]["upsample_channels"]  # not there before
    (tmp_path / "codec.json").write_text(json.dumps({**meta, "format_version": version}))
    loaded = load_codec(tmp_path)
    assert loaded.config.encoder_input == "pixels" and loaded.config.upsample_channels == []
    x = images_to_tensor(world_images(2)[1])
    torch.testing.assert_close(loaded.encode_tensor(x), codec.encode_tensor(x))


# --- code_split="shape_colour": colour ids beside colour-free shape codes --------------------------------
def split_codec(**changes) -> PixelVQ:
    torch.manual_seed(0)
    return PixelVQ(tiny(patch=4, channels=[8, 16], res_blocks=0, code_split="shape_colour", **changes))


def recolour(x: torch.Tensor, codec: PixelVQ, perm: list[int]) -> torch.Tensor:
    """Images with palette colour c (1-based, 0 = background) repainted as colour perm[c - 1] + 1."""
    classes = codec.palette_index(x)
    mapping = torch.tensor([0, *(p + 1 for p in perm)])
    return codec.palette[mapping[classes]].permute(0, 3, 1, 2)


def test_shape_colour_ids_are_a_shape_code_and_the_token_colour(world_images):
    codec = split_codec(fsq_levels=[4, 3]).eval()
    assert codec.vocab_size == 4 * 3 * 8
    x = images_to_tensor(world_images(4)[1])
    ids = codec.encode_tensor(x)
    assert ids.shape == (4, 64) and int(ids.min()) >= 0 and int(ids.max()) < codec.vocab_size
    onehot = torch.nn.functional.one_hot(codec.palette_index(x), 9).permute(0, 3, 1, 2).float()
    colours = token_colours(onehot, 8)  # the most common foreground colour of each 8 x 8 token
    torch.testing.assert_close(ids % 8, colours.flatten(1))
    shape_ids, split_colours = codec.split_ids(ids)
    torch.testing.assert_close(split_colours, colours)
    torch.testing.assert_close(shape_ids, ids // 8)
    assert codec.codebook_size == 12 and torch.equal(codec.codebook_ids(ids), shape_ids)
    assert codec.code_vectors(ids).shape == (4, 64, 16 + 8)
    assert codec(x).decoded.shape == (4, 9, 64, 64)


def test_shape_colour_codec_treats_every_colour_alike(world_images):
    """Repainting the objects (a permutation of the palette) changes only their tokens' colour ids, and
    decoding ids with repainted colour ids gives the decoded image repainted, whatever the weights: a
    colour-shape pair never seen in training decodes like a seen one."""
    codec = split_codec().eval()
    x = images_to_tensor(world_images(6)[1])
    perm = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
    ids, ids_recoloured = codec.encode_tensor(x), codec.encode_tensor(recolour(x, codec, perm.tolist()))
    torch.testing.assert_close(ids // 8, ids_recoloured // 8)
    drawn = codec.palette_index(x).view(-1, 8, 8, 8, 8).transpose(2, 3).flatten(3).ne(0).any(-1).flatten(1)
    assert drawn.any() and not drawn.all()
    torch.testing.assert_close(perm[ids % 8][drawn], (ids_recoloured % 8)[drawn])
    repainted_ids = ids // 8 * 8 + perm[ids % 8]
    torch.testing.assert_close(
        codec.decode_tensor(repainted_ids), recolour(codec.decode_tensor(ids), codec, perm.tolist())
    )


def test_compose_palette_can_draw_any_world_image_exactly(world_images):
    """The ideal head (background where the image is, each pixel's source = a neighbour token of its colour)
    gives back every pixel, also where one 8 x 8 token holds two objects of different colours."""
    _, renders = world_images(400, seed=3)
    codec = split_codec()
    classes = codec.palette_index(images_to_tensor(renders))  # (B, 64, 64)
    onehot = torch.nn.functional.one_hot(classes, 9).permute(0, 3, 1, 2).float()
    colours = token_colours(onehot, 8)
    tokens = classes.view(-1, 8, 8, 8, 8).transpose(2, 3).flatten(3)  # (B, 8, 8, 64) pixels per token
    foreground_colours = [
        len(set(t.tolist()) - {0}) for t in tokens.flatten(0, 2)
    ]  # distinct colours per token
    assert max(foreground_colours) == 2, "the sample must hold tokens with two objects"
    b = classes.shape[0]
    neighbours = (
        torch.nn.functional.unfold(
            torch.nn.functional.pad(colours[:, None].float(), (1, 1, 1, 1), value=-1.0), 3
        )
        .view(b, 9, 8, 8)
        .repeat_interleave(8, -2)
        .repeat_interleave(8, -1)
    )
    source = (neighbours == (classes - 1)[:, None]).float() * 10.0
    source[:, 4] += 1.0  # prefer the own token
    head = torch.cat([torch.where(classes[:, None] == 0, 20.0, -20.0), source], dim=1)
    log_probs = compose_palette(head, colours, 8)
    torch.testing.assert_close(log_probs.logsumexp(dim=1), torch.zeros(b, 64, 64), atol=1e-4, rtol=0)
    assert torch.equal(log_probs.argmax(dim=1), classes)


def test_shape_colour_codec_learns_and_round_trips_through_its_directory(tmp_path, world_images):
    codec = split_codec()
    opt = torch.optim.AdamW(codec.parameters(), lr=6e-3)
    x = images_to_tensor(world_images(16, seed=1)[1])
    losses = []
    for _ in range(25):
        loss, _ = pixel_vq_loss(codec, x, fg_weight=3.0, edge_weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    codec.eval().save(tmp_path)
    loaded = load_codec(tmp_path)
    assert loaded.config.code_split == "shape_colour" and loaded.vocab_size == codec.vocab_size
    ids = codec.encode_tensor(x)
    torch.testing.assert_close(loaded.encode_tensor(x), ids)
    torch.testing.assert_close(loaded.decode_tensor(ids), codec.decode_tensor(ids))


def test_id_factors_are_the_colour_and_the_fsq_digits():
    codec = split_codec(fsq_levels=[4, 3])
    (colour, n_colour), (digit0, n0), (digit1, n1) = codec.id_factors()
    assert (n_colour, n0, n1) == (8, 4, 3) and len(colour) == codec.vocab_size == 96
    ids = torch.arange(96 * 2).view(3, 64) % 96
    shape_ids, colours = codec.split_ids(ids)
    torch.testing.assert_close(colour[:64], colours[0].flatten())
    digits = codec.quantizer.fsq.indices_to_level_indices(shape_ids.flatten()[:96])  # the library's digits
    torch.testing.assert_close(torch.stack([digit0, digit1], dim=1), digits.long())
    plain = PixelVQ(tiny(fsq_levels=[4, 3], quantizer="fsq"))
    assert [n for _, n in plain.id_factors()] == [4, 3]
    assert PixelVQ(tiny(quantizer="vq")).id_factors() == []
