"""Logits processors, guidance and samplers on synthetic logits (no model)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from panglot.codecs.text import TextTokenizer
from panglot.generation import (
    AllowOnly,
    ClassifierFreeGuidance,
    DecodeState,
    FollowText,
    Forbid,
    ModalityConstraint,
    Multinomial,
    ProcessorList,
    Temperature,
    TopK,
    TopP,
    left_pad,
    modality_constraints,
    sample_inverse_cdf,
)
from panglot.multimodal import UnifiedVocab

NO_STATE = DecodeState(
    tokens=torch.zeros(1, 1, dtype=torch.long), valid=torch.ones(1, 1, dtype=torch.bool), step=0
)
INF = float("-inf")

# A toy vocabulary: text ids [0, 12) with bos=1, eos=2, boi=3, eoi=4, bov=5, eov=6;
# image codes [20, 40) (5 per image), video codes [12, 20) (3 per clip).
BOS, EOS, BOI, EOI, BOV, EOV = 1, 2, 3, 4, 5, 6
IMAGE = ModalityConstraint(code_lo=20, code_hi=40, begin_id=BOI, end_id=EOI, tokens_per_item=5)
VIDEO = ModalityConstraint(code_lo=12, code_hi=20, begin_id=BOV, end_id=EOV, tokens_per_item=3)
VOCAB = 40


def test_top_k_keeps_the_k_largest_and_ties():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    out = TopK(5)(logits, NO_STATE)
    kept = torch.isfinite(out)
    assert kept.sum(1).tolist() == [5] * 6
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, logits.topk(5).indices, True))
    assert torch.equal(out[kept], logits[kept])
    ties = TopK(1)(torch.tensor([[3.0, 1.0, 3.0, 0.0]]), NO_STATE)
    assert torch.isfinite(ties).tolist() == [[True, False, True, False]]
    assert torch.isfinite(TopK(100)(logits, NO_STATE)).all()


def _top_p_reference(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep-mask by the definition: most likely tokens in order until their mass reaches p."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    for row in range(logits.shape[0]):
        probs = logits[row].double().softmax(-1)
        mass = 0.0
        for token in probs.argsort(descending=True).tolist():
            keep[row, token] = True
            mass += probs[token].item()
            if mass >= p:
                break
    return keep


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    assert torch.isfinite(TopP(0.7)(probs.log(), NO_STATE)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(TopP(0.4)(probs.log(), NO_STATE)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(TopP(0.9)(probs.log(), NO_STATE)).tolist() == [[False, True, True, True]]
    exact = torch.tensor([[0.25, 0.5, 0.25]]).log()  # a nucleus that reaches p exactly stops there
    assert torch.isfinite(TopP(0.5)(exact, NO_STATE)).tolist() == [[False, True, False]]
    logits = 2 * torch.randn(8, 30, generator=torch.Generator().manual_seed(1))
    for p in (0.3, 0.6, 0.93):
        out = TopP(p)(logits, NO_STATE)
        assert torch.equal(torch.isfinite(out), _top_p_reference(logits, p)), p
        assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    assert torch.equal(TopP(1.0)(logits, NO_STATE), logits)


def test_temperature_allow_only_forbid_and_list():
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(Temperature(0.5)(logits, NO_STATE), logits * 2)
    allowed = torch.isfinite(AllowOnly(4, 7)(logits, NO_STATE))
    assert allowed.any(0).nonzero().flatten().tolist() == [4, 5, 6] and allowed.all(0)[4:7].all()
    forbidden = ~torch.isfinite(Forbid([0, 9])(logits, NO_STATE))
    assert forbidden.any(0).nonzero().flatten().tolist() == [0, 9] and forbidden[:, [0, 9]].all()
    chained = ProcessorList([AllowOnly(4, 7), Forbid([5]), Temperature(2.0)])(logits, NO_STATE)
    assert torch.isfinite(chained).any(0).nonzero().flatten().tolist() == [4, 6]
    assert torch.allclose(chained[:, [4, 6]], logits[:, [4, 6]] / 2)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Temperature(0.0), "Greedy"),
        (lambda: TopK(0), "k >= 1"),
        (lambda: TopP(0.0), "0 < p <= 1"),
        (lambda: AllowOnly(5, 5), "lo < hi"),
        (lambda: Forbid([-1]), "non-negative"),
        (lambda: ModalityConstraint(20, 40, begin_id=25, end_id=4, tokens_per_item=5), "begin_id 25 lies"),
        (lambda: ModalityConstraint(20, 40, begin_id=3, end_id=3, tokens_per_item=0), "tokens_per_item"),
        (lambda: ClassifierFreeGuidance(-1.0), ">= 0"),
        (lambda: ClassifierFreeGuidance(2.0, plausibility=1.0), r"plausibility must be in \[0, 1\)"),
    ],
)
def test_invalid_options_are_refused_with_reasons(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _check_grammar(row: list[int], constraints: list[ModalityConstraint], allow_begin: bool) -> int:
    """Walk one row's tokens by the span grammar; returns the number of completed spans."""
    open_span, n_codes, completed = None, 0, 0
    for position, token in enumerate(row):
        where = f"token {token} at {position} of {row}"
        if open_span is None:
            assert not any(c.code_lo <= token < c.code_hi or token == c.end_id for c in constraints), where
            opened = [c for c in constraints if token == c.begin_id]
            assert allow_begin or not opened, where
            open_span, n_codes = (opened[0], 0) if opened else (None, 0)
        elif n_codes < open_span.tokens_per_item:
            assert open_span.code_lo <= token < open_span.code_hi, where
            n_codes += 1
        else:
            assert token == open_span.end_id, where
            open_span, completed = None, completed + 1
    return completed


