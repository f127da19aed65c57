"""Tokenizer, vocabulary, padding/truncation and labelled text files (CSV/TSV)."""
import json

import numpy as np
import pytest

from gruengine.data import load_dataset
from gruengine.data.text import Vocab, encode_texts, read_labelled_text, tokenize
from gruengine.errors import DataError
from tests.fixtures.data_builders import random_tokens, render


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_tokenize_recovers_words_from_messy_text(rng):
    for _ in range(200):
        toks = random_tokens(rng)
        assert tokenize(render(rng, toks)) == toks


def test_tokenize_apostrophes_digits_and_breaks():
    words = ["didn't", "it's", "7", "10", "o'neil"]
    text = " <BR /> ".join(w.upper() for w in words) + "!!"
    assert tokenize(text) == words + ["!", "!"]
    assert "br" not in tokenize("a<br>b<br/>c<br />d")
    assert tokenize("") == [] and tokenize(" <br /> ") == []


def test_tokenize_rejects_non_text():
    with pytest.raises(ValueError, match="text: expected str"):
        tokenize(b"bytes")


def _reference_vocab(token_lists, max_size, min_count):
    # independent of Vocab.build: numpy unique + lexsort on (-count, token)
    flat = np.array([t for toks in token_lists for t in toks])
    uniq, counts = np.unique(flat, return_counts=True)
    keep = counts >= min_count
    uniq, counts = uniq[keep], counts[keep]
    order = np.lexsort((uniq, -counts))
    return ["<pad>", "<unk>"] + [str(u) for u in uniq[order][:max_size - 2]]


@pytest.mark.parametrize("max_size,min_count", [(10, 1), (1000, 1), (1000, 3), (7, 2), (2, 1)])
def test_vocab_build_matches_reference(rng, max_size, min_count):
    words = [f"w{i}" for i in range(40)]
    # Zipf-like frequencies so counts tie and differ
    token_lists = [[words[min(int(rng.zipf(1.5)) - 1, 39)] for _ in range(rng.integers(1, 30))]
                   for _ in range(60)]
    v = Vocab.build(token_lists, max_size=max_size, min_count=min_count)
    assert v.itos == _reference_vocab(token_lists, max_size, min_count)
    assert len(v) <= max_size
    assert v.stoi["<pad>"] == 0 and v.stoi["<unk>"] == 1


def test_vocab_encode_decode_and_unknown(rng):
    train = [random_tokens(rng) for _ in range(30)]
    v = Vocab.build(train, max_size=100)
    seq = train[0] + ["never-seen-token", "zzz"]
    ids = v.encode(seq)
    assert ids.dtype == np.int64 and ids.shape == (len(seq),)
    assert (ids[-2:] == 1).all() and (ids[:-2] >= 2).all()
    assert v.decode(ids[:-2]) == train[0]
    assert v.decode(ids) == train[0] + ["<unk>", "<unk>"]
    with pytest.raises(ValueError, match="ids: expected integers"):
        v.decode([len(v)])


def test_vocab_json_roundtrip_and_validation(rng):
    v = Vocab.build([random_tokens(rng) for _ in range(20)], max_size=50)
    d = json.loads(json.dumps(v.to_json()))
    w = Vocab.from_json(d)
    assert w == v and len(w) == len(v) and w.stoi == v.stoi
    with pytest.raises(ValueError, match="vocab: expected the token list to start"):
        Vocab.from_json({"tokens": ["a", "b"]})
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(["<pad>", "<unk>", "a", "a"])
    with pytest.raises(ValueError, match="vocab: expected a dict"):
        Vocab.from_json(["<pad>", "<unk>"])
    with pytest.raises(ValueError, match="max_size"):
        Vocab.build([["a"]], max_size=1)


@pytest.mark.parametrize("truncate", ["head", "tail"])
@pytest.mark.parametrize("max_len", [None, 1, 5, 12, 1000])
def test_encode_texts_padding_and_truncation(rng, truncate, max_len):
    token_lists = [random_tokens(rng, lo=1, hi=20) for _ in range(25)] + [[]]
    texts = [render(rng, t) for t in token_lists[:-1]] + ["  <br /> "]
    v = Vocab.build(token_lists[:10], max_size=1000)  # later texts have unknown words too
    ids, lengths = encode_texts(texts, v, max_len=max_len, truncate=truncate)
    full = [list(v.encode(t)) or [1] for t in token_lists]
    cap = max(len(f) for f in full) if max_len is None else max_len
    want = [f[:cap] if truncate == "head" else f[max(0, len(f) - cap):] for f in full]
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert ids.shape == (len(texts), max(len(w) for w in want))
    assert ids.shape[1] == min(cap, max(len(f) for f in full))
    for row, n, w in zip(ids, lengths, want):
        assert n == len(w) >= 1
        assert row[:n].tolist() == w
        assert (row[n:] == 0).all()


