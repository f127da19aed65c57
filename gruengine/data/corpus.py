"""The tokenizer, and a corpus of texts -> vocabulary tokens and padded token ids, tokenizing
each text once and keeping no token lists: a list of str per review takes about 60 bytes a
token (25,000 IMDB reviews: ~0.8 GB), an int32 id 4 bytes. ``gruengine.data.text`` builds
its Vocab and encoders on these (this module imports nothing from it).

    index = {}
    rows = word_ids(train_texts, index)           # list of (n_i,) int32 provisional ids
    words, pairs, rows = select_tokens(rows, index, 25000, min_count=2, bigrams=20000, labels=y)
    vocab = Vocab(words + pairs, ngrams=2)                # gruengine.data.text.Vocab
    ids, lengths = pack_rows(encode_rows(rows, vocab, max_len=400))   # (N, T), (N,) int64

Word pairs (``bigrams``): pairs of adjacent known words of the training texts become extra
tokens ``'w1 w2'`` (given the labels, those most lopsided across the classes; else the most
frequent). An encoded text carries, after each word, the id of the pair it starts when that
pair is in the vocabulary (``the film was great`` -> ``the, the film, film, film was, was,
was great, great`` where all are known): the model sees each phrase at its place in the
text. ``max_len`` counts words.
"""
import re

import numpy as np

from ..limits import TOKEN_BYTES, check_data_size

PAD, UNK = "<pad>", "<unk>"

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# a word (letters/digits, inner apostrophes kept: "don't") or one punctuation character
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*|[^\w\s]|_")


def tokenize(text):
    """Lowercase ``text``, drop HTML line breaks, split into words and punctuation marks.

    >>> tokenize("Great film!<br /><br />I didn't like the END...")
    ['great', 'film', '!', 'i', "didn't", 'like', 'the', 'end', '.', '.', '.']
    """
    if not isinstance(text, str):
        raise ValueError(f"text: expected str, got {type(text).__name__}")
    return _TOKEN.findall(_BREAK.sub(" ", text).lower())


def check_token_ids(where, n_texts, longest, max_len, max_data_bytes):
    """The padded id matrix of ``n_texts`` texts is allocated at once: check its size first."""
    T = longest if max_len is None else min(max_len, longest)
    check_data_size(where, n_texts * max(T, 1) * TOKEN_BYTES, max_data_bytes,
                    f"the padded token ids ({n_texts} texts x {T} tokens, int64)",
                    "cut texts with --max-len, or raise --max-data-bytes")


_EMPTY = np.array([1], dtype=np.int32)      # a text with no tokens: one '<unk>'


def word_ids(texts, index):
    """Texts (str, or token lists) -> one (n_i,) int32 array per text of provisional ids:
    ``index`` (token -> id, first-seen order) grows with every new token."""
    add = index.setdefault
    rows = []
    for t in texts:
        toks = tokenize(t) if isinstance(t, str) else t
        # len(index) is read before the insertion: a new token gets the next id
        rows.append(np.fromiter((add(w, len(index)) for w in toks), dtype=np.int32,
                                count=len(toks)))
    return rows


def vocab_ids(texts, vocab):
    """Texts (str, or token lists) -> one (n_i,) int32 array of word ids per text (unknown -> 1)."""
    get = vocab.stoi.get
    return [np.fromiter((get(w, 1) for w in toks), dtype=np.int32, count=len(toks))
            for toks in (tokenize(t) if isinstance(t, str) else t for t in texts)]


def select_tokens(rows, index, max_size, min_count=1, bigrams=0, labels=None):
    """(words, pairs, rows): the tokens of ``Vocab.build`` (same words, same order, '<pad>' and
    '<unk>' first) from provisional ids, the word pairs 'w1 w2', and the rows mapped to the
    word ids (unknown words -> 1). ``bigrams`` > 0: up to that many pairs of
    adjacent known words seen at least ``min_count`` times: without ``labels``, the most
    frequent; with ``labels`` (one class id per row), those whose counts per class depart
    most from the classes' shares of all pairs (``pair_scores``). Ties are broken by the
    ranks of the first then the second word."""
    tokens = list(index)                    # provisional id -> token
    counts = np.bincount(np.concatenate(rows) if rows else np.zeros(0, np.int32),
                         minlength=len(tokens))
    for special in (PAD, UNK):
        if special in index:
            counts[index[special]] = 0
    keep = np.flatnonzero(counts >= max(min_count, 1))
    kept = sorted(keep.tolist(), key=lambda i: (-counts[i], tokens[i]))[:max_size - 2]
    remap = np.ones(len(tokens), dtype=np.int32)
    remap[kept] = np.arange(2, len(kept) + 2, dtype=np.int32)
    rows = [remap[r] for r in rows]
    words = [PAD, UNK] + [tokens[i] for i in kept]
    if not bigrams:
        return words, [], rows
    n = len(words)
    per_row = [_pair_keys(r, n)[1] for r in rows]
    keys, inverse, cnt = np.unique(np.concatenate(per_row or [np.zeros(0, np.int64)]),
                                   return_inverse=True, return_counts=True)
    if labels is None:
        score = cnt.astype(np.float64)
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(rows),) or labels.dtype.kind not in "iu" or \
                (labels.size and labels.min() < 0):
            raise ValueError(f"labels: expected {len(rows)} class ids >= 0, one per text, got "
                             f"{labels.dtype} of shape {labels.shape}")
        cls = np.repeat(labels.astype(np.int64), [len(k) for k in per_row])
        score = pair_scores(inverse.ravel(), cls, len(keys))
    del per_row, inverse
    often = cnt >= min_count
    keys, score = keys[often], score[often]
    top = keys[np.lexsort((keys, -score))[:bigrams]]
    pairs = [f"{words[k // n]} {words[k % n]}" for k in top.tolist()]
    return words, pairs, rows


