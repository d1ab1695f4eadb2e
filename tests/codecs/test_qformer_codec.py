"""SEED's causal Q-Former codec: causality, frozen parts copied in, self-contained save/load, deterministic
diffusion decoding, losses that fall, and the two-stage recipe end to end on debug sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import qformer_group
import torch
from safetensors.torch import load_file

from panglot.codecs import load_codec
from panglot.codecs.base import images_to_tensor
from panglot.codecs.image_qformer import QFormerCodec, detokenizer_loss, qformer_loss
from panglot.codecs.image_vq import PixelVQ
from panglot.codecs.text import train_world_tokenizer
from panglot.encoders import DualEncoder, DualEncoderConfig
from panglot.training import distributed
from panglot.world.dataset import split_scenes
from panglot.world.language import caption
from panglot.world.render import render_batch
from recipes import train_qformer_codec


@pytest.fixture(scope="module")
def scenes():
    return split_scenes("train", 16, seed=0)


@pytest.fixture(scope="module")
def images(scenes):
    return images_to_tensor(render_batch(scenes))  # (16, 3, 64, 64)


@pytest.fixture(scope="module")
def teacher(scenes):
    tokenizer = train_world_tokenizer([caption(s) for s in split_scenes("train", 200, seed=1)])
    torch.manual_seed(1)
    return DualEncoder(DualEncoderConfig.debug(), tokenizer).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def pixel():
    torch.manual_seed(2)
    return PixelVQ(PixelVQ.debug_config()).eval()


def debug_codec(teacher, pixel, **detokenizer) -> QFormerCodec:
    """The debug-size codec (seed 0) holding ``teacher`` and ``pixel``, with ``detokenizer`` fields changed."""
    cfg = QFormerCodec.debug_config()
    for name, value in detokenizer.items():
        setattr(cfg.detokenizer, name, value)
    torch.manual_seed(0)
    codec = QFormerCodec(cfg)
    codec.load_frozen_parts(teacher, pixel)
    return codec


@pytest.fixture
def codec(teacher, pixel, images):
    codec = debug_codec(teacher, pixel)
    codec.train()
    codec(images)  # k-means initialises the codebook, as in training
    return codec.eval()


def test_tokens_are_causal(codec, images):
    """Query output i depends on queries 0..i only: changing query j leaves outputs < j untouched."""
    j = 20
    with torch.no_grad():
        grid, _ = codec.teacher(images)
        before = codec.qformer(grid)
        ids_before = codec.encode_tensor(images)
        codec.qformer.queries[j:] += torch.randn_like(codec.qformer.queries[j:])
        after = codec.qformer(grid)
        ids_after = codec.encode_tensor(images)
    torch.testing.assert_close(after[:, :j], before[:, :j], rtol=0, atol=1e-6)
    assert (after[:, j:] - before[:, j:]).abs().amax() > 1e-2  # and later outputs do change
    assert torch.equal(ids_after[:, :j], ids_before[:, :j])
    assert codec.tokens_per_item == 32 and ids_before.shape == (16, 32)


def test_frozen_parts_are_the_teacher_and_pixel_codec(codec, teacher, pixel, images):
    with torch.no_grad():
        grid, embedding = codec.teacher(images)
        torch.testing.assert_close(grid, teacher.image_grid(images))
        torch.testing.assert_close(embedding, teacher.embed_images(images))
        ids = pixel.encode_tensor(images)
        torch.testing.assert_close(codec.pixel.decode_tensor(ids), pixel.decode_tensor(ids))
        # The detokenizer's latents snap back to the pixel codec's own ids.
        assert torch.equal(codec.snap(codec.pixel_latents(images)), ids)
    trainable = {n.split(".")[0] for n, p in codec.named_parameters() if p.requires_grad}
    assert trainable.isdisjoint({"teacher", "pixel"})


def test_decode_is_deterministic_and_batch_independent(codec, images):
    ids = codec.encode_tensor(images[:4])
    first = codec.decode_tensor(ids)
    assert first.shape == (4, 3, 64, 64) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(codec.decode_tensor(ids), first)
    torch.testing.assert_close(codec.decode_tensor(ids[2:3]), first[2:3])
    embedding, codes = codec.condition(ids)
    latents = codec.detokenizer.sample(embedding, codes, (codec.config.latent_channels, 8, 8))
    codec.detokenizer.config.seed += 1  # another seed, another start noise
    assert not torch.equal(codec.detokenizer.sample(embedding, codes, latents.shape[1:]), latents)
    codec.detokenizer.config.seed -= 1


def test_decoding_can_keep_the_best_of_several_candidates(codec, images):
    """``detokenizer.candidates: K``: each row keeps, of the images drawn from start noises seed .. seed + K - 1, the
    one whose ids read back agree best with the ids decoded; the first wins ties; still deterministic and
    independent of the batch."""
    ids = codec.encode_tensor(images[:6])
    embedding, codes = codec.condition(ids)
    shape = (codec.config.latent_channels, 8, 8)
    drawn = [codec.pixel.decode_tensor(codec.snap(codec.detokenizer.sample(embedding, codes, shape, seed=s)))
             for s in range(3)]  # fmt: skip
    scores = torch.stack([codec.agreement(x, codes) for x in drawn])  # (3, B)
    assert torch.equal(codec.decode_tensor(ids), drawn[0])  # one candidate: the config's seed, as before
    codec.config.detokenizer.candidates = 3
    try:
        best = codec.decode_tensor(ids)
        assert torch.equal(codec.decode_tensor(ids), best)
        torch.testing.assert_close(codec.decode_tensor(ids[4:5]), best[4:5])
    finally:
        codec.config.detokenizer.candidates = 1
    choice = scores.argmax(dim=0)  # argmax takes the first of equal maxima
    for row in range(6):
        assert torch.equal(best[row], drawn[choice[row]][row])
    assert scores.max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        train_qformer_codec.load_config(train_qformer_codec.QFormerRecipe, None, ["codec.detokenizer.candidates=0"])


def test_save_load_is_self_contained_and_identical(codec, teacher, images, tmp_path):
    codec.save(tmp_path / "a")
    moved = (tmp_path / "a").rename(tmp_path / "b")  # no path reference can survive a move
    assert sorted(p.name for p in moved.iterdir()) == ["codec.json", "codec.safetensors"]
    meta = json.loads((moved / "codec.json").read_text())
    assert meta["kind"] == "image_qformer" and meta["tokens_per_item"] == 32
    assert meta["config"]["teacher"]["image"]["dim"] == teacher.config.image.dim
    assert meta["config"]["pixel"]["quantizer"] == codec.config.pixel.quantizer
    weights = load_file(str(moved / "codec.safetensors"))
    assert torch.equal(weights["teacher.image_pos"], teacher.image_pos)
    loaded = load_codec(moved)
    assert isinstance(loaded, QFormerCodec)
    ids = codec.encode_tensor(images)
    assert torch.equal(loaded.encode_tensor(images), ids)
    assert torch.equal(loaded.decode_tensor(ids[:3]), codec.decode_tensor(ids[:3]))


def test_both_losses_fall(codec, teacher, images, scenes):
    captions = [caption(s) for s in scenes]
    with torch.no_grad():
        texts = teacher.embed_texts(captions)
    codec.train()
    params = [p for p in codec.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(15):
        loss, metrics = qformer_loss(codec, images, texts, captions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert set(metrics) >= {"contrastive", "embed_cos", "commit"}
    diffusion = []
    for _ in range(15):
        torch.manual_seed(0)  # the same timesteps and noise every step
        loss, _ = detokenizer_loss(codec, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        diffusion.append(loss.item())
    assert np.mean(diffusion[-3:]) < 0.8 * np.mean(diffusion[:3]), diffusion


def test_recipe_trains_both_stages_evaluates_and_resumes(teacher, pixel, tmp_path):
    teacher.save(tmp_path / "teacher")
    pixel.save(tmp_path / "pixel")
    overrides = [
        f"out_dir={tmp_path / 'run'}", f"teacher_dir={tmp_path / 'teacher'}", f"pixel_codec_dir={tmp_path / 'pixel'}",
        "codec.qformer.dim=32", "codec.qformer.n_layers=1", "codec.qformer.n_heads=2", "codec.qformer.ffn_dim=64",
        "codec.codebook_size=64", "codec.codebook_dim=8",
        "codec.embed_decoder.dim=32", "codec.embed_decoder.n_layers=1", "codec.embed_decoder.n_heads=2",
        "codec.detokenizer.block_out_channels=[16,32]", "codec.detokenizer.norm_groups=8",
        "codec.detokenizer.attention_heads=2", "codec.detokenizer.inference_steps=2",
        "qformer_train.max_minutes=null", "qformer_train.max_steps=4", "qformer_train.batch_size=8",
        "detokenizer_train.max_minutes=null", "detokenizer_train.max_steps=3", "detokenizer_train.batch_size=8",
        "eval.n_images=12", "eval.splits=[test-unseen]", "eval.curve_every=2", "eval.curve_images=4",
    ]  # fmt: skip
    cfg = train_qformer_codec.load_config(
        train_qformer_codec.QFormerRecipe, "configs/codec_qformer.yaml", overrides
    )
    metrics = train_qformer_codec.run(cfg)
    assert metrics["train"]["qformer"]["steps"] == 4 and metrics["train"]["detokenizer"]["steps"] == 3
    unseen = metrics["test-unseen"]
    log = [json.loads(line) for line in (tmp_path / "run" / "detokenizer_train" / "metrics.jsonl").open()]
    assert [r["step"] for r in log if "test-unseen/oracle_preserved" in r] == [2]  # the learning curve
    assert {"oracle_preserved", "oracle_preserved_1obj", "codebook_usage", "embed_cosine"} <= set(unseen)
    assert 0 <= unseen["retrieval_reconstructed"]["r@1"] <= 1
    saved = load_codec(tmp_path / "run")
    assert saved.config.teacher == teacher.config and saved.metrics["test-unseen"] == unseen
    resumed = train_qformer_codec.run(cfg, resume=True)  # both stages done: nothing left to train
    untimed = lambda m: {k: v for k, v in m.items() if not k.startswith("eval_")}  # noqa: E731
    assert untimed(resumed["test-unseen"]) == untimed(unseen)  # the same weights back
    assert (
        resumed["train"]["qformer"]["resumed_from"] == 4
        and resumed["train"]["detokenizer"]["resumed_from"] == 3
    )
    assert resumed["train"]["total"]["steps"] == 7


def test_detokenizer_can_read_the_codes_too(teacher, pixel, images):
    codec = debug_codec(teacher, pixel, condition="embedding+codes")
    cfg = codec.config
    codec.eval()
    ids = codec.encode_tensor(images[:2])
    embedding, codes = codec.condition(ids)
    assert codec.detokenizer.context(embedding, codes).shape == (2, cfg.detokenizer.cond_tokens + 32, 16)
    assert torch.equal(codec.decode_tensor(ids), codec.decode_tensor(ids))
    assert torch.isfinite(detokenizer_loss(codec, images[:2])[0])


def test_detokenizer_can_read_a_grid_laid_out_from_the_codes(teacher, pixel, images):
    """``embedding+grid``: a reverse Q-Former lays the codes out on the latent grid, and the UNet takes that map
    as extra input channels; the map follows the ids, and the diffusion loss trains it."""
    codec = debug_codec(teacher, pixel, condition="embedding+grid", grid_dim=16)
    cfg = codec.config
    codec.train()
    codec(images)  # k-means initialises the codebook: distinct ids get distinct codes
    codec.eval()
    ids = codec.encode_tensor(images[:2])
    embedding, codes = codec.condition(ids)
    cond = codec.detokenizer.condition(embedding, codes)
    g = codec.latent_grid
    assert cond.grid.shape == (2, cfg.latent_channels, g, g)
    assert codec.detokenizer.unet.config.in_channels == 2 * cfg.latent_channels
    some = torch.randint(0, codec.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    here, there = (codec.detokenizer.condition(*codec.condition(x)).grid for x in (some, some.roll(1, dims=1)))
    assert not torch.allclose(here, there)  # the map depends on which code is where
    assert torch.equal(codec.decode_tensor(ids), codec.decode_tensor(ids))
    codec.train()
    loss, _ = detokenizer_loss(codec, images[:4])
    loss.backward()
    assert codec.detokenizer.grid_reader.queries.grad.abs().sum() > 0


def test_stage_one_can_train_the_grid_map_towards_the_latent(teacher, pixel, images, scenes):
    """loss.grid_weight: the map's squared error against the clean latent joins stage 1, and its gradient
    reaches the Q-Former through the straight-through codes; without the grid condition it is refused."""
    codec = debug_codec(teacher, pixel, condition="embedding+grid", grid_dim=16)
    codec.train()
    captions = [caption(s) for s in scenes]
    with torch.no_grad():
        texts = teacher.embed_texts(captions)
    plain, _ = qformer_loss(codec, images, texts, captions)
    torch.manual_seed(0)
    loss, metrics = qformer_loss(codec, images, texts, captions, grid_weight=2.0)
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(
            codec.detokenizer.grid_reader(codec(images).codes), codec.pixel_latents(images)
        )
    assert metrics["grid_mse"] == pytest.approx(mse.item(), rel=1e-4)
    assert loss.item() == pytest.approx(plain.item() + 2.0 * metrics["grid_mse"], rel=1e-3)
    loss.backward()
    assert codec.detokenizer.grid_reader.out.weight.grad.abs().sum() > 0
    assert codec.qformer.queries.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="embedding\\+grid"):
        qformer_loss(QFormerCodec(QFormerCodec.debug_config()), images, texts, captions, grid_weight=1.0)


def test_the_detokenizer_takes_a_colour_split_pixel_codec(teacher, images):
    """With the pixel VQ's code_split (1920-style ids: code x colour) the detokenizer's latent table holds every
    id's code and colour, and decoding snaps to ids the pixel codec decodes."""
    from dataclasses import replace

    torch.manual_seed(2)
    pixel_cfg = replace(PixelVQ.debug_config(), fsq_levels=[4, 3], quantizer="fsq", code_split="shape_colour")
    pixel = PixelVQ(pixel_cfg).eval()
    torch.manual_seed(0)
    debug = QFormerCodec.debug_config()
    assert pixel_cfg.code_rank == 2 + 7
    with pytest.raises(ValueError, match="latent_channels 3 is below the 9 directions"):
        replace(debug, pixel=pixel_cfg, detokenizer=replace(debug.detokenizer, latent_channels=3))
    codec = QFormerCodec(replace(debug, pixel=pixel_cfg))  # latent_channels None: every direction
    assert codec.config.latent_channels == 9 and codec.latent_basis.shape == (16 + 8, 9)
    codec.load_frozen_parts(teacher, pixel)
    table = codec.pixel_code_table()
    assert table.shape == (12 * 8, 16 + 8)
    torch.testing.assert_close(table[:, 16:].argmax(dim=1), torch.arange(96) % 8)
    ids = pixel.encode_tensor(images[:4])
    assert torch.equal(codec.snap(codec.pixel_latents(images[:4])), ids)
    codec.train()
    codec(images)
    assert codec.eval().decode_tensor(codec.encode_tensor(images[:2])).shape == (2, 3, 64, 64)


