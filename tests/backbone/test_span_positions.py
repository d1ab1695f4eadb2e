"""Span positions: image tokens (ids in a span range) get row + column embeddings by their index in their run,
the same whether the sequence is computed at once, token by token from a cache, or left-padded."""

import pytest
import torch

from panglot.backbone import Transformer, TransformerConfig, transformer_config

VOCAB, START, END = 60, 30, 54  # ids [30, 54) are "image codes"


def span_model(rows: int = 2, cols: int = 3, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(
        transformer_config("debug", VOCAB, span_start=START, span_end=END, span_rows=rows, span_cols=cols)
    ).eval()
    with torch.no_grad():  # trained-looking tables (they start at zero)
        model.span_row_embeddings.weight.normal_()
        model.span_col_embeddings.weight.normal_()
    return model


def image_sequence(batch: int, seed: int = 1) -> torch.Tensor:
    """text, an image run of 6 codes, text, a second run cut after 4 codes."""
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(1, START, (batch, n), generator=g)  # noqa: E731
    codes = lambda n: torch.randint(START, END, (batch, n), generator=g)  # noqa: E731
    return torch.cat([text(3), codes(6), text(2), codes(4)], dim=1)


def test_span_index_counts_within_each_run_and_continues_through_a_cache():
    model = span_model()
    tokens = torch.tensor([[1, 2, 30, 31, 32, 33, 3, 40, 41]])
    index, in_span = model.span_index(tokens)
    assert in_span.tolist() == [[False, False, True, True, True, True, False, True, True]]
    assert index[in_span].tolist() == [0, 1, 2, 3, 0, 1]
    cache = model.new_cache(1, 16)
    seen = []
    for chunk in (tokens[:, :3], tokens[:, 3:5], tokens[:, 5:6], tokens[:, 6:]):
        index, in_span = model.span_index(chunk, cache)
        seen += index[in_span].tolist()
    assert seen == [0, 1, 2, 3, 0, 1] and cache.span_run.tolist() == [2]


def test_a_code_is_embedded_by_its_place_in_the_grid():
    model = span_model(rows=2, cols=3)
    code = START + 5
    tokens = torch.tensor([[1] + [code] * 6])  # one image of 2 x 3 identical codes
    with torch.no_grad():
        x = model.embed(tokens)[0]
        table = model.tok_embeddings.weight[code]
        rows, cols = model.span_row_embeddings.weight, model.span_col_embeddings.weight
        for i in range(6):
            torch.testing.assert_close(x[1 + i], table + rows[i // 3] + cols[i % 3])
        torch.testing.assert_close(x[0], model.tok_embeddings.weight[1])  # text tokens untouched


@pytest.mark.parametrize("mode", ["growing", "static", "compiled"])
@torch.no_grad()
def test_cached_decode_equals_full_recompute(mode):
    """Also through compiled steps (`compile_for_decoding`), where the span index and its cache state are
    computed inside the graph."""
    model = span_model()
    decoder = model.for_decoding(compile=True) if mode == "compiled" else model
    tokens = image_sequence(2)
    cache = decoder.new_cache(batch=2, max_len=20, static=mode != "growing")
    steps = [decoder(tokens[:, :5], cache=cache)]  # the prefill ends inside the first image
    steps += [decoder(tokens[:, t : t + 1], cache=cache) for t in range(5, tokens.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(tokens), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padding_does_not_move_span_positions():
    model = span_model()
    long, short = image_sequence(1, seed=3), image_sequence(1, seed=4)[:, 2:]  # short: 2 tokens less
    tokens = torch.cat([long, torch.cat([torch.zeros(1, 2, dtype=torch.long), short], dim=1)])
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[1, :2] = False
    cache = model.new_cache(batch=2, max_len=20)
    out = torch.cat([model(tokens[:, :7], valid=valid[:, :7], cache=cache)]
                    + [model(tokens[:, t : t + 1], cache=cache) for t in range(7, tokens.shape[1])], dim=1)  # fmt: skip
    torch.testing.assert_close(out[0], model(long)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 2:], model(short)[0], atol=1e-5, rtol=1e-5)


def test_zero_tables_leave_the_function_unchanged_and_training_moves_them():
    torch.manual_seed(0)
    plain = Transformer(transformer_config("debug", VOCAB)).eval()
    spans = Transformer(transformer_config("debug", VOCAB, span_start=START, span_end=END, span_rows=4, span_cols=1))
    missing, unexpected = spans.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["span_col_embeddings.weight", "span_row_embeddings.weight"] and not unexpected
    tokens = image_sequence(2)
    with torch.no_grad():
        torch.testing.assert_close(spans.eval()(tokens), plain(tokens))
    spans.train()
    torch.nn.functional.cross_entropy(spans(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:]).backward()
    assert spans.span_row_embeddings.weight.grad.abs().sum() > 0


def test_config_errors_name_the_span():
    with pytest.raises(ValueError, match=r"span ids \[50, 70\)"):
        TransformerConfig(vocab_size=60, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32,
                          span_start=50, span_end=70, span_rows=2)  # fmt: skip
    with pytest.raises(ValueError, match="span_cols"):
        TransformerConfig(vocab_size=60, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32, span_cols=0)
