import json

import pytest
import torch

from panglot.data.loader import StatefulLoader


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def test_each_epoch_is_a_fresh_permutation_of_the_dataset():
    loader = StatefulLoader(list(range(10)), batch_size=3, seed=1, drop_last=False)
    assert len(loader) == 4
    epoch0 = torch.cat(_take(loader, 4)).tolist()
    epoch1 = torch.cat(_take(loader, 4)).tolist()
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1
    again = StatefulLoader(list(range(10)), batch_size=3, seed=1, drop_last=False)
    assert torch.cat(_take(again, 4)).tolist() == epoch0
    other_seed = StatefulLoader(list(range(10)), batch_size=3, seed=2, drop_last=False)
    assert torch.cat(_take(other_seed, 4)).tolist() != epoch0


def test_drop_last_and_no_shuffle():
    loader = StatefulLoader(list(range(7)), batch_size=3, shuffle=False)
    assert len(loader) == 2
    assert [b.tolist() for b in _take(loader, 3)] == [[0, 1, 2], [3, 4, 5], [0, 1, 2]]


def test_state_round_trip_continues_identically_across_epochs():
    data = [(torch.tensor([i]), i * 10) for i in range(11)]
    loader = StatefulLoader(data, batch_size=4, seed=5)
    _take(loader, 3)  # into the second epoch (2 batches per epoch)
    state = json.loads(json.dumps(loader.state_dict()))  # must survive JSON
    expected = _take(loader, 5)
    restored = StatefulLoader(data, batch_size=4, seed=5)
    restored.load_state_dict(state)
    for (x_a, y_a), (x_b, y_b) in zip(expected, _take(restored, 5), strict=True):
        assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)


def test_finite_epochs_stop():
    loader = StatefulLoader(list(range(4)), batch_size=2, epochs=2)
    assert len(list(loader)) == 4
    with pytest.raises(StopIteration):
        next(loader)


def test_state_of_another_loader_is_rejected():
    state = StatefulLoader(list(range(8)), batch_size=2, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"seed: expected 1, found 0.*dataset_len: expected 9, found 8"):
        StatefulLoader(list(range(9)), batch_size=2, seed=1).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        StatefulLoader([], batch_size=1)
    with pytest.raises(ValueError, match="smaller than one batch"):
        StatefulLoader([1, 2], batch_size=3)


def test_shards_split_each_epoch_between_processes_with_none_seen_twice():
    data = list(range(11))
    single = StatefulLoader(data, batch_size=4, seed=3, drop_last=False)
    shards = [StatefulLoader(data, batch_size=2, seed=3, drop_last=False, shard=(r, 2)) for r in range(2)]
    assert [len(s) for s in shards] == [3, 3]  # 5 items each: the 11th is left out so both take as many steps
    for _ in range(2):  # two epochs
        items = [torch.cat(_take(s, 3)).tolist() for s in shards]
        assert len(items[0]) == len(items[1]) == 5 and not set(items[0]) & set(items[1])
        order = torch.cat(_take(single, 3)).tolist()
        assert items[0] + items[1] != order and sorted(items[0] + items[1]) == sorted(order[:10])
    # a shard's position is its own: restoring it into another shard fails, naming the shard
    with pytest.raises(ValueError, match=r"shard: expected \[1, 2\], found \[0, 2\]"):
        shards[1].load_state_dict(shards[0].state_dict())
    state = {k: v for k, v in single.state_dict().items() if k != "shard"}  # a position saved before shards
    StatefulLoader(data, batch_size=4, seed=3, drop_last=False).load_state_dict(state)
    with pytest.raises(ValueError, match=r"shard must be \(rank, processes\)"):
        StatefulLoader(data, batch_size=1, shard=(2, 2))
    with pytest.raises(ValueError, match="per process"):
        StatefulLoader(data, batch_size=6, shard=(0, 2))
