"""Invariants of the Transformer: cache == recompute, padding == no padding, sizes, precision."""

import pytest
import torch

from panglot.backbone import SIZES, Transformer, TransformerConfig, build_transformer, transformer_config
from panglot.nn import autocast_context

VOCAB = 97


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return build_transformer("debug", VOCAB).eval()


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("static", [False, True], ids=["growing", "static"])
@torch.no_grad()
def test_token_by_token_decode_equals_full_recompute(model, static):
    tokens = _tokens(2, 12)
    full = model(tokens)
    cache = model.new_cache(batch=2, max_len=16, static=static)
    steps = [model(tokens[:, :5], cache=cache)]  # prefill
    steps += [model(tokens[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 12 and cache.next_position.tolist() == [12, 12]


@pytest.mark.parametrize("static", [False, True], ids=["growing", "static"])
@torch.no_grad()
def test_chunked_prefill_equals_full_recompute(model, static):
    tokens = _tokens(3, 15, seed=2)
    cache = model.new_cache(batch=3, max_len=20, static=static)  # 5 slots never used
    chunks = [model(tokens[:, a:b], cache=cache) for a, b in ((0, 4), (4, 11), (11, 15))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), model(tokens), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padded_batch_equals_unpadded_rows(model):
    rows = [_tokens(1, n, seed=n)[0] for n in (7, 4, 1)]
    width = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, width - len(row) :], valid[i, width - len(row) :] = row, True
    padded = model(tokens, valid=valid)
    assert torch.isfinite(padded).all()
    for i, row in enumerate(rows):
        torch.testing.assert_close(padded[i, width - len(row) :], model(row[None])[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("static", [False, True], ids=["growing", "static"])
@torch.no_grad()
def test_left_padded_prefill_then_cached_decode_equals_unpadded_rows(model, static):
    rows = [_tokens(1, 9, seed=3)[0], _tokens(1, 3, seed=4)[0]]
    extra = _tokens(2, 4, seed=5)  # decoded one token at a time after the prompts
    tokens = torch.zeros(2, 9, dtype=torch.long)
    valid = torch.zeros(2, 9, dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, 9 - len(row) :], valid[i, 9 - len(row) :] = row, True
    cache = model.new_cache(batch=2, max_len=15, static=static)
    model(tokens, valid=valid, cache=cache)
    decoded = torch.cat([model(extra[:, t : t + 1], cache=cache) for t in range(4)], dim=1)
    assert cache.next_position.tolist() == [13, 7]
    for i, row in enumerate(rows):
        reference = model(torch.cat([row, extra[i]])[None])[0, len(row) :]
        torch.testing.assert_close(decoded[i], reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("static", [False, True], ids=["growing", "static"])
@torch.no_grad()
def test_taken_cache_rows_decode_as_if_each_row_was_prefilled(model, static):
    """A cache of 2 prefilled rows, taken as rows [1, 0, 1], decodes what a cache prefilled with those 3 rows does."""
    prompts, index = _tokens(2, 6, seed=6), torch.tensor([1, 0, 1])
    extra = _tokens(3, 3, seed=7)
    small = model.new_cache(batch=2, max_len=9, static=static)
    model(prompts, cache=small)
    taken = small.take_rows(index)
    full = model.new_cache(batch=3, max_len=9, static=static)
    model(prompts[index], cache=full)
    for t in range(3):
        torch.testing.assert_close(model(extra[:, t : t + 1], cache=taken), model(extra[:, t : t + 1], cache=full))
    assert taken.batch == 3 and taken.length == full.length == 9 and small.length == 6  # the original is untouched


@torch.no_grad()
def test_logits_to_keep_gives_the_last_positions(model):
    tokens = _tokens(2, 7, seed=8)
    full = model(tokens)
    torch.testing.assert_close(model(tokens, logits_to_keep=1), full[:, -1:])
    torch.testing.assert_close(model(tokens, logits_to_keep=3), full[:, -3:])
    with pytest.raises(ValueError, match="logits_to_keep must be >= 0"):
        model(tokens, logits_to_keep=-1)


@torch.no_grad()
def test_inputs_embeds_equals_tokens_and_hidden_feeds_logits(model):
    tokens = _tokens(2, 6)
    torch.testing.assert_close(model(inputs_embeds=model.embed(tokens)), model(tokens))
    hidden = model.forward_hidden(tokens)
    assert hidden.shape == (2, 6, model.cfg.dim)
    torch.testing.assert_close(model.logits(hidden), model(tokens))


def test_input_errors(model):
    tokens = _tokens(2, 6)
    with pytest.raises(ValueError, match="exactly one of tokens"):
        model(tokens, inputs_embeds=model.embed(tokens))
    with pytest.raises(ValueError, match=r"valid must have shape \(2, 6\)"):
        model(tokens, valid=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="exceeds max_seq_len 512"):
        model(_tokens(1, 513))
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
        model.new_cache(batch=1, max_len=1000)


def test_tied_embeddings_share_one_matrix():
    model = build_transformer("debug", VOCAB, tie_embeddings=True)
    assert model.output is None and "output.weight" not in model.state_dict()
    tokens = _tokens(1, 5)
    expected = model.forward_hidden(tokens) @ model.tok_embeddings.weight.T
    torch.testing.assert_close(model(tokens), expected)


def test_bf16_autocast_forward_backward_on_cpu(model):
    torch.manual_seed(0)
    train_model = build_transformer("debug", VOCAB)
    tokens = _tokens(2, 8)
    with autocast_context("cpu", "bf16"):
        logits = train_model(tokens)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
    assert logits.dtype is torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    assert train_model.layers[0].attention.wq.weight.grad.dtype is torch.float32
    with torch.no_grad(), autocast_context("cpu", "bf16"):
        cache = model.new_cache(batch=2, max_len=8, dtype=torch.bfloat16)
        cached = model(tokens, cache=cache)
    torch.testing.assert_close(cached.float(), model(tokens), atol=0.1, rtol=0.1)


def test_named_sizes_and_init():
    assert list(SIZES) == ["debug", "tiny", "small", "base", "large"]
    cfg = transformer_config("small", 1000, n_layers=2)
    assert (cfg.dim, cfg.n_layers, cfg.vocab_size) == (512, 2, 1000)
    torch.manual_seed(0)
    model = Transformer(cfg)
    assert abs(model.layers[0].attention.wq.weight.std().item() - 0.02) < 1e-3
    assert abs(model.layers[0].feed_forward.w2.weight.std().item() - 0.01) < 1e-3  # 0.02 / sqrt(2 * 2)
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        build_transformer("huge", 10)
    with pytest.raises(ValueError, match=r"unknown TransformerConfig field\(s\) \['layers'\]"):
        build_transformer("debug", 10, layers=3)


def test_config_reports_every_error():
    with pytest.raises(ValueError) as err:
        TransformerConfig(vocab_size=0, dim=30, n_layers=1, n_heads=4, n_kv_heads=3, ffn_dim=8)
    message = str(err.value)
    assert "vocab_size must be positive" in message
    assert "dim (30) must be divisible by n_heads (4)" in message
    assert "n_heads (4) must be a multiple of n_kv_heads (3)" in message


@torch.no_grad()
def test_bf16_weights_keep_fp32_rope_tables(model):
    bf16_model = build_transformer("debug", VOCAB)
    bf16_model.load_state_dict(model.state_dict())
    bf16_model = bf16_model.to(torch.bfloat16)
    assert bf16_model.rope.cos.dtype is torch.float32
    assert bf16_model.tok_embeddings.weight.dtype is torch.bfloat16
    tokens = _tokens(2, 10)
    logits = bf16_model(tokens)
    assert logits.dtype is torch.bfloat16
    torch.testing.assert_close(logits.float(), model(tokens), atol=0.1, rtol=0.1)


@torch.no_grad()
def test_debug_model_golden_logits():
    """Fixed seed -> fixed init -> fixed logits; catches silent changes to init order or the forward."""
    torch.manual_seed(0)
    golden = build_transformer("debug", VOCAB).eval()
    logits = golden(torch.arange(10)[None] * 7 % VOCAB)
    expected = torch.tensor([-0.059542, 0.260084, -0.327401, -0.328187])
    torch.testing.assert_close(logits[0, -1, :4], expected, atol=1e-5, rtol=1e-4)
    assert abs(logits.std().item() - 0.153696) < 1e-5


@torch.no_grad()
def test_decoding_copy_casts_once_and_leaves_the_model_alone(model):
    assert model.for_decoding() is model and model.for_decoding(torch.float32) is model
    bf16 = model.for_decoding(torch.bfloat16)
    assert bf16.for_decoding(torch.bfloat16) is bf16
    assert bf16.layers[0].attention.wq.weight.dtype is torch.bfloat16 and bf16.rope.cos.dtype is torch.float32
    assert not bf16.layers[0].attention.wq.weight.requires_grad
    assert model.layers[0].attention.wq.weight.dtype is torch.float32
    tokens = _tokens(2, 9, seed=6)
    cache = bf16.new_cache(batch=2, max_len=9)
    assert cache.keys[0].dtype is torch.bfloat16
    steps = [bf16(tokens[:, :4], cache=cache)] + [
        bf16(tokens[:, t : t + 1], cache=cache) for t in range(4, 9)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1).float(), model(tokens), atol=0.1, rtol=0.1)
