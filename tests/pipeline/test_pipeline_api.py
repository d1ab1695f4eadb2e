"""The Python API contract on a tiny trained run: panglot.load -> draw / caption / ask / codec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import panglot
from panglot.data.images import ImageInputError
from panglot.model.run import RunLoadError
from panglot.model.unified import collate
from panglot.world import language
from panglot.world.render import render


@pytest.fixture(scope="module")
def m(debug_run):
    return panglot.load(debug_run, batch_size=3)


def test_training_lowered_the_loss(debug_run):
    rows = [json.loads(line) for line in (debug_run / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.5


def test_draw_returns_n_images_per_prompt_independent_of_batching(m):
    prompts = ["a large red circle at the top left", "a small blue square at the center"]
    images = m.draw(prompts, seed=3, cfg=2.0, n=2)  # 4 rows over batches of 3
    assert len(images) == 4 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in images)
    again = m.draw(prompts[1:], seed=5, cfg=2.0, n=2)  # prompt 1's images carry seeds 5, 6 = 3 + 2, 3 + 3
    assert [np.asarray(i).tolist() for i in again] == [np.asarray(i).tolist() for i in images[2:]]


def test_draw_is_seeded(m):
    a = m.draw(["a small green square at the top"], seed=1, cfg=1.0)
    b = m.draw(["a small green square at the top"], seed=1, cfg=1.0)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_caption_logprob_is_the_caption_documents_summed_log_likelihood(m):
    """The self-assessment score equals minus the training loss of the same caption document times its targets."""
    model = m.model
    images = m.draw(["a large red circle at the top left", "a small blue square at the center"], seed=0, cfg=1.0)
    codes = m.codec.encode(images)
    captions = [m.tokenizer.encode("a large red circle at the top left"), m.tokenizer.encode("a small cyan cross")]
    scores = model.caption_logprob(codes, captions)
    for row, caption, score in zip(codes, captions, scores, strict=True):
        doc = model.layout.caption(row.tolist(), caption)
        with torch.no_grad():
            loss, _ = model.loss(collate([doc], model.vocab.special("<pad>")))
        assert float(score) == pytest.approx(-float(loss) * (len(caption) + 1), rel=1e-4)  # caption + <eos>
    assert scores.shape == (2,) and bool((scores < 0).all())
    with pytest.raises(ValueError, match="one caption per image: 2 images, 1 captions"):
        model.caption_logprob(codes, captions[:1])
    drawing = model.image_logprob(codes, captions)  # the other direction: the image's codes, <eoi> and <eos>
    for row, caption, score in zip(codes, captions, drawing, strict=True):
        with torch.no_grad():
            loss, _ = model.loss(collate([model.layout.t2i(caption, row.tolist())], model.vocab.special("<pad>")))
        assert float(score) == pytest.approx(-float(loss) * (len(row) + 2), rel=1e-4)


def test_caption_keeps_the_candidate_the_model_would_draw_the_image_from(m, monkeypatch):
    """candidates=3: the greedy caption and 3 sampled ones (repeats dropped) are scored by image_logprob; the best
    is returned, the greedy one on ties; candidates=1 is the greedy caption."""
    scenes = ["a large red circle at the top left", "a small blue square at the center and a large green cross at the right"]
    images = [Image.fromarray(render(language.parse_caption(text))) for text in scenes]  # two different images
    greedy = m.caption(images, candidates=1)
    assert greedy == m.caption(images)  # the debug run's default: greedy
    image_codes = m.codec.encode(images).cpu()
    pools: list[list[list[int]]] = [[], []]

    def score(codes, captions):  # records each image's pool; the longest caption wins
        for row, caption in zip(codes, captions, strict=True):
            pools[next(i for i in range(2) if torch.equal(row.cpu(), image_codes[i]))].append(list(caption))
        return torch.tensor([float(len(c)) for c in captions])

    monkeypatch.setattr(m.model, "image_logprob", score)
    longest = m.caption(images, candidates=3, seed=7, direct_weight=0)
    decode = [[m.tokenizer.decode(c).strip() for c in pool] for pool in pools]
    assert all(pool[0] == g for pool, g in zip(decode, greedy) if g)  # greedy first (an empty caption is dropped)
    assert all(1 <= len(pool) <= 4 for pool in pools)
    assert all(len(pool) == len({tuple(c) for c in pool}) for pool in pools)  # repeats scored once
    assert longest == [texts[max(range(len(pool)), key=lambda k: (len(pool[k]), -k))] for pool, texts in zip(pools, decode)]
    # noisy channel: + weight x caption_logprob; here -3 x length against the drawing's +length, so the shortest wins
    monkeypatch.setattr(m.model, "caption_logprob", lambda codes, captions: torch.tensor([-3.0 * len(c) for c in captions]))
    shortest = [texts[min(range(len(pool)), key=lambda k: (len(pool[k]), k))] for pool, texts in zip(pools, decode)]
    assert m.caption(images, candidates=3, seed=7, direct_weight=1.0) == shortest
    assert m.caption(images, candidates=3, seed=7, direct_weight=0.25) == longest  # 1 - 0.75 > 0: the longest again
    monkeypatch.setattr(m.model, "image_logprob", lambda codes, captions: torch.zeros(len(captions)))
    monkeypatch.setattr(m.model, "caption_logprob", lambda codes, captions: torch.zeros(len(captions)))
    assert m.caption(images, candidates=3, seed=7) == [pool[0] for pool in decode]  # all tie: the first, greedy
    with pytest.raises(ValueError, match="candidates must be an integer >= 1, got 0"):
        m.caption(images, candidates=0)
    with pytest.raises(ValueError, match="direct_weight must be a number >= 0, got -1"):
        m.caption(images, candidates=3, direct_weight=-1)


def test_draw_keeps_the_candidate_the_model_reads_best(m, monkeypatch):
    """candidates=3 draws the rows `n=3` would (same seeds) and keeps, per image, the one with the highest
    caption_logprob: here a score that prefers the last candidate, then one that prefers the first."""
    prompts = ["a large red circle at the top left", "a small blue square at the center"]
    every = [np.asarray(i) for i in m.draw(prompts, seed=4, cfg=2.0, n=3)]
    calls = []

    def prefer(position):
        def score(codes, captions):
            calls.append(len(codes))
            return torch.tensor([float(position(i)) for i in range(len(codes))])

        return score

    global_index = iter(range(10**6))
    monkeypatch.setattr(m.model, "caption_logprob", prefer(lambda i: next(global_index) % 3))
    last = [np.asarray(i) for i in m.draw(prompts, seed=4, cfg=2.0, candidates=3)]
    assert [a.tolist() for a in last] == [every[2].tolist(), every[5].tolist()] and sum(calls) == 6
    monkeypatch.setattr(m.model, "caption_logprob", prefer(lambda i: 0.0))  # all tie: the first candidate
    first = [np.asarray(i) for i in m.draw(prompts, seed=4, cfg=2.0, candidates=3)]
    assert [a.tolist() for a in first] == [every[0].tolist(), every[3].tolist()]
    with pytest.raises(ValueError, match="candidates must be an integer >= 1, got 0"):
        m.draw(prompts, candidates=0)


def test_compiled_decoding_draws_and_answers_as_eager(debug_run):
    eager, compiled = (panglot.load(debug_run, batch_size=3, dtype=None, compile=c) for c in (False, True))
    assert compiled._decoder is not compiled.model.backbone  # the model itself is never compiled
    prompts = ["a large red circle at the top left", "a small blue square at the center"]
    draws = [[np.asarray(i).tolist() for i in x.draw(prompts, seed=3, cfg=2.0, n=2)] for x in (eager, compiled)]
    assert draws[0] == draws[1]
    image = eager.draw(prompts[:1], seed=0, cfg=1.0)[0]
    assert compiled.caption([image]) == eager.caption([image])


def test_codec_round_trip_through_the_api(m):
    ids = m.codec.encode([np.full((64, 64, 3), 255, np.uint8)])
    assert ids.shape == (1, m.codec.tokens_per_item)
    assert m.codec.decode(ids)[0].size == (64, 64)


def test_caption_and_ask_return_strings(m):
    image = m.draw(["a large red circle at the top left"], seed=0, cfg=1.0)[0]
    captions = m.caption([image, np.asarray(image)])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    answers = m.ask([image], ["how many objects are there?"])
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert m.caption([]) == []


def test_bad_inputs_get_clear_errors(m, tmp_path):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        m.draw([" "])
    with pytest.raises(ValueError, match=r"prompt 1 .*'circel' \(did you mean 'circle'\?\)"):
        m.draw(["a large red circle at the top left", "a large red circel at the top left"])
    with pytest.raises(TypeError, match="list of strings"):
        m.draw("a large red circle at the top left")
    with pytest.raises(ImageInputError, match="64x64"):
        m.caption([np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="one question per image"):
        m.ask([np.zeros((64, 64, 3), np.uint8)], ["what shape is at the top?", "how many objects are there?"])
    with pytest.raises(ValueError, match=r"is \d+ tokens long"):
        m.draw([" ".join(["red"] * 5000)])
    with pytest.raises(RunLoadError, match="does not exist"):
        panglot.load(tmp_path / "nope")
    with pytest.raises(RunLoadError, match="not a trained panglot run"):
        panglot.load(tmp_path)
