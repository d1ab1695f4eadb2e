"""The decode loop on the real debug backbone: cache, padding, CFG, stopping, seeds."""

from __future__ import annotations

import pytest
import torch

from panglot.backbone import build_transformer
from panglot.generation import (
    ClassifierFreeGuidance,
    DecodeState,
    Greedy,
    ModalityConstraint,
    Multinomial,
    Temperature,
    TopK,
    generate,
)

VOCAB = 48
BOS, EOS, BOI, EOI = 1, 2, 3, 4
CODES = (16, 48)  # image codes [16, 48), text ids [0, 16)
PROMPTS = [[BOS, 7, 9, 11, 5], [BOS, 8], [BOS, 12, 6, 10]]
UNCOND = [[BOS, 5], [BOS, 5, 6, 7, 8, 9, 10], [BOS]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_transformer("debug", vocab_size=VOCAB, init_std=0.2).eval()


def _full_logits(model, sequence: list[int]) -> torch.Tensor:
    """Next-token logits (V,) by a full forward over the sequence, without cache or padding."""
    with torch.no_grad():
        return model(torch.tensor([sequence]))[0, -1].float()


def test_cached_left_padded_greedy_equals_full_recompute(model):
    out = generate(model, PROMPTS, max_new_tokens=12)
    assert [len(row) for row in out] == [12] * 3
    assert len({tuple(row) for row in out}) == 3
    for prompt, row in zip(PROMPTS, out):
        for step, token in enumerate(row):
            assert _full_logits(model, prompt + row[:step]).argmax().item() == token, (prompt, step)


def test_left_padding_does_not_change_a_row(model):
    batched = generate(model, PROMPTS, max_new_tokens=10, sampler=Multinomial([11, 12, 13]))
    for prompt, seed, row in zip(PROMPTS, [11, 12, 13], batched):
        assert generate(model, [prompt], max_new_tokens=10, sampler=Multinomial(seed)) == [row]
    assert (
        generate(model, PROMPTS[::-1], max_new_tokens=10, sampler=Multinomial([13, 12, 11])) == batched[::-1]
    )


def test_seeded_sampling_is_deterministic(model):
    def run(seed):
        return generate(
            model, PROMPTS, max_new_tokens=10, processors=[Temperature(1.5)], sampler=Multinomial(seed)
        )

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_cfg_scale_one_equals_conditional_decoding(model):
    processors = [Temperature(1.3), TopK(20)]
    plain = generate(model, PROMPTS, max_new_tokens=10, processors=processors, sampler=Multinomial(5))
    guided = generate(
        model,
        PROMPTS,
        max_new_tokens=10,
        processors=processors,
        sampler=Multinomial(5),
        uncond_prompts=UNCOND,
        cfg_scale=1.0,
    )
    assert guided == plain
    strong = generate(
        model, PROMPTS, max_new_tokens=10, sampler=Multinomial(5), uncond_prompts=UNCOND, cfg_scale=4.0
    )
    assert strong != generate(model, PROMPTS, max_new_tokens=10, sampler=Multinomial(5))


def test_repeated_prompts_are_prefilled_once_and_decode_as_apart(model):
    """A batch that repeats prompts (guidance's one unconditional prompt, n samples of a prompt) prefills each
    distinct prompt once, and every row decodes what it decodes alone."""
    calls = []

    class Spy(torch.nn.Module):  # the model as generate sees it, recording the rows of every forward
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, tokens, **kwargs):
            calls.append(tokens.shape[0])
            return self.inner(tokens, **kwargs)

        def new_cache(self, *args, **kwargs):
            return self.inner.new_cache(*args, **kwargs)

        def for_decoding(self, dtype=None):
            return self

    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    seeds = [3, 4, 5]
    out = generate(
        Spy(), prompts, max_new_tokens=6, sampler=Multinomial(seeds), uncond_prompts=[[BOS]] * 3, cfg_scale=2.0
    )
    assert calls[0] == 3  # two distinct prompts + one unconditional prompt, not 6 rows
    for prompt, seed, row in zip(prompts, seeds, out):
        alone = generate(
            model, [prompt], max_new_tokens=6, sampler=Multinomial(seed), uncond_prompts=[[BOS]], cfg_scale=2.0
        )
        assert alone == [row]