def pixel_reading_codec(teacher, pixel) -> QFormerCodec:
    """The debug codec whose queries read the pixel codes too, with the grid map (seed 0)."""
    from dataclasses import replace

    cfg = QFormerCodec.debug_config()
    cfg = replace(
        cfg,
        qformer=replace(cfg.qformer, features="teacher+pixel"),
        detokenizer=replace(cfg.detokenizer, condition="embedding+grid", grid_dim=16),
    )
    torch.manual_seed(0)
    codec = QFormerCodec(cfg)
    codec.load_frozen_parts(teacher, pixel)
    return codec


def test_the_queries_can_read_the_pixel_codes_too(teacher, pixel, images, tmp_path):
    """``qformer.features: teacher+pixel``: the pixel codec's code grid joins the teacher's patches as context
    (one learned position per cell), so the ids follow the pixel codes; the tokens stay causal, the part
    saves and loads with the codec, and a wrong value is refused by name."""
    from dataclasses import replace

    codec = pixel_reading_codec(teacher, pixel)
    g = codec.latent_grid
    assert codec.pixel_features.pos.shape == (g * g, teacher.config.image.dim)
    codec.train()
    codec(images)  # k-means initialises the codebook
    codec.eval()
    with torch.no_grad():
        z = codec._query_outputs(codec.frozen_features(images[:4]))
        codec.pixel_features.pos.add_(1.0)  # only the pixel context moves
        moved = codec._query_outputs(codec.frozen_features(images[:4]))
        codec.pixel_features.pos.sub_(1.0)
    assert not torch.allclose(z, moved)
    with torch.no_grad():  # still causal: query j moved leaves outputs < j alone
        before = codec._query_outputs(codec.frozen_features(images[:2]))
        codec.qformer.queries[20].add_(1.0)
        after = codec._query_outputs(codec.frozen_features(images[:2]))
        codec.qformer.queries[20].sub_(1.0)
    assert torch.equal(before[:, :20], after[:, :20]) and not torch.allclose(before[:, 20:], after[:, 20:])
    ids = codec.encode_tensor(images[:4])
    codec.save(tmp_path / "codec")
    loaded = load_codec(tmp_path / "codec")
    assert loaded.config.qformer.features == "teacher+pixel"
    assert torch.equal(loaded.encode_tensor(images[:4]), ids)
    assert torch.equal(loaded.decode_tensor(ids), codec.decode_tensor(ids))
    with pytest.raises(ValueError, match=r"qformer\.features must be 'teacher' or 'teacher\+pixel', got 'pixels'"):
        replace(QFormerCodec.debug_config().qformer, features="pixels")


