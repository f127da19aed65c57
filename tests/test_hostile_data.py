"""Hostile data files: bombs refused before they expand (peak memory of the child measured),
links and stray tar members never read, labels mapped without allocating to the largest id,
malformed text refused in one line naming file and line."""
import io
import os
import tarfile

import numpy as np
import pytest

from gruengine.data import load_dataset
from gruengine.data.imdb import read_imdb
from gruengine.data.numeric import MAX_CLASS_ID
from gruengine.data.text import read_labelled_text
from gruengine.errors import DataError
from gruengine.limits import MAX_TEXT_BYTES
from tests.fixtures.data_builders import imdb_reviews, write_imdb_folder, write_imdb_tar
from tests.fixtures.hostile import MiB, one_error_line, run_cli, write_targz_bomb

GiB = 1 << 30


def _small_reviews(rng, split_words=None):
    """(name, bytes) of two normal reviews per split and class."""
    out = []
    for split in ("train", "test"):
        for cls in ("neg", "pos"):
            for k in range(2):
                words = rng.choice(["good", "bad", "film", "plot", "cast"], size=6)
                out.append((f"aclImdb/{split}/{cls}/{k}_{7 if cls == 'pos' else 2}.txt",
                            " ".join(words).encode()))
    return out


# ---------------------------------------------------------------- 1. archive bombs
@pytest.fixture(scope="module")
def nul_bomb(tmp_path_factory):
    # ~2 MB on disk, one review of 2 GiB of NUL bytes (each NUL a token)
    path = tmp_path_factory.mktemp("bomb") / "bomb.tar.gz"
    return write_targz_bomb(path, [("aclImdb/train/pos/0_9.txt", 2 * GiB)], fill=0)


def test_review_bomb_is_refused_at_its_header(nul_bomb, tmp_path):
    assert os.path.getsize(nul_bomb) < 3 * MiB
    res = run_cli("data", "info", nul_bomb)
    one_error_line(res, 2, f"{nul_bomb}:aclImdb/train/pos/0_9.txt", "a review of 2 GiB",
                   "max_text_bytes", "--max-text-bytes")
    assert res.maxrss_mb < 1024, res.maxrss_mb
    run = tmp_path / "run"
    res = run_cli("train", "--task", "imdb", "--data", nul_bomb, "--out", run, "--quiet")
    one_error_line(res, 2, "a review of 2 GiB", "--max-text-bytes")
    assert res.maxrss_mb < 1024, res.maxrss_mb
    assert not run.exists()                     # a failed start leaves no run folder behind


def test_many_reviews_stop_at_the_data_limit(tmp_path, rng):
    # each review under the per-text limit, their sum over the data limit: refused as soon as
    # the running total passes it, long before the 40 MiB the archive expands to
    members = _small_reviews(rng) + [(f"aclImdb/train/pos/{100 + k}_8.txt", 1 * MiB)
                                     for k in range(40)]
    path = write_targz_bomb(tmp_path / "spaces.tar.gz", members, fill=ord(" "))
    res = run_cli("data", "info", path, "--max-data-bytes", "8M")
    one_error_line(res, 2, path, "more than 8 MiB of reviews to read", "--max-data-bytes")
    assert res.maxrss_mb < 1024, res.maxrss_mb
    # the control: with room for it the same archive loads, the space reviews empty of tokens
    splits = load_dataset("imdb", path, max_data_bytes=64 * MiB)
    assert len(splits["train"]) == 4 + 40 and len(splits["test"]) == 4
    with pytest.raises(DataError, match=r"100_8\.txt: a review of 1 MiB is over the limit of "
                                        r"512 KiB per text \(max_text_bytes"):
        read_imdb(path, max_text_bytes=512 << 10)


def test_token_matrix_is_checked_before_it_is_allocated(tmp_path, rng):
    # one long review pads every row to its length: 8 rows x 200k tokens x 8 bytes = 12 MiB
    members = _small_reviews(rng)
    members.append(("aclImdb/train/neg/9_1.txt", b"a " * 200_000))
    path = write_targz_bomb(tmp_path / "long.tar.gz", members)
    with pytest.raises(DataError, match=r"the padded token ids \(5 texts x 200000 tokens, int64\) "
                                        r"would take 7\.63 MiB.*--max-len"):
        load_dataset("imdb", path, max_data_bytes=4 * MiB)
    assert load_dataset("imdb", path, max_data_bytes=4 * MiB, max_len=100)["train"].steps == 100


def test_forged_tar_header_record_is_refused(tmp_path, rng):
    # a GNU long-name record claiming 1 GiB: tarfile itself would read it whole
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("aclImdb/train/pos/" + "x" * 200 + "_1.txt")
        tar.addfile(info, io.BytesIO(b""))
    raw = bytearray(buf.getvalue())
    assert raw[156:157] == b"L"                  # the long-name record comes first
    raw[124:136] = b"%011o\0" % (1 << 30)        # its size field
    raw[148:156] = b"        "
    raw[148:156] = b"%06o\0 " % sum(raw[:512])   # a valid header checksum
    (tmp_path / "forged.tar").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="cannot read the archive.*header record of 1073741824"):
        read_imdb(str(tmp_path / "forged.tar"))


