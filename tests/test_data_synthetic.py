"""Synthetic memory tasks: structure, seed determinism and the memoryless baselines."""
import math

import numpy as np
import pytest

from gruengine.data import load_dataset
from gruengine.data.synthetic import ADDING_BASELINE_MSE, adding_problem, copy_memory, copy_memory_baseline


@pytest.mark.parametrize("T", [2, 3, 17, 50])
def test_adding_structure(T):
    X, y = adding_problem(300, T, seed=5)
    assert X.shape == (300, T, 2) and X.dtype == np.float32 and y.shape == (300, 1) and y.dtype == np.float32
    values, marks = X[:, :, 0], X[:, :, 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(marks).tolist()) <= {0.0, 1.0}
    half = T // 2
    assert (marks[:, :half].sum(axis=1) == 1).all() and (marks[:, half:].sum(axis=1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (values * marks).sum(axis=1), rtol=1e-6)
    assert values.std() > 0.2  # not constant


def test_adding_seed_determinism():
    a, b, c = adding_problem(50, 20, seed=1), adding_problem(50, 20, seed=1), adding_problem(50, 20, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_adding_baseline_mse():
    # predicting the mean 1.0 must cost Var(u1 + u2) = 2/12; std of (y-1)^2 is ~0.197, so with
    # 100k samples the standard error is ~6e-4 and 4e-3 is more than six of them
    _, y = adding_problem(100_000, 8, seed=11)
    mse = float(np.mean((y.astype(np.float64) - 1.0) ** 2))
    assert abs(mse - 1.0 / 6.0) < 4e-3
    assert abs(ADDING_BASELINE_MSE - 1.0 / 6.0) < 1e-12
    # the marked values are independent of each other: the sum's variance is not 4/12 or 0
    assert 0.15 < float(np.var(y)) < 0.18


@pytest.mark.parametrize("T,n_symbols,copy_len", [(0, 8, 10), (5, 3, 4), (30, 8, 10)])
def test_copy_structure(T, n_symbols, copy_len):
    X, y = copy_memory(200, T, seed=3, n_symbols=n_symbols, copy_len=copy_len)
    L = T + 2 * copy_len + 1
    assert X.shape == y.shape == (200, L) and X.dtype == y.dtype == np.int64
    sym = X[:, :copy_len]
    assert ((sym >= 1) & (sym <= n_symbols)).all()
    assert (X[:, copy_len:copy_len + T] == 0).all()
    assert (X[:, copy_len + T] == n_symbols + 1).all()
    assert (X[:, copy_len + T + 1:] == 0).all()
    np.testing.assert_array_equal(y[:, L - copy_len:], sym)
    assert (y[:, :L - copy_len] == 0).all()
    a = copy_memory(20, T, seed=3, n_symbols=n_symbols, copy_len=copy_len)[0]
    np.testing.assert_array_equal(a, copy_memory(20, T, seed=3, n_symbols=n_symbols, copy_len=copy_len)[0])
    assert not np.array_equal(a, copy_memory(20, T, seed=4, n_symbols=n_symbols, copy_len=copy_len)[0])


def test_copy_memoryless_baseline():
    # the best model that sees only the position predicts, at each step, the empirical class
    # frequencies of that step; its mean cross-entropy must match the documented formula
    T, n_symbols, copy_len = 20, 8, 10
    _, y = copy_memory(20_000, T, seed=9, n_symbols=n_symbols, copy_len=copy_len)
    L = y.shape[1]
    ce = 0.0
    for t in range(L):  # per position, over all samples at once
        freq = np.bincount(y[:, t], minlength=n_symbols + 1) / y.shape[0]
        ce += -np.mean(np.log(freq[y[:, t]]))
    ce /= L
    want = copy_memory_baseline(T, n_symbols, copy_len)
    assert abs(ce - want) < 2e-3 * want + 1e-4
    assert abs(want - copy_len * math.log(n_symbols) / (T + 2 * copy_len + 1)) < 1e-12


def test_load_dataset_synthetic():
    s = load_dataset("adding", n_train=64, n_test=16, seq_len=12, seed=4)
    tr, te = s["train"], s["test"]
    assert tr.task == "regress" and tr.inputs.shape == (64, 12, 2) and te.inputs.shape == (16, 12, 2)
    assert (tr.lengths == 12).all() and tr.num_classes is None
    assert not np.array_equal(tr.inputs[:16], te.inputs)  # distinct streams for train and test
    again = load_dataset("adding", n_train=64, n_test=16, seq_len=12, seed=4)["train"]
    np.testing.assert_array_equal(again.inputs, tr.inputs)

    c = load_dataset("copy", n_train=32, n_test=8, seq_len=6, seed=1)["train"]
    assert c.task == "tag" and c.num_classes == 9 and c.classes[0] == "<blank>"
    assert c.inputs.shape == (32, 6 + 21) and c.targets.shape == (32, 27)
    # inputs are vocabulary ids: symbols decode to the target class names
    assert c.vocab.decode(c.inputs[0, :10]) == [c.classes[k] for k in c.targets[0, -10:]]
    assert c.vocab.decode(c.inputs[0, 16:17]) == ["<delim>"]
    with pytest.raises(ValueError, match="seq_len"):
        load_dataset("adding", seq_len=0)
    with pytest.raises(ValueError, match="path: the synthetic 'copy' task reads no file"):
        load_dataset("copy", "some/file")
    with pytest.raises(ValueError, match="name: expected one of"):
        load_dataset("mnist")
