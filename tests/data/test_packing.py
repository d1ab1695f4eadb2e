"""Sequence packing: the packer (first-fit, exact resume) and the unified loss on packed batches."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from panglot.backbone import build_transformer
from panglot.codecs.image_vq.model import PixelVQ, PixelVQConfig
from panglot.codecs.text import TextTokenizer
from panglot.config import load_config
from panglot.data.packing import DocumentPacker, PackingConfig, collate_packed, packed_shape
from panglot.model import UnifiedModel, collate
from panglot.model.unified import LOGIT_ROWS_MULTIPLE, counted_rows
from panglot.multimodal import IMAGE_TASKS as TASKS
from panglot.multimodal import SequenceLayout, TaskSequence, UnifiedVocab
from panglot.training import OptimConfig, TrainConfig, Trainer, seed_everything
from recipes import train_unified

PAD = 0
TEXTS = ["a large red circle at the top left", "what color is the circle?", "red", "yes", "no", "two"] * 5
WORDS = ["a", "large", "red", "circle", "at", "the", "top", "left", "blue", "small", "square"]
TOKENS_PER_IMAGE = 6  # any codec length: nothing here may assume 64


class Documents:
    """Random documents of 5..30 tokens; document i is a pure function of (seed, i)."""

    def __init__(self, n: int, seed: int = 0, longest: int = 30):
        self.n, self.seed, self.longest = n, seed, longest

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> TaskSequence:
        rng = np.random.default_rng([self.seed, i])
        length = int(rng.integers(5, self.longest + 1))
        prompt = int(rng.integers(1, length))
        weights = [0.0] * prompt + [float(rng.choice([1.0, 0.5]))] * (length - prompt)
        return TaskSequence(TASKS[i % len(TASKS)], rng.integers(1, 50, length).tolist(), weights)


def _packer(dataset, **kwargs) -> DocumentPacker:
    return DocumentPacker(dataset, **{"pack_len": 48, "rows": 3, "pad_id": PAD, "seed": 1, **kwargs})


def test_an_epoch_packs_every_document_once_in_rows_that_fit():
    dataset = Documents(100)
    packer = _packer(dataset, epochs=1)
    seen, real, slots = [], 0, 0
    for batch in packer:
        assert batch["tokens"].shape == (3, 48)
        for row in range(3):
            ids, task = batch["doc"][row], batch["task"][row]
            for d in ids[task >= 0].unique().tolist():  # the tail (task -1) is no document
                at = (ids == d).nonzero()[:, 0]
                seen.append(batch["tokens"][row, at].tolist())
                assert batch["weights"][row, at[0]] == 0  # a document's first token is never a target
        real += int((batch["task"] >= 0).sum())
        slots += batch["tokens"].numel()
    assert sorted(seen) == sorted(dataset[i].tokens for i in range(100))
    assert real / slots > 0.85  # first-fit with lookahead leaves little room unused


def test_collate_packed_lays_out_documents_weights_and_tail():
    docs = [TaskSequence("caption", [5, 6, 7], [0.3, 0.0, 1.0]), TaskSequence("vqa", [8, 9], [0.7, 2.0])]
    batch = collate_packed([docs, docs[1:]], pack_len=7, pad_id=PAD)
    assert batch["tokens"].tolist() == [[5, 6, 7, 8, 9, 0, 0], [8, 9, 0, 0, 0, 0, 0]]
    assert batch["weights"].tolist()[0] == [0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0]
    assert batch["doc"].tolist() == [[0, 0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1, 1]]
    assert batch["task"].tolist()[0] == [1, 1, 1, 2, 2, -1, -1]
    with pytest.raises(ValueError, match="row 0 holds 8 tokens, more than pack_len 7"):
        collate_packed([[docs[0], docs[0], docs[1]]], pack_len=7, pad_id=PAD)


def test_a_document_longer_than_a_row_is_an_error_naming_its_length():
    packer = _packer(Documents(20, longest=60))
    with pytest.raises(ValueError, match=r"has (49|5\d|60) tokens, more than pack_len 48"):
        for _ in range(20):
            next(packer)


def test_resume_is_exact_across_epochs():
    dataset = Documents(40)
    straight = _packer(dataset)
    expected = [next(straight) for _ in range(12)]  # ~3 epochs
    first = _packer(dataset)
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["kept"], "the test should resume with documents held over"
    resumed = _packer(dataset)
    resumed.load_state_dict(state)
    for want in expected[5:]:
        got = next(resumed)
        for key in want:
            assert torch.equal(got[key], want[key]), key
    with pytest.raises(ValueError, match="pack_len: expected 64, found 48"):
        _packer(dataset, pack_len=64).load_state_dict(state)


def test_packing_config_is_checked():
    with pytest.raises(ValueError, match="pack_len must be >= 1, got 0; rows must be >= 1, got 0"):
        PackingConfig(pack_len=0, rows=0)


def test_packed_shape_fills_in_what_the_config_leaves_open():
    docs = [TaskSequence("t2i", [1] * n, [0.0] * n) for n in (30, 50)] * 10  # mean length 40, longest 50
    assert packed_shape(docs, PackingConfig(), documents=32) == (128, 10)  # 3 x 40 -> 128; 32 x 40 / 128
    assert packed_shape(docs, PackingConfig(), documents=33) == (128, 11)  # 10.3 rows, rounded up
    assert packed_shape(docs, PackingConfig(pack_len=200, rows=4), documents=32) == (200, 4)
    assert packed_shape(docs, PackingConfig(pack_len=400), documents=1) == (400, 1)
    long_tail = [*docs, TaskSequence("vqa", [1] * 150, [0.0] * 150)]  # longest above three mean documents
    assert packed_shape(long_tail, PackingConfig(), documents=32)[0] == 160


class FakeCodec(nn.Module):
    vocab_size, tokens_per_item = 16, TOKENS_PER_IMAGE


@pytest.fixture(scope="module")
def unified() -> UnifiedModel:
    vocab = UnifiedVocab.build(
        TextTokenizer.train(TEXTS, vocab_size=300), [("image", FakeCodec(), "<boi>", "<eoi>")]
    )
    torch.manual_seed(0)
    return UnifiedModel(build_transformer("debug", vocab.size), vocab, FakeCodec()).eval()


def _world_docs(model: UnifiedModel, n: int, seed: int = 0) -> list[TaskSequence]:
    """Documents of every task with different lengths and per-task loss weights (t2i 1, caption 2, vqa 0.5)."""
    rng = np.random.default_rng(seed)
    layout: SequenceLayout = model.layout
    text = model.vocab.text

    def words(k: int) -> list[int]:
        return text.encode(" ".join(rng.choice(WORDS, k)))

    docs = []
    for i in range(n):
        codes = rng.integers(0, 16, TOKENS_PER_IMAGE).tolist()
        task = TASKS[i % 3]
        if task == "t2i":
            docs.append(
                layout.t2i(words(int(rng.integers(2, 9))), codes, drop_condition=i % 4 == 0, weight=1.0)
            )
        elif task == "caption":
            docs.append(layout.caption(codes, words(int(rng.integers(2, 9))), weight=2.0))
        else:
            docs.append(layout.vqa(codes, words(int(rng.integers(3, 7))), words(1), weight=0.5))
    return docs


@torch.no_grad()
def test_packed_loss_and_task_metrics_equal_the_padded_batch(unified):
    docs = _world_docs(unified, 10)
    rows = [docs[0:4], docs[4:7], docs[7:10]]
    shuffled = [docs[9:10] + docs[0:3], docs[3:6], docs[6:9]]  # other rows, other neighbours: same numbers
    pack_len = max(sum(len(d) for d in row) for row in rows + shuffled) + 3  # every row has a tail
    padded_loss, padded_metrics = unified.loss(collate(docs, PAD))
    packed_loss, packed_metrics = unified.loss(collate_packed(rows, pack_len, PAD))
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)
    assert packed_metrics.keys() == padded_metrics.keys() == {f"loss_{t}" for t in TASKS}
    for key, value in padded_metrics.items():
        assert packed_metrics[key] == pytest.approx(value, rel=1e-5), key
    torch.testing.assert_close(
        unified.loss(collate_packed(shuffled, pack_len, PAD))[0], padded_loss, atol=1e-5, rtol=1e-5
    )


def test_loss_is_the_weighted_mean_over_every_position(unified):
    """The loss projects only the counted positions to logits; it equals the weighted mean of the nll that
    logits at every position give, with the same gradients."""
    docs = _world_docs(unified, 7, seed=2)
    batch = collate(docs, PAD)
    tokens, w = batch["tokens"], batch["weights"][:, 1:]
    unified.zero_grad()
    loss, _ = unified.loss(batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in unified.named_parameters()}
    unified.zero_grad()
    nll = F.cross_entropy(unified(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:], reduction="none")
    reference = (nll * w).sum() / w.sum()
    reference.backward()
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    for k, p in unified.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=1e-5, rtol=1e-4, msg=k)
    unified.zero_grad()


@torch.no_grad()
def test_task_shares_weigh_each_tasks_mean_not_its_token_count(unified):
    """With ``task_shares`` the loss is the shares' weighted mean of each task's weighted mean nll (a brute-force
    reference from per-position nll), padded and packed alike; a task left out of the batch drops out."""
    docs = _world_docs(unified, 9, seed=4)
    batch = collate(docs, PAD)
    tokens, w = batch["tokens"], batch["weights"][:, 1:]
    nll = F.cross_entropy(unified(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:], reduction="none")
    shares = {"t2i": 0.5, "caption": 0.3, "vqa": 0.2}
    means = {}
    for i, name in enumerate(TASKS):
        rows = batch["task"] == i
        means[name] = (nll[rows] * w[rows]).sum() / w[rows].sum()
    reference = sum(shares[t] * means[t] for t in TASKS)
    loss, _ = unified.loss(batch, task_shares=shares)
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(loss, unified.loss(batch)[0])  # not the token mean
    packed = collate_packed([docs[:3], docs[3:6], docs[6:]], 160, PAD)
    torch.testing.assert_close(unified.loss(packed, task_shares=shares)[0], reference, atol=1e-5, rtol=1e-5)
    without_vqa = [d for d in docs if d.task != "vqa"]  # the other two keep their shares' ratio
    expected = (0.5 * means["t2i"] + 0.3 * means["caption"]) / 0.8
    torch.testing.assert_close(unified.loss(collate(without_vqa, PAD), task_shares=shares)[0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"unknown tasks \['edit'\]"):
        unified.loss(batch, task_shares={"edit": 1.0})


def test_counted_rows_are_the_counted_positions_then_padding_to_the_multiple():
    counted = torch.zeros(3, 50, dtype=torch.bool)
    counted[0, 5:20] = counted[2, :37] = True  # 52 positions
    rows = counted_rows(counted, multiple=16)
    assert len(rows) == 64
    torch.testing.assert_close(rows[:52], counted.flatten().nonzero().squeeze(1))
    assert rows[52:].tolist() == [0] * 12
    counted[1, :12] = True  # 64: already a multiple
    assert len(counted_rows(counted, multiple=16)) == 64
    g = torch.Generator().manual_seed(0)
    many = {len(counted_rows(torch.rand(11, 255, generator=g) < 0.4)) for _ in range(50)}  # counts vary by ~+-50
    assert all(n % LOGIT_ROWS_MULTIPLE == 0 for n in many) and len(many) <= 4


def test_packed_gradients_equal_the_padded_batch(unified):
    """Backward through the per-document attention blocks gives the padded batch's gradients."""
    docs = _world_docs(unified, 9, seed=3)
    grads = []
    for batch in (collate(docs, PAD), collate_packed([docs[:4], docs[4:6], docs[6:]], 160, PAD)):
        unified.zero_grad()
        unified.loss(batch)[0].backward()
        grads.append({k: p.grad.clone() for k, p in unified.named_parameters()})
    unified.zero_grad()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5, rtol=1e-4, msg=k)


