"""Batching: the epoch order is a function of (seed, epoch) with little padding, evaluation
batches are sorted, a batch is the rows trimmed to their longest, the validation split is a
partition."""
import numpy as np
import pytest

from gruengine.batching import epoch_batches, make_batch, sorted_batches, split_validation
from gruengine.data.dataset import Dataset


def _dataset(rng, n, T, task="classify", features=0):
    lengths = rng.integers(1, T + 1, size=n).astype(np.int64)
    pad = np.arange(T)[None, :] >= lengths[:, None]
    if features:
        x = rng.standard_normal((n, T, features)).astype(np.float32)
        x[pad] = 0
    else:
        x = rng.integers(1, 9, size=(n, T)).astype(np.int64)
        x[pad] = 0
    if task == "tag":
        y = rng.integers(0, 3, size=(n, T)).astype(np.int64)
    else:
        y = rng.integers(0, 3, size=n).astype(np.int64)
    return Dataset(x, lengths, y, task, num_classes=3)


def test_batches_are_a_function_of_seed_and_epoch_and_carry_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    b1 = epoch_batches(lengths, 16, seed=3, epoch=2)
    b2 = epoch_batches(lengths, 16, seed=3, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(b1, b2))
    b3 = epoch_batches(lengths, 16, seed=3, epoch=3)
    assert not all(np.array_equal(x, y) for x, y in zip(b1, b3))
    flat = np.concatenate(b1)
    assert np.array_equal(np.sort(flat), np.arange(1000))    # each example once
    padded = sum(len(b) * lengths[b].max() for b in b1)
    rand = np.random.default_rng(1).permutation(1000)
    padded_random = sum(16 * lengths[rand[i:i + 16]].max() for i in range(0, 1000, 16))
    assert padded < 0.7 * padded_random
    assert padded < 1.1 * lengths.sum()


def test_sorted_batches_cover_every_row_longest_first():
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 30, size=101)
    batches = sorted_batches(lengths, 8)
    assert [len(b) for b in batches] == [8] * 12 + [5]
    flat = np.concatenate(batches)
    assert np.array_equal(np.sort(flat), np.arange(101))
    assert np.array_equal(lengths[flat], np.sort(lengths)[::-1])


@pytest.mark.parametrize("task, features", [("classify", 0), ("tag", 0), ("classify", 2)])
def test_make_batch_is_the_rows_trimmed_to_the_longest(task, features):
    rng = np.random.default_rng([6, features])
    ds = _dataset(rng, 20, 9, task, features)
    idx = rng.choice(20, size=5, replace=False)
    x, L, y = make_batch(ds, idx, np.float64)
    T = int(ds.lengths[idx].max())
    np.testing.assert_array_equal(L, ds.lengths[idx])
    np.testing.assert_array_equal(x, ds.inputs[idx][:, :T])
    np.testing.assert_array_equal(y, ds.targets[idx][:, :T] if task == "tag" else ds.targets[idx])
    assert x.dtype == (np.float64 if features else np.int64)
    assert x.flags.c_contiguous and y.flags.c_contiguous and L.flags.c_contiguous


def test_split_validation_is_a_seeded_partition():
    rng = np.random.default_rng(9)
    ds = _dataset(rng, 50, 6)
    train, val = split_validation(ds, 0.2, seed=1)
    assert (len(train), len(val)) == (40, 10)
    rows = lambda d: {tuple(r) for r in d.inputs.tolist()}       # noqa: E731
    assert rows(train) | rows(val) == rows(ds) and len(train) + len(val) == len(ds)
    again, _ = split_validation(ds, 0.2, seed=1)
    np.testing.assert_array_equal(again.inputs, train.inputs)
    other, _ = split_validation(ds, 0.2, seed=2)
    assert not np.array_equal(other.inputs, train.inputs)
    assert split_validation(ds, 0.0, seed=1) == (ds, None)
    tiny = ds.subset(np.arange(2))
    t, v = split_validation(tiny, 0.01, seed=0)          # at least one row each side
    assert (len(t), len(v)) == (1, 1)