def test_stage_one_can_name_each_cells_pixel_code(teacher, pixel, images, scenes):
    """``grid_loss="ce"``: each cell of the map names its pixel code by negative squared distance to every
    code; ``grid_acc`` is the share of cells whose nearest code is the image's; an unknown loss is refused."""
    codec = pixel_reading_codec(teacher, pixel)
    codec.train()
    captions = [caption(s) for s in scenes]
    with torch.no_grad():
        texts = teacher.embed_texts(captions)
    torch.manual_seed(0)
    loss, metrics = qformer_loss(codec, images, texts, captions, grid_weight=1.0, grid_loss="ce")
    with torch.no_grad():
        cells = codec.detokenizer.grid_reader(codec(images).codes).flatten(2).transpose(1, 2)  # (B, N, C)
        distance = torch.cdist(cells, codec.code_table()[None].expand(len(cells), -1, -1)).pow(2)
        targets = codec.pixel.encode_tensor(images)
        ce = torch.nn.functional.cross_entropy(-distance.flatten(0, 1), targets.flatten())
        acc = (distance.argmin(-1) == targets).float().mean()
    assert metrics["grid_ce"] == pytest.approx(ce.item(), rel=1e-3)
    assert metrics["grid_acc"] == pytest.approx(acc.item(), abs=1e-6)
    loss.backward()
    assert codec.pixel_features.proj.weight.grad.abs().sum() > 0  # the grid's gradient reaches the pixel context
    with pytest.raises(ValueError, match="grid_loss must be 'mse' or 'ce', got 'l1'"):
        qformer_loss(codec, images, texts, captions, grid_weight=1.0, grid_loss="l1")