def test_loss_weights_are_token_weights_on_packed_batches(unified):
    """Doubling the caption weight moves the packed loss exactly as it moves the padded one."""
    docs = _world_docs(unified, 6, seed=1)
    heavier = [
        TaskSequence(d.task, d.tokens, [w * (2 if d.task == "caption" else 1) for w in d.weights])
        for d in docs
    ]
    rows = lambda ds: [ds[:3], ds[3:]]  # noqa: E731
    with torch.no_grad():
        for batch in (docs, heavier):
            padded = unified.loss(collate(batch, PAD))[0]
            torch.testing.assert_close(
                unified.loss(collate_packed(rows(batch), 128, PAD))[0], padded, atol=1e-5, rtol=1e-5
            )
        assert not torch.allclose(unified.loss(collate(docs, PAD))[0], unified.loss(collate(heavier, PAD))[0])


def _train(unified_state, dataset, out_dir, max_steps: int, resume: bool) -> list[float]:
    seed_everything(0)
    model = UnifiedModel(
        build_transformer("debug", unified_state.vocab.size), unified_state.vocab, FakeCodec()
    )
    model.load_state_dict(unified_state.state_dict())
    packer = DocumentPacker(dataset, pack_len=96, rows=2, pad_id=PAD, seed=3)
    cfg = TrainConfig(
        optim=OptimConfig(lr=3e-3, min_lr_ratio=1.0),
        max_steps=max_steps,
        precision="fp32",
        log_every=1,
        ckpt_every=2,
    )
    trainer = Trainer(cfg, model, lambda m, b: m.loss(b), packer, out_dir)
    trainer.train(resume=resume)
    return [json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_trainer_resumes_a_packed_run_exactly(unified, tmp_path):
    dataset = _world_docs(unified, 30, seed=2)
    straight = _train(unified, dataset, tmp_path / "a", 4, resume=False)
    _train(unified, dataset, tmp_path / "b", 2, resume=False)
    resumed = _train(unified, dataset, tmp_path / "b", 4, resume=True)
    assert resumed[-2:] == straight[-2:]
    assert straight[-1] < straight[0]


def test_unified_recipe_trains_on_packed_rows(tmp_path):
    torch.manual_seed(0)
    PixelVQ(PixelVQConfig(channels=[16, 32], latent_dim=16, codebook_size=64)).save(tmp_path / "codec")
    overrides = [f"out_dir={tmp_path / 'run'}", f"codec_dir={tmp_path / 'codec'}", "model.size=debug"]
    overrides += ["data.n_scenes=24", "tokenizer_scenes=100", "train.max_steps=3", "train.log_every=1"]
    overrides += ["packing.enabled=true", "batch_size=6", "train.precision=fp32"]
    cfg = load_config(train_unified.UnifiedRecipe, None, overrides)
    _, loader = train_unified.build(cfg)
    assert isinstance(loader, DocumentPacker)
    batch = next(loader)
    assert batch["tokens"].shape == (2, 256) and (batch["task"] >= 0).float().mean() > 0.8
    train_unified.run(cfg)
    records = [
        json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(records) == 3 and all(np.isfinite(r["loss"]) for r in records)