def _fuzz(constraints: list[ModalityConstraint], prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Sample from random logits through the constraints for `steps` steps; returns the full rows."""
    tokens, valid = left_pad(prompts, steps, torch.device("cpu"))
    width = tokens.shape[1] - steps
    generator = torch.Generator().manual_seed(3)
    process = ProcessorList(constraints)
    for step in range(steps):
        end = width + step
        logits = 3 * torch.randn(len(prompts), VOCAB, generator=generator)
        logits[:, [BOI, BOV]] += 1.5  # open spans often
        out = process(logits, DecodeState(tokens[:, :end], valid[:, :end], step))
        tokens[:, end] = torch.multinomial(out.softmax(-1), 1, generator=generator).squeeze(1)
    return [row[mask].tolist() for row, mask in zip(tokens, valid)]


PROMPTS = [
    [BOS],
    [BOS, 7, BOI],
    [BOS, BOI, 21, 22],
    [BOS, BOV, 13, 14, 15],
    [BOS, BOI, 20, 21, 22, 23, 24],
] * 3


def test_modality_constraint_fuzz_never_leaks_and_closes_every_span_after_n_codes():
    rows = _fuzz([IMAGE, VIDEO], PROMPTS, steps=150)
    completed = [_check_grammar(row, [IMAGE, VIDEO], allow_begin=True) for row in rows]
    assert min(completed) >= 3  # the fuzz really went through many spans
    generated = torch.tensor([row[-150:] for row in rows])
    assert ((generated >= 20) & (generated < 40)).any() and ((generated >= 12) & (generated < 20)).any()
    assert ((generated == 0) | (generated > 6) & (generated < 12)).any()  # and text between spans


def test_modality_constraint_without_begin_gives_text_only_after_open_spans_close():
    no_begin = [
        ModalityConstraint(20, 40, BOI, EOI, 5, allow_begin=False),
        ModalityConstraint(12, 20, BOV, EOV, 3, allow_begin=False),
    ]
    rows = _fuzz(no_begin, PROMPTS, steps=60)
    for row, prompt in zip(rows, PROMPTS):
        _check_grammar(row, no_begin, allow_begin=True)  # spans the prompt opened are still completed
        generated = row[len(prompt) :]
        assert BOI not in generated and BOV not in generated, row
        assert all(t < 12 for t in generated[6:]), row  # text only once an open span has closed


def test_modality_constraint_span_state_ignores_left_padding():
    tokens, valid = left_pad([[7, 8], [BOS, BOI, 25], [BOI, 20, 21, 22]], 0, torch.device("cpu"))
    tokens[0, 0] = BOI  # padding slots that happen to hold marker ids must not count
    tokens[1, 0] = EOI
    in_span, n_codes = IMAGE.span_state(tokens, valid)
    assert in_span.tolist() == [False, True, True]
    assert n_codes[1:].tolist() == [1, 3]


def test_cfg_combines_pairs_and_is_exactly_conditional_at_scale_one():
    generator = torch.Generator().manual_seed(4)
    cond, uncond = torch.randn(3, 11, generator=generator), torch.randn(3, 11, generator=generator)
    both = torch.cat([cond, uncond])
    assert torch.equal(ClassifierFreeGuidance(1.0)(both), cond)
    assert torch.allclose(ClassifierFreeGuidance(3.0)(both), uncond + 3.0 * (cond - uncond), atol=1e-6)
    assert torch.allclose(ClassifierFreeGuidance(0.0)(both), uncond, atol=1e-6)
    with pytest.raises(ValueError, match="pairs"):
        ClassifierFreeGuidance(2.0)(both[:5])


def test_cfg_plausibility_ranks_only_what_the_conditional_finds_plausible():
    # token 0: the conditional's favourite; 1: plausible (p = 0.5 of the max); 2: implausible to both branches but
    # far less so to the conditional, which plain guidance at scale 4 lifts above every other token
    cond = torch.tensor([[2.0, 2.0 + math.log(0.5), -3.0, 0.0]])
    uncond = torch.tensor([[2.0, 2.0 + math.log(0.5), -9.0, 0.0]])
    both = torch.cat([cond, uncond])
    assert ClassifierFreeGuidance(4.0)(both).argmax().item() == 2
    guided = ClassifierFreeGuidance(4.0, plausibility=0.2)(both)
    plain = ClassifierFreeGuidance(4.0)(both)
    assert torch.equal(guided[0, :2], plain[0, :2])  # the plausible tokens keep their guided logits
    assert guided[0, 2:].max() < guided[0, :2].min() - 1e3  # the rest rank below all of them...
    assert guided[0, 3] > guided[0, 2]  # ...in the conditional's order, never -inf
    assert torch.isfinite(guided).all()
    assert torch.equal(ClassifierFreeGuidance(4.0, plausibility=0.0)(both), plain)
    generator = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(6, 50, generator=generator), torch.randn(6, 50, generator=generator)
    guided = ClassifierFreeGuidance(2.5, plausibility=0.1)(torch.cat([cond, uncond]))
    plausible = cond.softmax(-1) >= 0.1 * cond.softmax(-1).max(-1, keepdim=True).values
    for row in range(6):  # every plausible token outranks every other one, row by row
        assert guided[row][plausible[row]].min() > guided[row][~plausible[row]].max()


def test_inverse_cdf_sampling_matches_the_distribution_and_skips_impossible_ids():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    logits = probs.log().expand(20000, 5)
    ids = sample_inverse_cdf(
        logits, torch.rand(20000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    )
    freq = torch.bincount(ids, minlength=5).double() / 20000
    assert torch.allclose(freq, probs.double(), atol=0.015)
    top = torch.full(
        (2,), torch.nextafter(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    )
    assert sample_inverse_cdf(probs.log().expand(2, 5), top).tolist() == [3, 3]
    assert sample_inverse_cdf(probs.log().expand(1, 5), torch.zeros(1, dtype=torch.float64)).tolist() == [0]


def test_multinomial_rows_follow_their_own_seeds():
    logits = torch.zeros(3, 1000)
    by_int = Multinomial(7).start(3, 4, torch.device("cpu"))
    by_rows = Multinomial([9, 8, 7]).start(3, 4, torch.device("cpu"))
    first, reversed_rows = by_int(logits, 0), by_rows(logits, 0)
    assert first.tolist() == reversed_rows.flip(0).tolist()
    assert len(set(first.tolist())) == 3
    assert by_int(logits, 1).tolist() != first.tolist()
    with pytest.raises(ValueError, match="3 row seeds for a batch of 2"):
        Multinomial([1, 2, 3]).start(2, 4, torch.device("cpu"))


def test_constraints_from_a_unified_vocabulary():
    text = TextTokenizer.train(["a red circle", "what color?", "red"] * 5, vocab_size=300)
    image = SimpleNamespace(vocab_size=16, tokens_per_item=4)
    speech = SimpleNamespace(vocab_size=8, tokens_per_item=3)
    features = SimpleNamespace(vocab_size=0, tokens_per_item=2)
    vocab = UnifiedVocab.build(
        text,
        [
            ("image", image, "<boi>", "<eoi>"),
            ("speech", speech, "<bos_speech>", "<eos_speech>"),
            ("features", features, "<bov>", "<eov>"),
        ],
    )
    built = modality_constraints(vocab, allow_begin=False)
    offset = text.vocab_size
    assert built == [
        ModalityConstraint(
            offset, offset + 16, text.token_to_id("<boi>"), text.token_to_id("<eoi>"), 4, False
        ),
        ModalityConstraint(
            offset + 16,
            offset + 24,
            text.token_to_id("<bos_speech>"),
            text.token_to_id("<eos_speech>"),
            3,
            False,
        ),
    ]
    with pytest.raises(ValueError, match="'features' is continuous"):
        ModalityConstraint.for_slot(vocab, "features")


def test_follow_text_writes_the_text_a_free_id_at_each_slot_then_the_end_then_anything():
    """Row 0 follows [7, SLOT, 8], row 1 follows [9, SLOT, SLOT]; marks 10 and 11 fill slots; end id 5. Random logits
    decode exactly the texts with a mark in each slot, the end id, then whatever the logits say."""
    slot = FollowText.SLOT
    follow = FollowText([[7, slot, 8], [9, slot, slot]], free=[10, 11], end_id=5)
    generator, seen_marks = torch.Generator().manual_seed(0), set()
    for _ in range(30):
        tokens = torch.tensor([[1, 2], [0, 1]])
        for step in range(6):
            state = DecodeState(tokens=tokens, valid=torch.ones_like(tokens, dtype=torch.bool), step=step)
            logits = follow(torch.randn(2, 16, generator=generator), state)
            tokens = torch.cat([tokens, logits.argmax(dim=1, keepdim=True)], dim=1)
        (a, b) = tokens[:, 2:].tolist()
        assert a[0] == 7 and a[1] in (10, 11) and a[2] == 8 and a[3] == 5
        assert b[0] == 9 and b[1] in (10, 11) and b[2] in (10, 11) and b[3] == 5
        seen_marks |= {a[1], b[1], b[2]}
    assert seen_marks == {10, 11}  # the model's choice, both taken
    state = DecodeState(tokens=torch.tensor([[1, 7]]), valid=torch.ones(1, 2, dtype=torch.bool), step=1)
    allowed = FollowText([[7, slot]], free=[10, 11], end_id=5)(torch.zeros(1, 16), state).isfinite()
    assert allowed[0].nonzero().flatten().tolist() == [10, 11]
    state = DecodeState(tokens=torch.tensor([[1, 7, 10, 5]]), valid=torch.ones(1, 4, dtype=torch.bool), step=3)
    assert FollowText([[7, slot]], free=[10], end_id=5)(torch.zeros(1, 16), state).isfinite().all()  # after the end
    with pytest.raises(ValueError, match="holds 1 texts for a batch of 2"):
        FollowText([[7]], free=[10], end_id=5)(torch.zeros(2, 16), NO_STATE)
    with pytest.raises(ValueError, match="at least one free id"):
        FollowText([[7]], free=[], end_id=5)