def test_locality_deals_the_cells_out_to_the_queries_in_raster_order(teacher, pixel):
    """``qformer.locality``: a prior on the cross-attention logits, two cells to a query in raster order (in the
    teacher's grid and the pixel grid alike) and each grid-reader cell back to its query. With a prior so strong it
    is a hard mask, query i reads only its own cells: moving cell 60 (query 30's) leaves outputs 0..29 alone, where
    without it every query reads every cell; and a grid cell reads only its own code. Not saved as a weight."""
    from dataclasses import replace

    from panglot.codecs.image_qformer.model import locality_bias

    bias = locality_bias(32, 64, 4.0)
    assert bias.shape == (32, 64) and bias.sum() == 4.0 * 64
    assert bias[0, :2].tolist() == [4.0, 4.0] and bias[0, 2:].abs().sum() == 0 and bias[31, 62:].tolist() == [4.0, 4.0]
    with pytest.raises(ValueError, match=r"qformer\.locality must be >= 0, got -1"):
        replace(QFormerCodec.debug_config().qformer, locality=-1.0)

    def outputs(locality: float) -> tuple[torch.Tensor, torch.Tensor, QFormerCodec]:
        cfg = QFormerCodec.debug_config()
        cfg = replace(
            cfg,
            qformer=replace(cfg.qformer, features="teacher+pixel", locality=locality),
            detokenizer=replace(cfg.detokenizer, condition="embedding+grid", grid_dim=16),
        )
        torch.manual_seed(0)
        codec = QFormerCodec(cfg).eval()
        context = torch.randn(1, 128, teacher.config.image.dim)  # 64 teacher patches, then 64 pixel cells
        moved = context.clone()
        moved[0, 64 + 60] += 3.0  # pixel cell 60: query 30's
        with torch.no_grad():
            here = codec.qformer(context, codec.cross_bias)
            there = codec.qformer(moved, codec.cross_bias)
        return here, there, codec

    here, there, codec = outputs(1e4)
    assert codec.cross_bias.shape == (32, 128) and "cross_bias" not in codec.state_dict()
    assert torch.allclose(here[:, :30], there[:, :30], atol=1e-5) and not torch.allclose(here[:, 30:], there[:, 30:])
    here, there, _ = outputs(0.0)
    assert not torch.allclose(here[:, :30], there[:, :30], atol=1e-5)  # without the prior query 0 reads cell 60
    reader = codec.detokenizer.grid_reader
    codes = torch.randn(1, 32, codec.config.qformer.dim)
    moved = codes.clone()
    moved[0, 5] += 3.0  # code 5: cells 10 and 11
    with torch.no_grad():
        changed = (reader(codes) - reader(moved)).abs().flatten(2).sum(1)[0] > 1e-5  # (64,) per cell
    assert changed.nonzero().flatten().tolist() == [10, 11]


