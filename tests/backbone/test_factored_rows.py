"""FactoredRows: rows of an embedding that share parameters through their ids' factors, and the plain
state dict that keeps saved weights loadable without them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from panglot.nn.factored_rows import FactoredRows, factor_rows, plain_state_dict

# ids 0..5 of a block at rows 4..9: colour = id % 2, digit = id // 2
COLOUR = (torch.arange(6) % 2, 2)
DIGIT = (torch.arange(6) // 2, 3)


def embedding() -> nn.Embedding:
    torch.manual_seed(0)
    emb = nn.Embedding(12, 4)
    factor_rows(emb, 4, [COLOUR, DIGIT])
    return emb


def test_tables_start_at_zero_and_add_to_their_rows_only():
    emb = embedding()
    original = emb.parametrizations.weight.original.detach().clone()
    torch.testing.assert_close(emb.weight, original)  # adding the factors changes nothing yet
    colour, digit = emb.parametrizations.weight[0].tables
    with torch.no_grad():
        colour[1] = 1.0
        digit[2] = 10.0
    expected = original.clone()
    for i in range(6):
        expected[4 + i] += (1.0 if i % 2 else 0.0) + (10.0 if i // 2 == 2 else 0.0)
    torch.testing.assert_close(emb.weight, expected)


def test_a_gradient_on_one_id_moves_every_id_that_shares_a_factor():
    emb = embedding()
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    before = emb.weight.detach().clone()
    emb(torch.tensor([4 + 3])).sum().backward()  # id 3: colour 1, digit 1
    opt.step()
    moved = (emb.weight.detach() - before).abs().sum(dim=1) > 0
    # id 3's own row, ids with colour 1 (1, 3, 5) and ids with digit 1 (2, 3); text rows never
    assert moved.tolist() == [False] * 4 + [False, True, True, True, False, True] + [False] * 2


def test_plain_state_dict_loads_into_a_module_without_factors():
    emb = embedding()
    with torch.no_grad():
        emb.parametrizations.weight[0].tables[0].add_(0.5)
    state = plain_state_dict(emb)
    assert set(state) == {"weight"}
    plain = nn.Embedding(12, 4)
    plain.load_state_dict(state)
    ids = torch.arange(12)
    torch.testing.assert_close(plain(ids), emb(ids))
    nested = nn.Sequential(nn.Embedding(12, 4), nn.Linear(4, 12))
    factor_rows(nested[0], 4, [COLOUR])
    assert set(plain_state_dict(nested)) == {"0.weight", "1.weight", "1.bias"}


@pytest.mark.parametrize(
    ("factors", "message"),
    [
        ([], "at least one factor or features"),
        ([COLOUR, (torch.arange(5), 5)], "each of the 6 ids"),
        ([(torch.arange(6), 3)], r"in \[0, 3\)"),
    ],
)
def test_bad_factors_are_named(factors, message):
    with pytest.raises(ValueError, match=message):
        FactoredRows(0, factors, 4)


def test_rows_past_the_weight_are_an_error():
    with pytest.raises(ValueError, match=r"rows \[8, 14\) do not fit a weight of 12 rows"):
        FactoredRows(8, [COLOUR], 4)(torch.zeros(12, 4))


def test_features_add_a_learned_map_of_each_rows_fixed_features():
    looks = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])  # (6 ids, 2)
    torch.manual_seed(0)
    emb = nn.Embedding(12, 4)
    factor_rows(emb, 4, [COLOUR], features=looks)
    rows = emb.parametrizations.weight[0]
    original = emb.parametrizations.weight.original.detach().clone()
    torch.testing.assert_close(emb.weight, original)  # the map starts at zero too
    with torch.no_grad():
        rows.proj.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]]))
    expected = original.clone()
    expected[4:10] += looks @ rows.proj.detach()
    torch.testing.assert_close(emb.weight, expected)
    emb(torch.tensor([4])).sum().backward()  # id 0 looks like id 1: its gradient moves the map both share
    assert rows.proj.grad[0].abs().sum() > 0 and rows.proj.grad[1].abs().sum() == 0
    only_looks = nn.Embedding(12, 4)
    factor_rows(only_looks, 4, [], features=looks)  # features alone are enough
    assert set(plain_state_dict(only_looks)) == {"weight"}
    torch.testing.assert_close(plain_state_dict(only_looks)["weight"], only_looks.weight.detach())
    with pytest.raises(ValueError, match=r"features must be \(n, F\) with n = 6"):
        FactoredRows(4, [COLOUR], 4, features=torch.zeros(5, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_and_table_gradients_equal_per_table_lookups_under_autocast_and_in_bf16(dtype):
    emb = embedding().to(dtype)
    factored = emb.parametrizations.weight[0]
    colour, digit = factored.tables
    with torch.no_grad():
        colour.normal_()
        digit.normal_()
    grad = torch.randn(6, 4, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        shared = factored.shared()
    (shared * grad).sum().backward()
    lookups = colour.detach()[COLOUR[0]] + digit.detach()[DIGIT[0]]
    assert shared.dtype == dtype  # autocast does not round the sums
    torch.testing.assert_close(shared, lookups, rtol=0, atol=0)
    for table, (values, size) in ((colour, COLOUR), (digit, DIGIT)):  # each value's gradient: its ids' sum
        expected = torch.stack([grad[values == v].float().sum(0) for v in range(size)])
        torch.testing.assert_close(table.grad.float(), expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-2)
