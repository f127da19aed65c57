"""Synthetic long-memory tasks, generated from a seed (no files).

Adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015 / Arjovsky et al. 2016):
each step carries a value u ~ U(0, 1) and a marker; exactly two steps are marked, one in the first
half and one in the second half; the target is the sum of the two marked values. The sum of two
independent U(0, 1) has mean 1 and variance 2/12, so always predicting 1.0 scores MSE = 1/6 ~ 0.167:
a model has learned something only below that.

Copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): ``copy_len`` random symbols out
of ``n_symbols``, then ``T`` blanks, then a delimiter, then ``copy_len`` more blanks during which the
model must output the symbols in order. Length L = copy_len + T + 1 + copy_len. The target is the
'blank' class everywhere except the last ``copy_len`` steps. A memoryless model that outputs blank
until the delimiter and then a uniform guess scores the cross-entropy (mean over all L steps)
``copy_len * ln(n_symbols) / L`` (see ``copy_memory_baseline``); learning means going below it.
"""
import math

import numpy as np

from .._checks import check_positive_int
from ..limits import MAX_DATA_BYTES, check_data_size
from .dataset import Dataset
from .text import Vocab


def adding_problem(n, T, seed=0):
    """-> X (n, T, 2) float32 [value, marker], y (n, 1) float32 (sum of the two marked values).

    ``seed``: anything ``numpy.random.default_rng`` accepts. Needs T >= 2.
    """
    n = check_positive_int("n", n)
    T = check_positive_int("T", T, minimum=2)
    rng = np.random.default_rng(seed)
    half = T // 2
    values = rng.random((n, T))
    first = rng.integers(0, half, size=n)        # in [0, T//2)
    second = rng.integers(half, T, size=n)       # in [T//2, T)
    rows = np.arange(n)
    X = np.zeros((n, T, 2), dtype=np.float32)
    X[:, :, 0] = values
    X[rows, first, 1] = 1.0
    X[rows, second, 1] = 1.0
    y = (X[rows, first, 0] + X[rows, second, 0])[:, None].astype(np.float32)
    return X, y


def copy_memory(n, T, seed=0, n_symbols=8, copy_len=10):
    """-> X (n, L) int64, y (n, L) int64 with L = T + 2 * copy_len + 1.

    X codes: 0 blank, 1..n_symbols the symbols, n_symbols + 1 the delimiter.
    y codes: 0 blank, 1..n_symbols the symbols (n_symbols + 1 classes).
    """
    n = check_positive_int("n", n)
    T = check_positive_int("T", T, minimum=0)
    n_symbols = check_positive_int("n_symbols", n_symbols, minimum=2)
    copy_len = check_positive_int("copy_len", copy_len)
    rng = np.random.default_rng(seed)
    L = T + 2 * copy_len + 1
    symbols = rng.integers(1, n_symbols + 1, size=(n, copy_len))
    X = np.zeros((n, L), dtype=np.int64)
    X[:, :copy_len] = symbols
    X[:, copy_len + T] = n_symbols + 1
    y = np.zeros((n, L), dtype=np.int64)
    y[:, L - copy_len:] = symbols
    return X, y


def copy_memory_baseline(T, n_symbols=8, copy_len=10):
    """Mean cross-entropy (nats per step) of the best memoryless strategy on ``copy_memory``."""
    return copy_len * math.log(n_symbols) / (T + 2 * copy_len + 1)


ADDING_BASELINE_MSE = 1.0 / 6.0


def _check_size(task, n_train, n_test, T, step_bytes, max_data_bytes):
    """The arrays of a synthetic task are allocated at once: check their size first."""
    n = check_positive_int("n_train", n_train) + check_positive_int("n_test", n_test)
    check_data_size("seq_len, n_train", n * T * step_bytes, max_data_bytes,
                    f"the {task} data ({n} sequences x {T} steps x {step_bytes} bytes)",
                    "lower --seq-len or --n-train, or raise --max-data-bytes")


def load_adding(*, n_train=None, n_test=None, seq_len=None, seed=0, max_data_bytes=MAX_DATA_BYTES):
    """{'train', 'test'} Datasets of the adding problem (regress, K = 1, inputs (N, T, 2))."""
    n_train = 10000 if n_train is None else n_train
    n_test = 1000 if n_test is None else n_test
    T = 100 if seq_len is None else seq_len
    _check_size("adding", n_train, n_test, T, 16, max_data_bytes)   # X float32, the float64 draw
    out = {}
    for k, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        X, y = adding_problem(n, T, seed=[seed, k])
        out[name] = Dataset(X, np.full(n, T, dtype=np.int64), y, "regress", None, None, None)
    return out


def load_copy(*, n_train=None, n_test=None, seq_len=None, seed=0, n_symbols=8, copy_len=10,
              max_data_bytes=MAX_DATA_BYTES):
    """{'train', 'test'} Datasets of the copy task (tag, int targets; inputs are Vocab ids).

    Inputs are ``copy_memory`` codes + 2, so they index a Vocab
    ['<pad>', '<unk>', '<blank>', '1', ..., str(n_symbols), '<delim>'];
    classes are ['<blank>', '1', ..., str(n_symbols)].
    """
    n_train = 10000 if n_train is None else n_train
    n_test = 1000 if n_test is None else n_test
    T = 100 if seq_len is None else seq_len
    _check_size("copy", n_train, n_test, T + 2 * copy_len + 1, 24, max_data_bytes)  # X, X + 2, y
    names = [str(s) for s in range(1, n_symbols + 1)]
    vocab = Vocab.from_tokens(["<blank>"] + names + ["<delim>"])
    classes = ["<blank>"] + names
    out = {}
    for k, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        X, y = copy_memory(n, T, seed=[seed, k], n_symbols=n_symbols, copy_len=copy_len)
        out[name] = Dataset(X + 2, np.full(n, X.shape[1], dtype=np.int64), y, "tag",
                            len(classes), classes, vocab)
    return out
