"""The Dataset container: validation on construction, subset, describe, the load_dataset argument checks."""
import numpy as np
import pytest

from gruengine.data import Dataset, Vocab, describe, guess_name, load_dataset


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def _tokens(rng, n=6, T=5, V=9):
    lengths = rng.integers(1, T + 1, size=n)
    ids = rng.integers(2, V, size=(n, T))
    ids[np.arange(T)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def test_subset_keeps_rows_and_metadata(rng):
    ids, lengths = _tokens(rng)
    y = rng.integers(0, 3, size=6)
    vocab = Vocab.from_tokens([f"t{i}" for i in range(7)])
    ds = Dataset(ids, lengths, y, "classify", 3, ["a", "b", "c"], vocab)
    assert len(ds) == 6 and ds.steps == 5
    for idx in ([4, 0, 0], np.array([True, False, True, False, False, True]), slice(1, 4), np.array([-1])):
        sub = ds.subset(idx)
        np.testing.assert_array_equal(sub.inputs, ids[idx])
        np.testing.assert_array_equal(sub.lengths, lengths[idx])
        np.testing.assert_array_equal(sub.targets, y[idx])
        assert sub.vocab is vocab and sub.classes == ds.classes and sub.num_classes == 3
        assert sub.inputs.flags.c_contiguous
    with pytest.raises(ValueError, match=r"idx: expected indices in \[0, 6\)"):
        ds.subset([6])
    with pytest.raises(ValueError, match="idx: expected a boolean mask of shape"):
        ds.subset(np.ones(3, dtype=bool))


@pytest.mark.parametrize("change,match", [
    (dict(task="sort"), "task: expected one of"),
    (dict(inputs="ids"), "inputs: expected a numpy.ndarray"),
    (dict(inputs=np.zeros((6, 5), np.int32)), "inputs: expected dtype int64"),
    (dict(inputs=np.zeros((6, 5, 2), np.float64)), "inputs: expected dtype float32"),
    (dict(lengths=np.full(6, 6)), "lengths: every length must be <= T=5"),
    (dict(lengths=np.zeros(6, np.int64)), "lengths: every length must be >= 1"),
    (dict(targets=np.zeros(5, np.int64)), r"targets: expected shape \(6,\)"),
    (dict(targets=np.full(6, 3)), r"targets: expected class ids in \[0, 3\)"),
    (dict(num_classes=None), "num_classes: expected an integer >= 1"),
    (dict(classes=["a", "b"]), "classes: expected 3 names"),
    (dict(task="regress", targets=np.zeros((6, 1), np.float32)), "num_classes: expected None for float"),
    (dict(vocab=Vocab.from_tokens(["x"])), "inputs: token id .* outside the vocabulary of size 3"),
])
def test_validation(rng, change, match):
    ids, lengths = _tokens(rng)
    args = dict(inputs=ids, lengths=lengths, targets=rng.integers(0, 3, size=6), task="classify",
                num_classes=3, classes=["a", "b", "c"], vocab=None)
    Dataset(**args)  # the unchanged arguments are valid
    args.update(change)
    with pytest.raises(ValueError, match=match):
        Dataset(**args)


def test_tag_targets_and_describe(rng):
    ids, lengths = _tokens(rng)
    y = rng.integers(0, 4, size=(6, 5))
    ds = Dataset(ids, lengths, y, "tag", 4, None, None)
    d = describe(ds)
    valid = np.arange(5)[None, :] < lengths[:, None]
    assert d["class_counts"] == {str(k): int((y[valid] == k).sum()) for k in range(4)}
    assert d["length_max"] == lengths.max() and d["length_mean"] == pytest.approx(lengths.mean())
    X = rng.standard_normal((6, 5, 3)).astype(np.float32)
    ds = Dataset(X, lengths, rng.standard_normal((6, 5, 2)).astype(np.float32), "tag")
    assert describe(ds)["input"] == "3 float feature(s)" and "class_counts" not in describe(ds)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="adding", n_train=0), "n_train: expected an integer >= 1"),
    (dict(name="adding", seed=-1), "seed: expected an integer >= 0"),
    (dict(name="adding", max_len=5), "max_len: only token datasets"),
    (dict(name="adding", vocab=Vocab.from_tokens(["a"])), "vocab: the 'adding' task"),
    (dict(name="copy", vocab=Vocab.from_tokens(["a"])), "vocab: a vocabulary of 3 tokens does not match"),
    (dict(name="text", path="a.tsv,b.tsv", truncate="middle"), "truncate: expected 'head' or 'tail'"),
    (dict(name="npz", path="a.npz,b.npz", max_len=3), "max_len/vocab: only token datasets"),
    (dict(name="ucr", path="x", seq_len=3), "seq_len: only the synthetic tasks"),
    (dict(name="imdb", path="x", vocab=["<pad>"]), "vocab: expected a Vocab"),
])
def test_load_dataset_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_copy_accepts_its_own_vocab():
    a = load_dataset("copy", n_train=4, n_test=2, seq_len=3)
    b = load_dataset("copy", n_train=4, n_test=2, seq_len=3, vocab=a["train"].vocab.to_json())
    np.testing.assert_array_equal(a["train"].inputs, b["train"].inputs)


