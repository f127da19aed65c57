"""Numeric .npz datasets: task from target shape/dtype, lengths, NaN and shape errors."""
import numpy as np
import pytest

from gruengine.data import load_dataset
from gruengine.errors import DataError


@pytest.fixture
def rng():
    return np.random.default_rng(99)


def _save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _pair(tmp_path, train, test):
    _save(tmp_path / "train.npz", **train)
    _save(tmp_path / "test.npz", **test)
    return str(tmp_path)


def test_classify_with_lengths_and_padding_nan(tmp_path, rng):
    N, T, F = 9, 7, 3
    X = rng.standard_normal((N, T, F))
    lengths = rng.integers(1, T + 1, size=N)
    X[np.arange(T)[None, :] >= lengths[:, None]] = np.nan  # padding may hold anything
    y = rng.integers(0, 4, size=N)
    y[0] = 3
    Xt, yt = rng.standard_normal((4, 5, F)), rng.integers(0, 4, size=4)
    s = load_dataset("npz", _pair(tmp_path, dict(X=X, y=y, lengths=lengths), dict(X=Xt, y=yt)))
    tr, te = s["train"], s["test"]
    assert tr.task == "classify" and tr.num_classes == 4 and tr.classes == ["0", "1", "2", "3"]
    assert tr.inputs.dtype == np.float32 and tr.inputs.shape == (N, T, F)
    valid = np.arange(T)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(tr.inputs[valid], X[valid].astype(np.float32))
    assert (tr.inputs[~valid] == 0).all()
    np.testing.assert_array_equal(tr.lengths, lengths)
    np.testing.assert_array_equal(tr.targets, y)
    assert te.steps == 5 and (te.lengths == 5).all()


@pytest.mark.parametrize("kind", ["regress1", "regressK", "tag_int", "tag_float", "univariate"])
def test_task_follows_targets(tmp_path, rng, kind):
    N, T = 6, 4
    X = rng.standard_normal((N, T) if kind == "univariate" else (N, T, 2))
    y = {"regress1": rng.standard_normal(N), "regressK": rng.standard_normal((N, 3)),
         "tag_int": rng.integers(0, 3, size=(N, T)), "tag_float": rng.standard_normal((N, T, 2)),
         "univariate": rng.integers(0, 2, size=N)}[kind]
    y[0] = 2 if kind == "tag_int" else y[0]
    s = load_dataset("npz", _pair(tmp_path, dict(X=X, y=y), dict(X=X[:2], y=y[:2])))
    ds = s["train"]
    want = {"regress1": "regress", "regressK": "regress", "tag_int": "tag", "tag_float": "tag",
            "univariate": "classify"}[kind]
    assert ds.task == want and len(s["test"]) == 2
    assert ds.inputs.shape == (N, T, 1 if kind == "univariate" else 2)
    np.testing.assert_allclose(ds.targets.reshape(y.shape), y, rtol=1e-6)
    assert (ds.num_classes is None) == (y.dtype.kind == "f")


def test_named_classes_and_limits(tmp_path, rng):
    X, y = rng.standard_normal((10, 3, 1)), rng.integers(0, 3, size=10)
    names = np.array(["low", "mid", "high"])
    s = load_dataset("npz", f"{_save(tmp_path / 'a.npz', X=X, y=y, classes=names)},"
                            f"{_save(tmp_path / 'b.npz', X=X, y=y)}", n_train=4, n_test=2)
    assert s["train"].classes == ["low", "mid", "high"] and s["train"].num_classes == 3
    assert len(s["train"]) == 4 and len(s["test"]) == 2
    np.testing.assert_array_equal(s["train"].targets, y[:4])