def test_cfg_greedy_equals_guided_argmax_of_full_forwards(model):
    scale = 3.0
    out = generate(model, PROMPTS, max_new_tokens=8, uncond_prompts=UNCOND, cfg_scale=scale)
    guidance = ClassifierFreeGuidance(scale)
    for prompt, uncond, row in zip(PROMPTS, UNCOND, out):
        for step, token in enumerate(row):
            pair = torch.stack(
                [_full_logits(model, prompt + row[:step]), _full_logits(model, uncond + row[:step])]
            )
            assert guidance(pair).argmax().item() == token, (prompt, step)


def test_text_to_image_prompt_gets_exactly_n_codes_then_eoi(model):
    image = ModalityConstraint(*CODES, begin_id=BOI, end_id=EOI, tokens_per_item=6)
    prompts = [[BOS, 7, 8, BOI], [BOS, BOI], [BOS, 9, 10, 11, 12, BOI, 20, 30]]
    steps = []
    out = generate(
        model,
        prompts,
        max_new_tokens=20,
        processors=[image],
        sampler=Multinomial(0),
        stop_ids=[EOI],
        uncond_prompts=[[BOS, BOI]] * 3,
        cfg_scale=2.0,
        callback=lambda step, tokens: steps.append((step, tuple(tokens.shape))),
    )
    assert [len(row) for row in out] == [7, 7, 5]
    for row in out:
        assert all(CODES[0] <= t < CODES[1] for t in row[:-1]) and row[-1] == EOI
    assert steps == [(i, (3, i + 1)) for i in range(7)]  # stopped as soon as every row was done


def test_rows_stop_at_their_stop_id_and_the_loop_ends_when_all_have(model):
    def stop_row_at(step_of_row: list[int]):
        def force(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
            stop_now = torch.tensor(step_of_row) == state.step
            logits = logits.clone()
            logits[stop_now] = float("-inf")
            logits[stop_now, EOS] = 0.0
            return logits

        return force

    calls = []
    out = generate(
        model,
        PROMPTS,
        max_new_tokens=30,
        processors=[stop_row_at([3, 0, 5])],
        stop_ids=[EOS, 0],
        callback=lambda step, tokens: calls.append(step),
    )
    for row, length in zip(out, [4, 1, 6]):
        assert EOS not in row[:-1] and 0 not in row[:-1]
        assert len(row) <= length and row[-1] in (EOS, 0)
    assert calls == list(range(max(len(row) for row in out)))


def test_bf16_autocast_decodes(model):
    out = generate(model, PROMPTS, max_new_tokens=6, dtype="bf16")
    fp32 = generate(model, PROMPTS, max_new_tokens=6)
    assert [len(row) for row in out] == [6] * 3
    assert sum(a == b for x, y in zip(out, fp32) for a, b in zip(x, y)) >= 9  # same model, lower precision


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompts": []}, "at least one prompt"),
        ({"prompts": [[1], []]}, r"prompts\[1\] is empty"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"cfg_scale": 2.0}, "needs uncond_prompts"),
        ({"uncond_prompts": [[1]]}, "3 prompts, 1 uncond_prompts"),
    ],
)
def test_bad_requests_are_refused(model, kwargs, message):
    request = {"prompts": PROMPTS, "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, request.pop("prompts"), **request)


def test_greedy_is_the_default_sampler(model):
    assert generate(model, PROMPTS, max_new_tokens=5) == generate(
        model, PROMPTS, max_new_tokens=5, sampler=Greedy()
    )
