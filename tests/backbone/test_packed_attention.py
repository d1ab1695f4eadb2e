"""Packed rows (document_ids): every document's logits are exactly those of the document alone; the per-document
attention blocks that compute them."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from panglot.backbone import Transformer, build_transformer
from panglot.nn.attention import (
    BLOCK_ROUND,
    MATMUL_ATTENTION_MAX_LENGTH,
    causal_attention,
    document_blocks,
    document_layout,
)

VOCAB = 97
LENGTHS = [(7, 12, 5, 3), (20, 1, 6)]  # documents per row; rows padded to WIDTH with a tail of their own
WIDTH = 30


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return build_transformer("debug", VOCAB).eval()


def _docs(seed: int = 0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, VOCAB, (n,), generator=gen) for n in row] for row in LENGTHS]


def _pack(rows: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens, document_ids (B, WIDTH); the tail gets tokens 0 and one more id."""
    tokens = torch.zeros(len(rows), WIDTH, dtype=torch.long)
    ids = torch.full((len(rows), WIDTH), len(LENGTHS[0]), dtype=torch.long)
    for r, docs in enumerate(rows):
        start = 0
        for d, doc in enumerate(docs):
            tokens[r, start : start + len(doc)], ids[r, start : start + len(doc)] = doc, d
            start += len(doc)
        ids[r, start:] = len(docs)
    return tokens, ids


def _spans(row: int) -> list[slice]:
    starts = torch.tensor([0, *LENGTHS[row]]).cumsum(0).tolist()
    return [slice(a, b) for a, b in itertools.pairwise(starts)]


@torch.no_grad()
def test_packed_logits_equal_each_document_alone(model):
    rows = _docs()
    tokens, ids = _pack(rows)
    packed = model(tokens, document_ids=ids)
    assert torch.isfinite(packed).all()
    for r, docs in enumerate(rows):
        for span, doc in zip(_spans(r), docs, strict=True):
            torch.testing.assert_close(packed[r, span], model(doc[None])[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_changing_one_document_leaves_the_others_alone(model):
    rows = _docs()
    tokens, ids = _pack(rows)
    before = model(tokens, document_ids=ids)
    changed = tokens.clone()
    span = _spans(0)[1]  # the second document of row 0
    changed[0, span] = (changed[0, span] + 1) % VOCAB
    after = model(changed, document_ids=ids)
    assert not torch.allclose(after[0, span], before[0, span])
    keep = torch.ones(WIDTH, dtype=torch.bool)
    keep[span] = False
    assert torch.equal(after[0, keep], before[0, keep])  # bitwise: nothing of it reaches them
    assert torch.equal(after[1], before[1])


@torch.no_grad()
def test_same_id_in_two_separate_runs_is_two_documents(model):
    rows = _docs(seed=1)
    tokens, ids = _pack(rows)
    alternating = ids % 2  # 0,1,0,1,...: neighbours still differ, so each run stays its own document
    torch.testing.assert_close(model(tokens, document_ids=alternating), model(tokens, document_ids=ids))


def test_positions_restart_and_mask_is_block_diagonal_causal():
    ids = torch.tensor([[4, 4, 4, 9, 9, 4, 4], [0, 0, 0, 0, 0, 0, 0]])
    positions, mask = document_layout(ids)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]]
    run = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    i = torch.arange(7)
    expected = (i[None, :] <= i[:, None]) & (run[:, None] == run[None, :])
    assert mask.shape == (2, 1, 7, 7) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], expected)
    assert torch.equal(mask[1, 0], i[None, :] <= i[:, None])


def test_one_document_per_row_is_the_plain_causal_forward(model):
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, document_ids=torch.zeros_like(tokens)), model(tokens))


def test_document_ids_are_checked(model):
    tokens = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"document_ids must have shape \(2, 5\)"):
        model(tokens, document_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="without cache and valid"):
        model(tokens, document_ids=torch.zeros_like(tokens), cache=model.new_cache(2, 8))
    with pytest.raises(ValueError, match="without cache and valid"):
        model(tokens, document_ids=torch.zeros_like(tokens), valid=torch.ones(2, 5, dtype=torch.bool))


def test_packed_gradients_stay_inside_each_document(model):
    """Backward too: the loss of one document gives no gradient to another's embeddings."""
    rows = _docs()
    tokens, ids = _pack(rows)
    embeds = model.embed(tokens).detach().requires_grad_(True)
    span = _spans(0)[2]
    model(inputs_embeds=embeds, document_ids=ids)[0, span].sum().backward()
    touched = embeds.grad.abs().sum(-1) > 0  # (B, WIDTH)
    expected = torch.zeros_like(touched)
    expected[0, span] = True
    assert torch.equal(touched, expected)


def test_document_blocks_move_every_token_to_its_documents_block_and_back():
    ids = torch.tensor([[4, 4, 4, 9, 9, 4, 4], [0, 0, 0, 0, 0, 0, 0]])
    positions, blocks = document_blocks(ids)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]]
    length = -(-7 // BLOCK_ROUND) * BLOCK_ROUND  # the longest run (7 tokens), rounded up
    assert blocks.gather.shape == blocks.real.shape == (4, length)  # three runs in row 0, one in row 1
    flat = torch.arange(14)  # token index in the flattened rows
    for block, run in enumerate([[0, 1, 2], [3, 4], [5, 6], list(range(7, 14))]):
        assert blocks.gather[block, : len(run)].tolist() == run
        assert blocks.real[block].tolist() == [True] * len(run) + [False] * (length - len(run))
    assert torch.equal(blocks.gather.view(-1)[blocks.slot], flat)  # slot undoes gather, token by token


@pytest.mark.parametrize("kv_heads,length", [(4, 11), (2, 11), (2, MATMUL_ATTENTION_MAX_LENGTH + 1)])
def test_cpu_causal_attention_equals_sdpa(kv_heads, length):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, length, 8, generator=gen, requires_grad=True)
    k, v = (torch.randn(3, kv_heads, length, 8, generator=gen, requires_grad=True) for _ in range(2))
    out = causal_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != 4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for got, want in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_packed_parameter_gradients_equal_each_document_alone(model):
    """Backward through the blocks: the packed rows' summed logits give the parameters the gradients that the
    documents alone give, summed (the blocks' pad slots and the row tails add nothing)."""
    rows = _docs(seed=2)
    tokens, ids = _pack(rows)
    weight = torch.randn(VOCAB, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for r in range(len(rows)):
        mask[r, : sum(LENGTHS[r])] = True  # every document token, not the tail
    model.zero_grad()
    (model(tokens, document_ids=ids)[mask] @ weight).square().sum().backward()
    packed = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    for docs in rows:
        for doc in docs:
            (model(doc[None])[0] @ weight).square().sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(packed[k], p.grad, atol=1e-4, rtol=1e-4, msg=k)
    model.zero_grad()