def test_the_ids_can_come_from_fsq(teacher, pixel, images, scenes, tmp_path):
    """``quantizer: fsq``: each query's output rounded channel by channel (vector-quantize-pytorch's FSQ), the
    vocabulary the product of the levels, whose digits are the ids' factors; the ids decode back to the codes they
    came from, stage 1's loss reaches the Q-Former through the rounding, the codec saves and loads, and bad levels
    are refused by name."""
    from dataclasses import replace

    cfg = replace(QFormerCodec.debug_config(), quantizer="fsq", fsq_levels=[5, 4, 3])
    torch.manual_seed(0)
    codec = QFormerCodec(cfg)
    codec.load_frozen_parts(teacher, pixel)
    assert codec.vocab_size == codec.codebook_size == 60 and not hasattr(codec.codebook, "vq")
    codec.train()
    captions = [caption(s) for s in scenes]
    with torch.no_grad():
        texts = teacher.embed_texts(captions)
    loss, metrics = qformer_loss(codec, images, texts, captions)
    assert metrics["commit"] == 0.0  # nothing to commit to
    loss.backward()
    assert codec.qformer.queries.grad.abs().sum() > 0  # straight through the rounding
    codec.eval()
    ids = codec.encode_tensor(images)
    assert ids.shape == (16, 32) and ids.min() >= 0 and ids.max() < 60
    with torch.no_grad():
        z = codec._query_outputs(codec.frozen_features(images))
        codes, train_ids, _ = codec.codebook(z)
    assert torch.equal(train_ids, ids)  # encoding and the training path name the same ids
    torch.testing.assert_close(codec.codebook.codes(ids), codes)
    # a reading model shares rows by FSQ digit: the factors are the levels FSQ itself rounds each channel to
    factors = codec.id_factors()
    assert [n for _, n in factors] == [5, 4, 3]
    digits = codec.codebook.fsq.indices_to_level_indices(torch.arange(60))  # (60, 3)
    for k, (values, _) in enumerate(factors):
        assert torch.equal(values, digits[:, k].long())
    assert QFormerCodec(QFormerCodec.debug_config()).id_factors() == []  # VQ ids are unrelated
    codec.save(tmp_path / "codec")
    loaded = load_codec(tmp_path / "codec")
    assert loaded.config.quantizer == "fsq" and torch.equal(loaded.encode_tensor(images), ids)
    assert torch.equal(loaded.decode_tensor(ids[:2]), codec.decode_tensor(ids[:2]))
    with pytest.raises(ValueError, match=r"fsq_levels must be a non-empty list of levels >= 2, got \[5, 1\]"):
        replace(QFormerCodec.debug_config(), quantizer="fsq", fsq_levels=[5, 1])
    with pytest.raises(ValueError, match="quantizer must be 'vq' or 'fsq', got 'lfq'"):
        replace(QFormerCodec.debug_config(), quantizer="lfq")