# ---------------------------------------------------------------- 3. links and stray members
def test_folder_links_must_stay_inside_the_dataset(tmp_path, rng):
    reviews = imdb_reviews(rng, n_per_class=3)
    root = write_imdb_folder(str(tmp_path / "data"), reviews)
    secret = tmp_path / "private.txt"
    secret.write_text("zanzibar password hunter2")
    link = os.path.join(root, "train", "pos", "3_9.txt")
    os.symlink(secret, link)
    with pytest.raises(DataError, match=r"3_9\.txt: a symbolic link to .*private\.txt, outside "
                                        r"the dataset folder") as e:
        read_imdb(root)
    assert "\n" not in str(e.value)
    # a link that stays inside the folder is an ordinary review
    os.unlink(link)
    inside = os.path.join(root, "train", "neg", sorted(os.listdir(os.path.join(root, "train", "neg")))[0])
    os.symlink(inside, link)
    raw = read_imdb(root)
    assert len(raw["train"][0]) == 7 and open(inside).read() in raw["train"][0]


def test_tar_members_outside_the_top_folder_are_skipped(tmp_path, rng):
    reviews = imdb_reviews(rng, n_per_class=4)
    path = write_imdb_tar(str(tmp_path / "a.tar"), reviews, mode="w")
    with tarfile.open(path, "a") as tar:
        for name in ("../../../etc/train/pos/11_1.txt", "/abs/train/pos/12_1.txt",
                     "other/train/pos/13_1.txt", "aclImdb/../train/pos/14_1.txt"):
            info = tarfile.TarInfo(name)
            body = b"zanzibar " * 5
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    splits = load_dataset("imdb", path)
    assert len(splits["train"]) == 8 and len(splits["test"]) == 8
    assert "zanzibar" not in splits["train"].vocab.stoi


# ---------------------------------------------------------------- 4, 9. npz labels
def _npz(path, y, X=None, **extra):
    X = np.ones((len(y), 3, 1)) if X is None else X
    np.savez(path, X=X, y=y, **extra)
    return str(path)


def test_huge_label_ids_are_mapped_not_allocated(tmp_path, rng):
    big = 19_000_000_000_000
    y = rng.permutation(np.array([0, big] * 5, dtype=np.int64))
    pair = f"{_npz(tmp_path / 'tr.npz', y)},{_npz(tmp_path / 'te.npz', y[:4])}"
    res = run_cli("data", "info", pair, "--task", "npz")
    assert res.returncode == 0, res.stderr
    assert f"classes (2): 0: 5, {big}: 5" in res.stdout
    assert res.maxrss_mb < 1024, res.maxrss_mb
    ds = load_dataset("npz", pair)["train"]
    assert ds.classes == ["0", str(big)] and ds.num_classes == 2
    np.testing.assert_array_equal(ds.targets, (y == big).astype(np.int64))   # the reference


@pytest.mark.parametrize("y, classes", [
    (np.array([-5, -3, -4, -3, -5]), ["-5", "-4", "-3"]),
    (np.array([2 ** 63 + 5, 7, 2 ** 63 + 5, 7], dtype=np.uint64), ["7", str(2 ** 63 + 5)]),
    (np.array([-1, 1, 1, -1, 1]), ["-1", "1"]),
    (np.array([0, 2, 2, 0, MAX_CLASS_ID]), ["0", "2", str(MAX_CLASS_ID)]),
])
def test_labels_that_are_not_indices(tmp_path, y, classes):
    ds = load_dataset("npz", f"{_npz(tmp_path / 'a.npz', y)},{_npz(tmp_path / 'b.npz', y)}")
    assert ds["train"].classes == classes
    expect = [classes.index(str(int(v))) for v in y]       # label -> position, by hand
    np.testing.assert_array_equal(ds["test"].targets, expect)
    bad = np.array([y[0], 12345], dtype=y.dtype)
    with pytest.raises(DataError, match=r"c\.npz: y: class id 12345 is outside the known "
                                        r"classes \[.*\] of the training file"):
        load_dataset("npz", f"{tmp_path / 'a.npz'},{_npz(tmp_path / 'c.npz', bad)}")


def test_class_ids_stay_indices_up_to_the_limit(tmp_path, rng):
    y = rng.integers(0, 5, size=40)
    y[0] = 9                                    # classes 5..8 absent from training: still ids
    ds = load_dataset("npz", f"{_npz(tmp_path / 'a.npz', y)},{_npz(tmp_path / 'b.npz', y[:3])}")
    assert ds["train"].num_classes == 10 and ds["train"].classes == [str(i) for i in range(10)]
    np.testing.assert_array_equal(ds["train"].targets, y)


def test_tag_padding_may_hold_any_id(tmp_path, rng):
    N, T = 6, 5
    lengths = rng.integers(1, T + 1, size=N)
    y = rng.integers(0, 3, size=(N, T))
    y[np.arange(T)[None, :] >= lengths[:, None]] = -100          # an "ignore" marker
    p = _npz(tmp_path / "a.npz", y, X=rng.standard_normal((N, T, 2)), lengths=lengths)
    ds = load_dataset("npz", f"{p},{p}")["train"]
    valid = np.arange(T)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(ds.targets[valid], y[valid])
    assert (ds.targets[~valid] == 0).all()