def test_encode_texts_bad_arguments(rng):
    v = Vocab.build([["a"]])
    with pytest.raises(ValueError, match="truncate: expected 'head' or 'tail'"):
        encode_texts(["a"], v, 3, truncate="middle")
    with pytest.raises(ValueError, match="max_len"):
        encode_texts(["a"], v, 0)


# ---- files ---------------------------------------------------------------------------

def _rows(rng, n, labels):
    return [(labels[int(rng.integers(0, len(labels)))], random_tokens(rng)) for _ in range(n)]


def _write(path, rows, rng, sep):
    with open(path, "w", encoding="utf-8") as f:
        for lab, toks in rows:
            text = " ".join(toks)
            if sep == ",":
                text = '"' + text.replace('"', '""') + '"' if rng.random() < 0.5 else text
            f.write(f"{lab}{sep}{text}\n")


@pytest.mark.parametrize("ext,sep", [(".tsv", "\t"), (".csv", ",")])
def test_text_files_roundtrip(tmp_path, rng, ext, sep):
    labels = ["spam", "ham", "eggs"]
    train, test = _rows(rng, 40, labels), _rows(rng, 15, labels)
    _write(tmp_path / f"train{ext}", train, rng, sep)
    _write(tmp_path / f"test{ext}", test, rng, sep)
    splits = load_dataset("text", str(tmp_path), max_len=8, vocab_size=15, min_count=2)
    tr, te = splits["train"], splits["test"]
    assert tr.classes == sorted({lab for lab, _ in train}) and tr.num_classes == len(tr.classes)
    assert tr.task == "classify" and te.vocab is tr.vocab and len(tr.vocab) <= 15
    for ds, rows in ((tr, train), (te, test)):
        assert len(ds) == len(rows)
        assert [ds.classes[i] for i in ds.targets] == [lab for lab, _ in rows]
        ids, lengths = encode_texts([toks for _, toks in rows], tr.vocab, max_len=8)
        np.testing.assert_array_equal(ds.lengths, lengths)
        np.testing.assert_array_equal(ds.inputs, ids)
    same = load_dataset("text", f"{tmp_path / ('train' + ext)},{tmp_path / ('test' + ext)}",
                        max_len=8, vocab=tr.vocab.to_json())
    np.testing.assert_array_equal(same["test"].inputs, te.inputs)