def test_the_layout_recipe_differs_from_seeds_only_where_it_says():
    """configs/codec_qformer_layout.yaml (the stage ``qformer_layout``) is configs/codec_qformer.yaml with the pixel
    codes read, the raster prior, 16384 codes, the grid condition and term, small batches, a pool of frozen
    features and two training processes: nothing else moves."""
    from dataclasses import asdict

    from recipes import stages

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    seed, layout = (
        flat(asdict(train_qformer_codec.load_config(train_qformer_codec.QFormerRecipe, stages.config_path(name), [])))
        for name in ("codec_qformer.yaml", "codec_qformer_layout.yaml")
    )
    changed = {key: layout[key] for key in seed if seed[key] != layout[key]}
    assert changed == {
        "out_dir": "runs/codec_qformer_layout",
        "pool": 4000,
        "processes": 2,
        "codec.qformer.features": "teacher+pixel",
        "codec.qformer.locality": 8.0,
        "codec.codebook_size": 16384,
        "codec.detokenizer.condition": "embedding+grid",
        "loss.grid_weight": 1.0,
        "loss.grid_loss": "ce",
        "qformer_train.optim.lr": 4e-3,
        "qformer_train.max_minutes": 2.5,
        "qformer_train.batch_size": 16,
        "detokenizer_train.max_minutes": 2.5,
        "detokenizer_train.batch_size": 16,
    }
    assert stages.STAGES["qformer_layout"].config == "codec_qformer_layout.yaml"