def test_npz_member_claiming_a_huge_array(tmp_path):
    from tests.fixtures.hostile import npy_bytes, write_zip
    good = npy_bytes(np.zeros(2, np.int64))
    path = write_zip(tmp_path / "train.npz", [("X.npy", npy_bytes(np.ones((2, 3, 1)), (10 ** 12, 3, 1))),
                                              ("y.npy", good)])
    with pytest.raises(DataError, match=r"train\.npz: array 'X': its header declares shape "
                                        r"\(1000000000000, 3, 1\) float64 \(21\.8 TiB\)"):
        load_dataset("npz", f"{path},{path}")
    # consistent but too large for the data limit: refused before any read
    np.savez(tmp_path / "big.npz", X=np.zeros((64, 64, 64)), y=np.zeros(64, np.int64))
    with pytest.raises(DataError, match=r"big\.npz: the arrays .* would take 3 MiB, over the "
                                        r"limit of 1 MiB per dataset"):
        load_dataset("npz", f"{tmp_path / 'big.npz'},{tmp_path / 'big.npz'}", max_data_bytes=MiB)
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng().bytes(4000))
    with pytest.raises(DataError, match="not a readable .npz") as e:
        load_dataset("npz", f"{tmp_path / 'noise.npz'},{tmp_path / 'noise.npz'}")
    assert "pickle" not in str(e.value)
    # a real zip whose member is random bytes: not an array, and said so (not "pickled")
    write_zip(tmp_path / "junk.npz", [("X.npy", bytes(range(256)) * 4), ("y.npy", good)])
    with pytest.raises(DataError, match=r"array 'X' is not a NumPy array \(no \.npy header"):
        load_dataset("npz", f"{tmp_path / 'junk.npz'},{tmp_path / 'junk.npz'}")


# ---------------------------------------------------------------- 9. text and series files
def test_unterminated_quote_is_refused(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text('label,text\npos,fine film\nneg,"it starts\nand never\nends\npos,ok\n')
    with pytest.raises(DataError, match=r"train\.csv:3: unterminated quote: the quoted field "
                                        r"that opens on line 3 runs to the end of the file"):
        read_labelled_text(p)
    (tmp_path / "test.csv").write_text("pos,fine\n")
    res = run_cli("data", "info", f"{p},{tmp_path / 'test.csv'}", "--task", "text")
    one_error_line(res, 2, "train.csv:3: unterminated quote")


def test_byte_order_mark_is_not_part_of_the_label(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_bytes("\ufeffpos\tgreat film\nneg\tdull\n".encode("utf-8"))
    labels, texts, _ = read_labelled_text(p)
    assert labels == ["pos", "neg"] and texts == ["great film", "dull"]
    q = tmp_path / "A_TRAIN.tsv"
    q.write_bytes("\ufeff1\t0.5\t0.25\n2\t1.0\t2.0\n".encode("utf-8"))
    from gruengine.data.ucr import read_ucr_table
    assert read_ucr_table(str(q))[1] == ["1", "2"]


def test_text_line_over_the_limit(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("pos\tfine\nneg\t" + "word " * 400 + "\n")
    with pytest.raises(DataError, match=r"a\.tsv:2: a line of 1\.95 KiB is over the limit of "
                                        r"1 KiB per text \(max_text_bytes"):
        read_labelled_text(p, max_text_bytes=1024)
    q = tmp_path / "a.csv"
    q.write_text('pos,fine\nneg,"' + "word, " * 40000 + '"\n')      # one field of 240 KB
    assert len(read_labelled_text(q)[1][1]) == 240000               # over csv's 128 KiB default
    with pytest.raises(DataError, match=r"a\.csv:2: .*max_text_bytes"):
        read_labelled_text(q, max_text_bytes=100_000)
    assert read_labelled_text(p)[0] == ["pos", "neg"] and MAX_TEXT_BYTES >= 1 << 20


def test_series_value_beyond_float32(tmp_path):
    tr, te = tmp_path / "S_TRAIN.ts", tmp_path / "S_TEST.ts"
    head = "@problemName S\n@univariate true\n@classLabel true a b\n@data\n"
    tr.write_text(head + "1.0,2.0,3.0:a\n0.5,1e39,0.1:b\n")
    te.write_text(head + "1.0,2.0:a\n")
    res = run_cli("data", "info", str(tr))
    one_error_line(res, 2, "S_TRAIN.ts:6: value 1e+39 is outside the float32 range")
    assert len(res.stderr.strip().splitlines()) == 1       # no RuntimeWarning with a source line
    X = np.ones((2, 3, 1))
    X[1, 2, 0] = -3e40
    p = _npz(tmp_path / "f.npz", np.array([0, 1]), X=X)
    with pytest.raises(DataError, match=r"f\.npz: X: value -3e\+40 at index \(1, 2, 0\) is "
                                        r"outside the float32 range"):
        load_dataset("npz", f"{p},{p}")