def test_guess_name(tmp_path):
    assert [guess_name(s) for s in ("adding", "x/aclImdb_v1.tar.gz", "a.npz,b.npz", "E_TRAIN.ts",
                                    "E_TRAIN.tsv", "train.tsv,test.tsv", "x/aclImdb")] == \
        ["adding", "imdb", "npz", "ucr", "ucr", "text", "imdb"]
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "Ford_TRAIN.ts").write_text("")
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "train.npz").write_bytes(b"")
    assert guess_name(str(tmp_path / "u")) == "ucr" and guess_name(str(tmp_path / "n")) == "npz"


def test_holdout_split_is_seeded_disjoint_and_stratified(rng):
    from gruengine.data.dataset import holdout_split
    from gruengine.errors import DataError
    n = int(rng.integers(10, 200))
    labels = rng.integers(0, 4, n)
    f = float(rng.uniform(0.05, 0.6))
    tr, te = holdout_split(n, f, 3, labels)
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(n))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)        # file order kept
    for c in np.unique(labels):
        k = int((labels == c).sum())
        assert int((labels[te] == c).sum()) == min(int(round(k * f)), k - 1)
        assert int((labels[tr] == c).sum()) >= 1
    tr2, te2 = holdout_split(n, f, 3, labels)
    assert np.array_equal(te, te2)
    tr, te = holdout_split(n, f, 3)
    assert len(te) == min(max(int(round(n * f)), 1), n - 1)
    with pytest.raises(DataError, match="test_fraction: 0.2 of 1 rows leaves no test rows"):
        holdout_split(1, 0.2, 0)
    with pytest.raises(DataError, match="leaves no test rows"):
        holdout_split(3, 0.2, 0, np.array([0, 1, 2]))     # one row per class: none to spare


def test_default_test_fraction_and_guess_for_one_file(tmp_path):
    from gruengine.data import default_test_fraction
    (tmp_path / "r.tsv").write_text("pos\tfine\n")
    (tmp_path / "x.npz").write_bytes(b"")
    assert default_test_fraction("text", str(tmp_path / "r.tsv")) == 0.2
    assert default_test_fraction("npz", str(tmp_path / "x.npz")) == 0.2
    assert default_test_fraction("text", f"{tmp_path / 'r.tsv'},{tmp_path / 'r.tsv'}") is None
    assert default_test_fraction("text", str(tmp_path)) is None                  # a folder
    assert default_test_fraction("imdb", str(tmp_path / "r.tsv")) is None
    assert guess_name(str(tmp_path / "r.tsv")) == "text" and guess_name(str(tmp_path / "x.npz")) == "npz"