def test_losses_from_frozen_features_equal_those_from_the_images(teacher, pixel, images, scenes):
    """A batch's frozen features computed once (the recipe's pool) give both stages the losses and gradients that
    the images themselves give; a grid loss without the pixel ids, or stage 2 without ids, is refused."""
    import copy

    codec = pixel_reading_codec(teacher, pixel)
    codec.train()
    codec(images)  # k-means initialises the codebook
    captions = [caption(s) for s in scenes]
    with torch.no_grad():
        texts = teacher.embed_texts(captions)
    features = codec.frozen_features(images, with_pixel_ids=True)
    assert features.pixel_ids.shape == (16, codec.latent_grid**2) and len(features.grid) == len(features.target) == 16
    assert torch.equal(features.index(torch.tensor([3, 1])).pixel_ids, features.pixel_ids[[3, 1]])
    grads = []
    for batch in (images, features):
        twin = copy.deepcopy(codec)  # the codebook's EMA moves on every training call
        loss, metrics = qformer_loss(twin, batch, texts, captions, grid_weight=1.0, grid_loss="ce")
        loss.backward()
        grads.append((loss.item(), metrics["grid_acc"], twin.qformer.queries.grad.clone()))
    assert grads[0][:2] == grads[1][:2] and torch.equal(grads[0][2], grads[1][2])
    with pytest.raises(ValueError, match="needs the images' pixel ids"):
        qformer_loss(codec, features._replace(pixel_ids=None), texts, captions, grid_weight=1.0)
    codec.eval()
    ids = codec.encode_tensor(None, features=features)
    assert torch.equal(ids, codec.encode_tensor(images))
    diffusion = []
    for args in ((images,), (None, ids, features.pixel_ids)):
        torch.manual_seed(0)  # the same timesteps and noise
        diffusion.append(detokenizer_loss(codec, *args)[0].item())
    assert diffusion[0] == diffusion[1]
    with pytest.raises(ValueError, match="needs images, or both their ids and their pixel ids"):
        detokenizer_loss(codec, None, ids)


def tiny_pooled_recipe(tmp_path, teacher, pixel, stage1_steps: int, pool: int) -> list[str]:
    """Overrides of the layout YAML for a tiny pooled run in ``tmp_path / "run"`` (``teacher`` and ``pixel`` saved
    there): debug widths, batches of 8, ``stage1_steps`` + 3 steps, 12 test-unseen scenes evaluated."""
    teacher.save(tmp_path / "teacher")
    pixel.save(tmp_path / "pixel")
    return [
        f"out_dir={tmp_path / 'run'}", f"teacher_dir={tmp_path / 'teacher'}", f"pixel_codec_dir={tmp_path / 'pixel'}",
        "codec.qformer.dim=32", "codec.qformer.n_layers=1", "codec.qformer.n_heads=2", "codec.qformer.ffn_dim=64",
        "codec.codebook_size=64", "codec.codebook_dim=8", "codec.detokenizer.grid_dim=16",
        "codec.embed_decoder.dim=32", "codec.embed_decoder.n_layers=1", "codec.embed_decoder.n_heads=2",
        "codec.detokenizer.block_out_channels=[16,32]", "codec.detokenizer.norm_groups=8",
        "codec.detokenizer.attention_heads=2", "codec.detokenizer.inference_steps=2",
        "qformer_train.max_minutes=null", f"qformer_train.max_steps={stage1_steps}", "qformer_train.batch_size=8",
        "detokenizer_train.max_minutes=null", "detokenizer_train.max_steps=3", "detokenizer_train.batch_size=8",
        "eval.n_images=12", "eval.splits=[test-unseen]", f"pool={pool}",
    ]  # fmt: skip


def test_the_recipe_can_train_from_a_pool_of_frozen_features(teacher, pixel, tmp_path):
    """``pool: N``: both stages draw shuffled batches from N scenes' frozen features computed once (stage 2 from
    the frozen stage-1 ids of the same scenes); the pool's time counts in each stage's wall time; a resumed run
    trains nothing more and gives the same codec; a pool smaller than a batch is refused."""
    overrides = [*tiny_pooled_recipe(tmp_path, teacher, pixel, stage1_steps=5, pool=20), "processes=1"]
    cfg = train_qformer_codec.load_config(
        train_qformer_codec.QFormerRecipe, "configs/codec_qformer_layout.yaml", overrides
    )
    codec = train_qformer_codec.build_codec(cfg, teacher, pixel)
    pool = train_qformer_codec.build_pool(codec, teacher, 20, cfg.data_seed, "fp32", chunk=8)
    fresh = next(train_qformer_codec.WorldCaptionedImages(20, cfg.data_seed))  # the same scenes, rendered afresh
    assert pool.captions == fresh.captions and len(pool) == 20
    assert torch.equal(pool.features.pixel_ids, pixel.encode_tensor(fresh.images))
    rows = train_qformer_codec.pool_batches(pool, 8, 0, lambda rows: rows)
    epochs = [next(rows) + next(rows) for _ in range(2)]  # two batches an epoch (the last 4 rows wait)
    assert all(len(set(epoch)) == 16 and set(epoch) <= set(range(20)) for epoch in epochs) and epochs[0] != epochs[1]
    batch = train_qformer_codec.pool_batches(pool, 8, 0, pool.captioned).__next__()
    assert batch.captions == [pool.captions[i] for i in epochs[0][:8]]
    assert torch.equal(batch.features.grid, pool.features.grid[epochs[0][:8]])
    metrics = train_qformer_codec.run(cfg)
    train = metrics["train"]
    assert train["qformer"]["steps"] == 5 and train["detokenizer"]["steps"] == 3
    assert all(train[stage]["wall_s"] >= train[stage]["pool_s"] >= 0 for stage in ("qformer", "detokenizer"))
    resumed = train_qformer_codec.run(cfg, resume=True)
    untimed = lambda m: {k: v for k, v in m.items() if not k.startswith("eval_")}  # noqa: E731
    assert untimed(resumed["test-unseen"]) == untimed(metrics["test-unseen"])
    with pytest.raises(ValueError, match=r"pool \(4\) must hold at least one batch of qformer_train \(8\)"):
        train_qformer_codec.load_config(train_qformer_codec.QFormerRecipe, "configs/codec_qformer_layout.yaml",
                                        [*overrides, "pool=4"])  # fmt: skip


