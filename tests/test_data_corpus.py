"""Word pairs (bigrams) and the one-pass corpus encoder, against plain-Python references."""
import sys
from collections import Counter

import numpy as np
import pytest

from gruengine.data import corpus, load_dataset, text
from gruengine.data.text import Vocab, encode_texts
from tests.fixtures.data_builders import imdb_reviews, write_imdb_tar


def _texts(rng, n, words=40, vocab=30):
    # a skewed word distribution, so counts tie and differ
    pool = [f"w{i}" for i in range(vocab)]
    p = 1.0 / np.arange(1, vocab + 1)
    return [[pool[k] for k in rng.choice(vocab, size=int(rng.integers(0, words)), p=p / p.sum())]
            for _ in range(n)]


def _reference_vocab(texts, max_size, min_count, bigrams):
    counts = Counter(w for t in texts for w in t)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    words = ["<pad>", "<unk>"] + words[:max_size - 2]
    rank = {w: i for i, w in enumerate(words)}
    pairs = Counter((a, b) for t in texts for a, b in zip(t, t[1:]) if a in rank and b in rank)
    kept = sorted((p for p, c in pairs.items() if c >= min_count),
                  key=lambda p: (-pairs[p], rank[p[0]], rank[p[1]]))[:bigrams]
    return words + [f"{a} {b}" for a, b in kept]


