"""IMDB: read straight from a .tar.gz or from the extracted folder (tiny fake archives; the real
archive only when /work/shared/data has it)."""
import io
import os
import tarfile

import numpy as np
import pytest

from gruengine.data import load_dataset
from gruengine.data.imdb import read_imdb
from gruengine.errors import DataError
from tests.fixtures.data_builders import imdb_reviews, write_imdb_folder, write_imdb_tar

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "aclImdb_labeled.tar.gz")


@pytest.fixture(scope="module")
def reviews():
    return imdb_reviews(np.random.default_rng(7), n_per_class=12, extra_words=("zebra", "quasar"))


@pytest.fixture(scope="module")
def tar_path(tmp_path_factory, reviews):
    return write_imdb_tar(str(tmp_path_factory.mktemp("imdb") / "aclImdb_v1.tar.gz"), reviews)


def _by_tokens(reviews, split):
    return {tuple(toks): int(cls == "pos") for (s, cls), items in reviews.items() if s == split
            for _, _, _, toks in items}


def test_tar_rows_match_the_reviews(tar_path, reviews):
    splits = load_dataset("imdb", tar_path, seed=3)
    for split in ("train", "test"):
        ds, truth = splits[split], _by_tokens(reviews, split)
        assert len(ds) == len(truth) == 24 and ds.classes == ["neg", "pos"] and ds.num_classes == 2
        seen = set()
        for row, n, y in zip(ds.inputs, ds.lengths, ds.targets):
            toks = tuple(ds.vocab.decode(row[:n]))
            if split == "train":
                assert truth[toks] == y  # every train token is in the vocabulary
            seen.add(toks)
            assert (row[n:] == 0).all()
        if split == "train":
            assert seen == set(truth)
    assert np.bincount(splits["train"].targets).tolist() == [12, 12]


def test_vocab_from_train_only(tar_path):
    splits = load_dataset("imdb", tar_path)
    v = splits["train"].vocab
    assert "zebra" not in v.stoi and "quasar" not in v.stoi and "film" in v.stoi
    assert splits["test"].vocab is v
    # the test-only words exist in the raw test reviews and encode as <unk>
    raw = read_imdb(tar_path)["test"][0]
    assert any("zebra" in t or "quasar" in t for t in raw)
    assert (splits["test"].inputs == 1).any()


def test_folder_equals_tar(tmp_path, tar_path, reviews):
    folder = write_imdb_folder(str(tmp_path), reviews)
    a = load_dataset("imdb", tar_path, max_len=10, vocab_size=12, seed=5)
    plain = write_imdb_tar(str(tmp_path / "plain.tar"), reviews, root="imdb_copy", mode="w")
    for path in (folder, str(tmp_path), plain):  # the folder, the folder above it, an uncompressed tar
        b = load_dataset("imdb", path, max_len=10, vocab_size=12, seed=5)
        for split in ("train", "test"):
            np.testing.assert_array_equal(a[split].inputs, b[split].inputs)
            np.testing.assert_array_equal(a[split].lengths, b[split].lengths)
            np.testing.assert_array_equal(a[split].targets, b[split].targets)
        assert a["train"].vocab == b["train"].vocab and len(a["train"].vocab) == 12


def test_given_vocab_is_used(tar_path):
    a = load_dataset("imdb", tar_path, vocab_size=9, max_len=6, truncate="tail")
    b = load_dataset("imdb", tar_path, vocab=a["train"].vocab.to_json(), vocab_size=50000, max_len=6,
                     truncate="tail")
    assert len(b["train"].vocab) == 9
    np.testing.assert_array_equal(a["test"].inputs, b["test"].inputs)


@pytest.mark.parametrize("n_train,n_test", [(5, 2), (1, 24), (100, 3)])
def test_limits_are_balanced(tar_path, n_train, n_test):
    raw = read_imdb(tar_path, n_train=n_train, n_test=n_test)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = raw[split][1]
        want = min(n, 24)
        assert len(labels) == want == len(raw[split][0])
        assert np.bincount(labels, minlength=2).tolist() == [min(want // 2, 12), want - min(want // 2, 12)]


def test_seed_shuffles_rows_deterministically(tar_path):
    a, b, c = (load_dataset("imdb", tar_path, seed=s)["train"] for s in (1, 1, 2))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.targets, c.targets) or not np.array_equal(a.inputs, c.inputs)
    assert sorted(map(tuple, a.inputs.tolist())) == sorted(map(tuple, c.inputs.tolist()))


def test_bad_archives(tmp_path, reviews):
    wrong = write_imdb_tar(str(tmp_path / "wrong.tar.gz"), reviews, order=("test",))
    with pytest.raises(DataError, match=r"wrong\.tar\.gz: not the IMDB layout.*train"):
        read_imdb(wrong)
    good = write_imdb_tar(str(tmp_path / "good.tar.gz"), reviews)
    data = open(good, "rb").read()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.tar\.gz: cannot read the archive"):
        read_imdb(str(tmp_path / "cut.tar.gz"))
    (tmp_path / "plain.txt").write_bytes(b"not an archive at all\n" * 50)
    with pytest.raises(DataError, match=r"plain\.txt: cannot read the archive"):
        read_imdb(str(tmp_path / "plain.txt"))
    with pytest.raises(DataError, match="no such file or folder"):
        read_imdb(str(tmp_path / "absent.tar.gz"))
    with tarfile.open(tmp_path / "latin.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("neg", "pos"):
                info = tarfile.TarInfo(f"aclImdb/{split}/{cls}/1_5.txt")
                body = "caf\xe9".encode("latin-1")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    with pytest.raises(DataError, match=r"latin\.tar\.gz:aclImdb/\w+/\w+/1_5\.txt: not UTF-8"):
        read_imdb(str(tmp_path / "latin.tar.gz"))


@pytest.mark.skipif(not os.path.exists(REAL), reason="real IMDB archive not present")
def test_real_archive_limited():
    splits = load_dataset("imdb", REAL, n_train=400, n_test=100, max_len=200, vocab_size=5000)
    tr, te = splits["train"], splits["test"]
    assert len(tr) == 400 and len(te) == 100
    assert np.bincount(tr.targets).tolist() == [200, 200] and np.bincount(te.targets).tolist() == [50, 50]
    assert len(tr.vocab) == 5000 and tr.inputs.shape == (400, 200)
    assert tr.lengths.min() >= 1 and (tr.lengths < 200).any()
    # the most frequent English tokens of movie reviews lead the vocabulary
    assert {"the", ".", ",", "and", "a"} <= set(tr.vocab.itos[2:12])