def test_two_processes_over_half_batches_take_the_stage_one_step_of_one(teacher, pixel, images, tmp_path):
    """In a data-parallel group each process's contrastive term spans the whole batch (its rows gathered from the
    group), the codebook's EMA statistics are summed over it and its dead codes re-seeded as one process would
    (at most one per vector, from the group's vectors: more codes than vectors, so the step re-seeds a subset):
    the averaged gradients, the loss and the codebook after the step are one process's over the whole batch."""
    cfg = QFormerCodec.debug_config()
    cfg.codebook_size = 2048  # > the 16 x 32 vectors of a step: most codes are dead
    cfg.qformer.features, cfg.detokenizer.condition = "teacher+pixel", "embedding+grid"  # the layout codec's
    torch.manual_seed(0)
    codec = QFormerCodec(cfg)
    codec.load_frozen_parts(teacher, pixel)
    codec.train()
    codec(images)  # k-means initialises the codebook before the compared step
    book = codec.codebook.vq._codebook
    assert (book.cluster_size < book.threshold_ema_dead_code).sum() > 16 * 32  # more dead codes than vectors
    codec.save(tmp_path / "codec")
    teacher.save(tmp_path / "teacher")
    args = (tmp_path / "codec", tmp_path / "teacher", tmp_path, 16)
    distributed.launch(qformer_group.stage_one_step, 2, *args, timeout_s=120)
    single = qformer_group.stage_one_step(*args)
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert set(rank0) == set(single) and any(k.startswith("grad.qformer") for k in single)
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), f"{name}: the processes differ"
        torch.testing.assert_close(rank0[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_the_recipe_can_train_in_two_processes(teacher, pixel, tmp_path):
    """``processes: 2``: each process builds half of the pool and steps over half of each batch; rank 0 saves the
    codec, which the calling process evaluates; the checkpoints hold both processes' data positions; a resumed run
    trains nothing more and gives the same codec; settings a group cannot run are refused, naming the key."""
    overrides = [*tiny_pooled_recipe(tmp_path, teacher, pixel, stage1_steps=4, pool=32), "qformer_train.ckpt_every=2",
                 "processes=2"]  # fmt: skip
    load = lambda *more: train_qformer_codec.load_config(  # noqa: E731
        train_qformer_codec.QFormerRecipe, "configs/codec_qformer_layout.yaml", [*overrides, *more]
    )
    metrics = train_qformer_codec.run(load())
    train = metrics["train"]
    assert train["qformer"]["steps"] == 4 and train["detokenizer"]["steps"] == 3
    run = tmp_path / "run"
    state = json.loads((run / "qformer_train" / "step_00000004" / "state.json").read_text())
    assert [r["data"]["shard"] for r in state["ranks"]] == [[0, 1], [0, 1]]  # each its own half of the pool
    stage2 = [json.loads(line) for line in (run / "detokenizer_train" / "metrics.jsonl").read_text().splitlines()]
    assert stage2 and all(np.isfinite(r["loss"]) for r in stage2)
    assert load_codec(run).kind == QFormerCodec.kind and (run / "metrics.json").is_file()
    resumed = train_qformer_codec.run(load(), resume=True)
    untimed = lambda m: {k: v for k, v in m.items() if not k.startswith("eval_")}  # noqa: E731
    assert untimed(resumed["test-unseen"]) == untimed(metrics["test-unseen"])
    assert resumed["train"]["qformer"]["resumed_from"] == 4
    for more, message in [
        (["pool=0"], "processes: 2 needs a pool"),
        (["pool=33"], "processes: 2 needs a pool"),
        (["detokenizer_train.batch_size=9"], r"detokenizer_train.batch_size \(9\) must be a multiple of processes"),
        (["processes=0"], "processes must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            load(*more)
    with pytest.raises(ValueError, match="data parallelism over CPU processes; on cuda use 1"):
        train_qformer_codec.run(load(), device="cuda")