def test_text_header_blank_lines_and_commas_in_text(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text('label,text\npos,"fine, really, fine"\n\nneg,bad, bad movie\n', encoding="utf-8")
    labels, texts, where = read_labelled_text(str(p))
    assert labels == ["pos", "neg"]
    assert texts == ["fine, really, fine", "bad, bad movie"]
    assert where == [f"{p}:2", f"{p}:4"]


@pytest.mark.parametrize("content,match", [
    ("pos\tgood\nno separator here\n", r"train\.tsv:2: malformed line"),
    ("pos\tgood\n\tno label\n", r"train\.tsv:2: malformed line: empty label"),
    ("\n\n", r"train\.tsv: empty dataset"),
])
def test_text_malformed(tmp_path, content, match):
    p = tmp_path / "train.tsv"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as e:
        read_labelled_text(str(p))
    assert "\n" not in str(e.value)


def test_text_errors_unknown_test_label_missing_and_binary(tmp_path):
    (tmp_path / "train.tsv").write_text("a\tone two\nb\tthree\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("a\tone\nb\ttwo\nc\tfour\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.tsv:3: label 'c' is not one of the known classes"):
        load_dataset("text", str(tmp_path))
    with pytest.raises(DataError, match="missing.tsv: no such file"):
        load_dataset("text", f"{tmp_path / 'train.tsv'},{tmp_path / 'missing.tsv'}")
    (tmp_path / "bin.tsv").write_bytes(b"a\t\xff\xfe\x00bad\n")
    with pytest.raises(DataError, match="bin.tsv: not UTF-8"):
        read_labelled_text(str(tmp_path / "bin.tsv"))
    with pytest.raises(DataError, match="needs a train and a test file"):
        load_dataset("text", str(tmp_path / "train.tsv"))


# ---- column order, header rows, one file split into train and test -------------------------

@pytest.fixture
def fresh():
    """A fresh generator per test (the module's ``rng`` is fixed); the seed is printed."""
    import secrets
    seed = secrets.randbits(32)
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


def _layout_file(path, rng, n, classes, label_last, sep, header):
    """Write n rows of random texts and labels; returns (labels, texts) as written."""
    labels = [classes[int(rng.integers(len(classes)))] for _ in range(n)]
    texts = [" ".join(random_tokens(rng, lo=3, hi=12, words=WORDS_NO_PUNCT)) for _ in range(n)]
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write(sep.join(header[::-1] if label_last else header) + "\n")
        for lab, text in zip(labels, texts):
            if sep == "," and rng.random() < 0.5:
                text = '"' + text + '"'
            f.write(sep.join([text, lab] if label_last else [lab, text]) + "\n")
    return labels, [t.strip('"') for t in texts]


WORDS_NO_PUNCT = ("film", "plot", "actor", "scene", "great", "awful", "music", "story", "cast")


@pytest.mark.parametrize("label_last", [False, True], ids=["label-first", "label-last"])
@pytest.mark.parametrize("sep,ext", [("\t", ".tsv"), (",", ".csv")], ids=["tsv", "csv"])
@pytest.mark.parametrize("header", [None, ("sentiment", "review"), ("stars", "comment_body")],
                         ids=["no-header", "named-header", "unnamed-header"])
def test_label_column_and_header_are_detected(tmp_path, fresh, label_last, sep, ext, header):
    from gruengine.data.text import text_layout
    classes = [f"c{k}" for k in range(int(fresh.integers(2, 5)))]
    p = tmp_path / f"data{ext}"
    labels, texts = _layout_file(p, fresh, int(fresh.integers(12, 60)), classes, label_last,
                                 sep, header)
    lay = text_layout(str(p))
    assert lay["label_column"] == (2 if label_last else 1)
    assert lay["header"] == (None if header is None else
                             list(header[::-1] if label_last else header))
    assert lay["labels"] == labels and lay["texts"] == texts
    first = 2 if header else 1
    assert lay["where"] == [f"{p}:{first + i}" for i in range(len(labels))]


def test_unreadable_layouts_are_refused_naming_the_column(tmp_path, fresh):
    p = tmp_path / "two_texts.tsv"
    rows = [(" ".join(random_tokens(fresh, 2, 6, WORDS_NO_PUNCT)),
             " ".join(random_tokens(fresh, 2, 6, WORDS_NO_PUNCT))) for _ in range(30)]
    p.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"two_texts\.tsv: cannot tell which column holds the "
                                        r"label: column [12] \(the (first|last) field\)") as e:
        read_labelled_text(str(p))
    assert "\n" not in str(e.value)
    # a header that names the columns the wrong way round: the texts would become classes
    p = tmp_path / "swapped.tsv"
    p.write_text("label\ttext\n" + "".join(f"{a} {k}\tpos\n" for k, (a, _) in enumerate(rows)),
                 encoding="utf-8")
    with pytest.raises(DataError, match=r"swapped\.tsv: column 1 \(the first field\) was taken "
                                        r"as the label but it has 30 distinct values in 30 rows"):
        read_labelled_text(str(p))


@pytest.mark.parametrize("fraction", [0.2, 0.35])
def test_one_text_file_is_split_by_a_seeded_stratified_fraction(tmp_path, fresh, fraction):
    classes = ["neg", "pos", "meh"]
    p = tmp_path / "all.tsv"
    labels, texts = _layout_file(p, fresh, int(fresh.integers(40, 90)), classes, True, "\t",
                                 ("label", "text"))
    seed = int(fresh.integers(0, 1000))
    a = load_dataset("text", str(p), test_fraction=fraction, seed=seed)
    b = load_dataset("text", str(p), test_fraction=fraction, seed=seed)
    tr, te = a["train"], a["test"]
    np.testing.assert_array_equal(te.inputs, b["test"].inputs)       # the seed fixes the split
    assert len(tr) + len(te) == len(labels)
    for c in set(labels):                                            # stratified, per class
        n_c = labels.count(c)
        want = min(int(round(n_c * fraction)), n_c - 1)
        assert [tr.classes[i] for i in te.targets].count(c) == want
    # every row lands in exactly one split: decode both back to texts and compare as multisets
    decode = lambda ds: sorted(" ".join(t for t in ds.vocab.decode(ids[:n]))   # noqa: E731
                               for ids, n in zip(ds.inputs, ds.lengths))
    assert sorted(decode(tr) + decode(te)) == sorted(" ".join(tokenize(t)) for t in texts)
    with pytest.raises(DataError, match="needs a train and a test file.*--test-fraction"):
        load_dataset("text", str(p))
    with pytest.raises(DataError, match="test_fraction: .* has its own test file"):
        load_dataset("text", f"{p},{p}", test_fraction=0.2)
    with pytest.raises(ValueError, match=r"test_fraction: expected a number in \(0, 1\)"):
        load_dataset("text", str(p), test_fraction=1.5)