@pytest.mark.parametrize("train,match", [
    (dict(X=np.ones((3, 4, 2)), y=np.zeros(3, np.int64)), None),  # control: loads
    (dict(y=np.zeros(3, np.int64)), "missing array 'X'"),
    (dict(X=np.ones((3, 4, 2, 1)), y=np.zeros(3, np.int64)), r"X: expected shape \(N, T, F\)"),
    (dict(X=np.ones((3, 4, 2)), y=np.zeros(5, np.int64)), "y: expected first dimension N=3"),
    (dict(X=np.ones((3, 4, 2)), y=np.zeros((3, 5), np.int64)), r"integer targets must have shape"),
    (dict(X=np.ones((3, 4, 2)), y=np.zeros(3, np.int64), lengths=np.array([1, 5, 2])),
     r"lengths: expected values in \[1, 4\]"),
    (dict(X=np.ones((0, 4, 2)), y=np.zeros(0, np.int64)), "empty dataset"),
    (dict(X=np.array([[[1.0], [np.nan]], [[1.0], [2.0]]]), y=np.zeros(2, np.int64)), "NaN or Inf in row 0"),
    (dict(X=np.ones((2, 2, 1)), y=np.array([0.5, np.nan])), "y: NaN or Inf"),
    (dict(X=np.ones((2, 2, 1)), y=np.zeros(2, np.int64), extra=np.ones(2)), r"unexpected array\(s\) \['extra'\]"),
])
def test_malformed_npz(tmp_path, train, match):
    path = _pair(tmp_path, train, dict(X=np.ones((2, 4, 2)), y=np.zeros(2, np.int64)))
    if match is None:
        assert len(load_dataset("npz", path)["train"]) == 3
        return
    with pytest.raises(DataError, match=match) as e:
        load_dataset("npz", path)
    assert "train.npz" in str(e.value) and "\n" not in str(e.value)


def test_test_split_must_fit_training(tmp_path, rng):
    X = rng.standard_normal((5, 3, 2))
    with pytest.raises(DataError, match=r"test\.npz: y: class id 7 is outside the known classes \[0, 2\)"):
        load_dataset("npz", _pair(tmp_path, dict(X=X, y=np.array([0, 1, 1, 0, 1])),
                                  dict(X=X, y=np.array([0, 7, 1, 0, 1]))))
    with pytest.raises(DataError, match=r"test\.npz: X has 3 features"):
        load_dataset("npz", _pair(tmp_path, dict(X=X, y=np.zeros(5, np.int64)),
                                  dict(X=rng.standard_normal((5, 3, 3)), y=np.zeros(5, np.int64))))


def test_unreadable_and_missing(tmp_path):
    (tmp_path / "train.npz").write_bytes(b"this is not a zip file")
    (tmp_path / "test.npz").write_bytes(b"nor this")
    with pytest.raises(DataError, match=r"train\.npz: not a readable \.npz"):
        load_dataset("npz", str(tmp_path))
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=r"sub: folder holds no npz pair \(train\.npz\+test\.npz\)"):
        load_dataset("npz", str(tmp_path / "sub"))
    with pytest.raises(DataError, match="nope.npz: no such file"):
        load_dataset("npz", f"{tmp_path / 'nope.npz'},{tmp_path / 'test.npz'}")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("npz")


@pytest.mark.parametrize("kind", ["classify", "regress"])
def test_one_npz_file_is_split_by_test_fraction(tmp_path, kind):
    import secrets
    seed = secrets.randbits(32)
    print(f"rng seed {seed}")
    fresh = np.random.default_rng(seed)
    n, t = int(fresh.integers(30, 80)), int(fresh.integers(3, 9))
    X = fresh.standard_normal((n, t, 2)).astype(np.float32)
    y = fresh.integers(0, 3, n) if kind == "classify" else fresh.standard_normal((n, 2))
    lengths = fresh.integers(1, t + 1, n)
    path = _save(tmp_path / "all.npz", X=X, y=y, lengths=lengths)
    f = float(fresh.uniform(0.1, 0.4))
    split = load_dataset("npz", path, test_fraction=f, seed=7)
    tr, te = split["train"], split["test"]
    assert tr.task == te.task == kind
    # the two splits partition the file's rows (padding zeroed as the loader does)
    Xz = np.where(np.arange(t)[None, :, None] < lengths[:, None, None], X, np.float32(0))
    rows = {Xz[i].tobytes(): i for i in range(n)}
    got = [rows[x.tobytes()] for x in tr.inputs] + [rows[x.tobytes()] for x in te.inputs]
    assert sorted(got) == list(range(n))
    test_rows = [rows[x.tobytes()] for x in te.inputs]
    np.testing.assert_array_equal(te.lengths, lengths[test_rows])
    if kind == "classify":
        np.testing.assert_array_equal(te.targets, y[test_rows])
        for c in np.unique(y):
            k = int((y == c).sum())
            assert int((te.targets == c).sum()) == min(int(round(k * f)), k - 1)
    else:
        np.testing.assert_allclose(te.targets, y[test_rows].astype(np.float32))
        assert len(te) == min(max(int(round(n * f)), 1), n - 1)
    again = load_dataset("npz", path, test_fraction=f, seed=7)["test"]
    np.testing.assert_array_equal(again.inputs, te.inputs)
    with pytest.raises(DataError, match=r"all\.npz: the npz loader needs a train and a test "
                                        r"file .*--test-fraction 0\.2"):
        load_dataset("npz", path)