def pair_scores(pair, cls, n_pairs):
    """G statistic of each pair's counts per class against the classes' shares of all pair
    occurrences: sum_k 2 c_k ln(c_k / e_k), e_k = (the pair's count) * (class k's share).
    ``pair``, ``cls``: the pair index and the class of every occurrence. High for pairs both
    frequent and lopsided ('waste of', 'highly recommend'), near 0 for 'of the'."""
    C = int(cls.max()) + 1 if cls.size else 1
    counts = np.bincount(pair * C + cls, minlength=n_pairs * C).reshape(n_pairs, C)
    counts = counts.astype(np.float64)
    share = counts.sum(axis=0) / max(counts.sum(), 1.0)                 # (C,)
    expected = counts.sum(axis=1, keepdims=True) * share                # (n_pairs, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log(counts / expected), 0.0)
    return 2.0 * terms.sum(axis=1)


def _pair_keys(a, n):
    """Positions j and keys a[j] * n + a[j+1] of the adjacent pairs of known words (ids > 1)."""
    a = a.astype(np.int64)
    ok = (a[:-1] > 1) & (a[1:] > 1)
    j = np.flatnonzero(ok)
    return j, a[j] * n + a[j + 1]


def pair_table(vocab):
    """(sorted keys w1 * W + w2, their pair ids) of a Vocab's 'w1 w2' tokens, W = the number
    of words. A pair token whose words are not both in the vocabulary is refused."""
    stoi = vocab.stoi
    first = next((i for i, t in enumerate(vocab.itos) if " " in t), len(vocab))
    keys = []
    for i in range(first, len(vocab)):
        parts = vocab.itos[i].split(" ")
        if len(parts) != 2 or stoi.get(parts[0], first) >= first or stoi.get(parts[1], first) >= first:
            raise ValueError(f"vocab: expected word pairs 'w1 w2' of known words after the words, "
                             f"got {vocab.itos[i]!r} at id {i}")
        keys.append(stoi[parts[0]] * first + stoi[parts[1]])
    keys = np.array(keys, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    return first, keys[order], (np.arange(first, len(vocab), dtype=np.int32))[order]


def with_pairs(a, vocab):
    """Word ids (n,) -> the same with the id of each known adjacent pair after its first word."""
    n_words, keys, ids = vocab._pairs
    if len(a) < 2 or keys.size == 0:
        return a
    j, k = _pair_keys(a, n_words)
    pos = np.minimum(np.searchsorted(keys, k), keys.size - 1)
    hit = keys[pos] == k
    j, pid = j[hit], ids[pos[hit]]
    # word i moves right by the number of pairs that start before it
    shift = np.zeros(len(a) + 1, dtype=np.int64)
    shift[j + 1] = 1
    shift = np.cumsum(shift)[:len(a)]
    out = np.empty(len(a) + len(j), dtype=a.dtype)
    out[np.arange(len(a)) + shift] = a
    out[j + shift[j] + 1] = pid
    return out


def encode_rows(rows, vocab, max_len=None, truncate="head"):
    """Word-id rows -> the encoded rows: cut to ``max_len`` words ('head' keeps the first,
    'tail' the last), word pairs added (``ngrams=2``), an empty text as one '<unk>'."""
    out = []
    for a in rows:
        if max_len is not None and len(a) > max_len:
            a = a[:max_len] if truncate == "head" else a[len(a) - max_len:]
        if vocab.ngrams == 2:
            a = with_pairs(a, vocab)
        out.append(a if len(a) else _EMPTY)
    return out


def pack_rows(rows, where=None, max_data_bytes=None):
    """Rows -> ids (N, T) int64 padded with 0 (T = the longest row), lengths (N,) int64;
    with ``where``, the matrix's size is checked against ``max_data_bytes`` first."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    T = int(lengths.max()) if len(rows) else 1
    if where is not None:
        check_token_ids(where, len(rows), T, None, max_data_bytes)
    ids = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, lengths