def _reference_encode(toks, tokens, max_len):
    stoi = {t: i for i, t in enumerate(tokens)}
    toks = toks[:max_len]
    out = []
    for i, w in enumerate(toks):
        out.append(stoi.get(w, 1))
        if i + 1 < len(toks) and f"{w} {toks[i + 1]}" in stoi:
            out.append(stoi[f"{w} {toks[i + 1]}"])
    return out or [1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vocab_and_encoding_match_plain_python(seed):
    rng = np.random.default_rng(seed)
    texts = _texts(rng, 60)
    max_size, min_count, bigrams = int(rng.integers(8, 25)), int(rng.integers(1, 4)), int(rng.integers(1, 40))
    vocab = Vocab.build(texts, max_size, min_count, bigrams=bigrams)
    assert vocab.itos == _reference_vocab(texts, max_size, min_count, bigrams) and vocab.ngrams == 2
    assert len(vocab) > max_size - 2    # some pairs made it in
    max_len = int(rng.integers(3, 30))
    ids, lengths = encode_texts(texts, vocab, max_len=max_len)
    assert ids.dtype == lengths.dtype == np.int64 and ids.shape[1] == lengths.max()
    for row, n, t in zip(ids, lengths, texts):
        assert row[:n].tolist() == _reference_encode(t, vocab.itos, max_len)
        assert (row[n:] == 0).all()
    # Vocab.encode is the same without the cut
    assert vocab.encode(texts[0]).tolist() == _reference_encode(texts[0], vocab.itos, None)


def test_words_only_vocab_equals_counter_build():
    rng = np.random.default_rng(5)
    texts = _texts(rng, 80)
    index = {}
    vocab, rows = text.build_vocab(corpus.word_ids(texts, index), index, 20, min_count=2)
    assert vocab == Vocab.build(texts, 20, 2) and vocab.ngrams == 1
    for r, t in zip(rows, texts):
        assert r.tolist() == [vocab.stoi.get(w, 1) for w in t]


def test_tail_cut_keeps_the_last_words_before_pairs():
    vocab = Vocab(["<pad>", "<unk>", "a", "b", "c", "a b", "b c"], ngrams=2)
    ids, lengths = encode_texts([["c", "a", "b", "c"], []], vocab, max_len=2, truncate="tail")
    assert vocab.decode(ids[0, :lengths[0]]) == ["b", "b c", "c"]
    assert lengths[1] == 1 and ids[1, 0] == 1


def test_ngram_vocab_round_trips_and_refuses_bad_pairs():
    vocab = Vocab(["<pad>", "<unk>", "a", "b", "a b"], ngrams=2)
    back = Vocab.from_json(vocab.to_json())
    assert back == vocab and back.ngrams == 2 and back.encode(["a", "b"]).tolist() == [2, 4, 3]
    assert Vocab.from_json(Vocab(["<pad>", "<unk>", "a"]).to_json()).ngrams == 1
    with pytest.raises(ValueError, match="vocab: expected word pairs 'w1 w2' of known words"):
        Vocab(["<pad>", "<unk>", "a", "a z"], ngrams=2)
    with pytest.raises(ValueError, match="ngrams: expected 1 or 2, got 3"):
        Vocab(["<pad>", "<unk>"], ngrams=3)


def test_bigrams_argument_is_checked(tmp_path):
    with pytest.raises(ValueError, match="bigrams: expected an integer >= 0, got -1"):
        load_dataset("imdb", str(tmp_path), bigrams=-1)
    with pytest.raises(ValueError, match="bigrams: only text datasets"):
        load_dataset("adding", bigrams=10)
    with pytest.raises(ValueError, match="bigrams: expected an integer >= 0, got -2"):
        Vocab.build([["a", "b"]], bigrams=-2)


def test_imdb_tokenizes_each_review_once_and_keeps_no_text(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    path = write_imdb_tar(str(tmp_path / "aclImdb_v1.tar.gz"), imdb_reviews(rng, n_per_class=6))
    calls = []
    real = corpus.tokenize
    monkeypatch.setattr(corpus, "tokenize", lambda t: calls.append(t) or real(t))
    splits = load_dataset("imdb", path, bigrams=50, max_len=20)
    assert len(calls) == 24 and len(set(calls)) == 24     # 12 train + 12 test reviews
    for ds in splits.values():
        assert ds.vocab.ngrams == 2 and ds.inputs.dtype == np.int64
        assert ds.lengths.max() <= 2 * 20 - 1
    # nothing but ``calls`` holds a review's text once loaded (refcounts: the list, the loop
    # variable, the argument)
    assert [sys.getrefcount(t) for t in calls] == [3] * 24


def test_onnx_tokenizer_spec_describes_word_pairs():
    # the tokenizer file says how pairs are encoded (tests/test_onnx.py serves such a model)
    from gruengine.onnx import tokenizer_spec
    vocab = Vocab(["<pad>", "<unk>", "a", "b", "a b"], ngrams=2)
    spec = tokenizer_spec(vocab, max_len=3)
    assert spec["ngrams"] == 2 and spec["tokens"] == ["<pad>", "<unk>", "a", "b", "a b"]
    assert tokenizer_spec(Vocab(["<pad>", "<unk>", "a"]))["ngrams"] == 1


def _reference_g_pairs(texts, labels, words, min_count, k):
    rank = {w: i for i, w in enumerate(words)}
    C = max(labels) + 1
    per = {}
    for t, y in zip(texts, labels):
        for a, b in zip(t, t[1:]):
            if a in rank and b in rank:
                per.setdefault((a, b), [0] * C)[y] += 1
    totals = [sum(c[j] for c in per.values()) for j in range(C)]
    share = [x / sum(totals) for x in totals]
    score = {}
    for p, c in per.items():
        n = sum(c)
        score[p] = 2.0 * sum(x * np.log(x / (n * s)) for x, s in zip(c, share) if x > 0)
    kept = sorted((p for p in per if sum(per[p]) >= min_count),
                  key=lambda p: (-round(score[p], 9), rank[p[0]], rank[p[1]]))[:k]
    return [f"{a} {b}" for a, b in kept]


@pytest.mark.parametrize("seed", [3, 4])
def test_labelled_pairs_are_the_most_lopsided(seed):
    rng = np.random.default_rng(seed)
    texts = _texts(rng, 90, vocab=12)
    labels = rng.integers(0, 3, size=len(texts))
    for t, y in zip(texts, labels):       # plant class-specific phrases
        if y == 2 and len(t) > 3:
            t[1:3] = ["w0", "w1"]
    words = _reference_vocab(texts, 20, 1, 0)
    k = int(rng.integers(3, 12))
    vocab = Vocab.build(texts, 20, 1, bigrams=k, labels=labels)
    assert vocab.itos[:len(words)] == words
    assert vocab.itos[len(words):] == _reference_g_pairs(texts, labels.tolist(), words, 1, k)
    assert "w0 w1" in vocab.stoi
    with pytest.raises(ValueError, match="labels: expected 90 class ids"):
        Vocab.build(texts, 20, 1, bigrams=k, labels=labels[:5])
