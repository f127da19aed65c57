"""Text to token ids: tokenizer, vocabulary, padding, and labelled text files (CSV/TSV).

    toks = [tokenize(t) for t in train_texts]
    vocab = Vocab.build(toks, max_size=20000, min_count=2)      # training split only
    ids, lengths = encode_texts(test_texts, vocab, max_len=400)   # (N, T) int64, (N,) int64

Ids 0 and 1 are always '<pad>' and '<unk>'. ``truncate='head'`` keeps the first ``max_len``
tokens of a longer text (drops its end), ``'tail'`` keeps the last ``max_len`` (drops its start).
"""
import csv
import os
import re
from collections import Counter

import numpy as np

from .._checks import check_positive_int
from ..errors import DataError
from ..limits import MAX_DATA_BYTES, MAX_TEXT_BYTES, check_file_size, check_line
from .corpus import (_BREAK, _TOKEN, PAD, UNK, check_token_ids, encode_rows, pack_rows,
                     pair_table, select_tokens, tokenize, vocab_ids, with_pairs, word_ids)
from .dataset import (Dataset, check_test_fraction, encode_labels, holdout_split, label_order,
                      require_file, resolve_pair)

TRUNCATE = ("head", "tail")


class Vocab:
    """Token <-> id map; id 0 is '<pad>', id 1 is '<unk>' (every unknown token).

    ``ngrams=2``: the tokens also hold word pairs, written ``'w1 w2'`` (both words in the
    vocabulary); encoding puts the id of each known pair between its two words
    (``gruengine.data.corpus``).
    """

    def __init__(self, tokens, ngrams=1):
        tokens = list(tokens)
        if ngrams not in (1, 2) or isinstance(ngrams, bool):
            raise ValueError(f"ngrams: expected 1 or 2, got {ngrams!r}")
        if len(tokens) < 2 or tokens[0] != PAD or tokens[1] != UNK:
            raise ValueError(f"vocab: expected the token list to start with {PAD!r}, {UNK!r}, "
                             f"got {tokens[:2]!r}")
        if not all(isinstance(t, str) for t in tokens):
            raise ValueError("vocab: expected every token to be a str")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}
        if len(self.stoi) != len(tokens):
            raise ValueError(f"vocab: expected unique tokens, got {len(tokens) - len(self.stoi)} duplicate(s)")
        self.ngrams = ngrams
        self._pairs = None          # ngrams=2: (number of words, sorted pair keys, pair ids)
        if ngrams == 2:
            self._pairs = pair_table(self)

    @classmethod
    def build(cls, texts_tokens, max_size=20000, min_count=1, bigrams=0, labels=None):
        """Most frequent tokens of the (training) texts, ties broken alphabetically.

        ``max_size`` counts '<pad>' and '<unk>' too (so at most max_size - 2 real tokens);
        tokens seen fewer than ``min_count`` times are left out (they encode as '<unk>').
        ``bigrams`` > 0 adds up to that many pairs of adjacent known words (seen at least
        ``min_count`` times) as extra tokens (``ngrams=2``): the most frequent, or with
        ``labels`` (a class id per text) the most lopsided across the classes.
        """
        max_size = check_positive_int("max_size", max_size, minimum=2)
        min_count = check_positive_int("min_count", min_count)
        bigrams = check_positive_int("bigrams", bigrams, minimum=0)
        if bigrams:
            index = {}
            return build_vocab(word_ids(texts_tokens, index), index, max_size, min_count,
                               bigrams, labels)[0]
        counts = Counter()
        for toks in texts_tokens:
            counts.update(toks)
        counts.pop(PAD, None)
        counts.pop(UNK, None)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK] + kept[:max_size - 2])

    @classmethod
    def from_tokens(cls, tokens):
        """A vocabulary of exactly these tokens, after '<pad>' and '<unk>'."""
        return cls([PAD, UNK] + list(tokens))

    def __len__(self):
        return len(self.itos)

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.itos == other.itos and self.ngrams == other.ngrams

    def __repr__(self):
        return f"Vocab(size={len(self)}{', ngrams=2' if self.ngrams == 2 else ''})"

    def encode(self, tokens):
        """List of words -> (n,) int64 ids; unknown words map to 1. With ``ngrams=2`` the id
        of each known pair of adjacent words follows its first word."""
        get = self.stoi.get
        ids = np.fromiter((get(t, 1) for t in tokens), dtype=np.int32, count=len(tokens))
        if self.ngrams == 2:
            ids = with_pairs(ids, self)
        return ids.astype(np.int64)

    def decode(self, ids):
        """Ids -> list of tokens (padding ids included as '<pad>')."""
        ids = np.asarray(ids)
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids: expected integers in [0, {len(self)}), got {ids.dtype} "
                             f"values in [{ids.min()}, {ids.max()}]")
        return [self.itos[i] for i in ids.ravel().tolist()]

    def to_json(self):
        d = {"format": "gruengine.vocab", "version": 1, "tokens": list(self.itos)}
        if self.ngrams == 2:
            d["ngrams"] = 2
        return d

    @classmethod
    def from_json(cls, d):
        if not isinstance(d, dict) or not isinstance(d.get("tokens"), list):
            raise ValueError(f"vocab: expected a dict with a 'tokens' list, got {type(d).__name__}")
        if d.get("format", "gruengine.vocab") != "gruengine.vocab" or d.get("version", 1) != 1:
            raise ValueError(f"vocab: expected format 'gruengine.vocab' version 1, "
                             f"got {d.get('format')!r} version {d.get('version')!r}")
        return cls(d["tokens"], d.get("ngrams", 1))


def build_vocab(rows, index, max_size, min_count=1, bigrams=0, labels=None):
    """The Vocab of ``Vocab.build`` from provisional-id rows (``corpus.word_ids``), and the rows
    mapped to its word ids; word pairs as ``corpus.select_tokens`` chooses them."""
    words, pairs, rows = select_tokens(rows, index, max_size, min_count, bigrams, labels)
    return Vocab(words + pairs, ngrams=2 if bigrams else 1), rows


def encode_texts(texts, vocab, max_len=None, truncate="head"):
    """Tokenize and encode texts -> ids (N, T) int64 padded with 0, lengths (N,) int64.

    T = the longest encoded text. ``max_len`` cuts each text to that many words first; a
    vocabulary with ``ngrams=2`` then adds the ids of known word pairs between the words (so
    up to 2 * max_len - 1 ids). A text with no tokens becomes one '<unk>' (length 1).
    ``texts`` may also be a list of token lists (already tokenized).
    """
    if max_len is not None:
        max_len = check_positive_int("max_len", max_len)
    if truncate not in TRUNCATE:
        raise ValueError(f"truncate: expected 'head' or 'tail', got {truncate!r}")
    return pack_rows(encode_rows(vocab_ids(texts, vocab), vocab, max_len, truncate))


# ---- labelled text files ---------------------------------------------------------------

# header cells that name a column; a first row made of one of each is a header, whatever order
LABEL_NAMES = {"label", "labels", "class", "category", "target", "sentiment", "polarity", "y"}
TEXT_NAMES = {"text", "review", "sentence", "document", "content", "comment", "body", "message",
              "tweet", "x"}
_NAME = re.compile(r"^[A-Za-z_][\w .-]{0,31}$")


def read_labelled_text(path, *, max_text_bytes=MAX_TEXT_BYTES, max_data_bytes=MAX_DATA_BYTES):
    """Read a labelled text file: ``label<TAB>text`` or ``text<TAB>label`` (.tsv, or any file
    whose first line has a tab), ``label,text`` or ``text,label`` (CSV, quotes allowed).

    Which column holds the label and whether the first row is a header are detected
    (``text_layout``); a layout that cannot be told apart is refused with a message naming
    the column it would take as the label.

    Returns (labels list[str], texts list[str], where list['file:line']). A file over
    ``max_data_bytes``, a record over ``max_text_bytes`` or a quote never closed is a DataError.
    """
    layout = text_layout(path, max_text_bytes=max_text_bytes, max_data_bytes=max_data_bytes)
    return layout["labels"], layout["texts"], layout["where"]


def text_layout(path, *, max_text_bytes=MAX_TEXT_BYTES, max_data_bytes=MAX_DATA_BYTES):
    """The layout of a labelled text file and its rows, as a dict:

    sep ('tab' or 'comma'), label_column (1 or 2: the label is the first or the last field),
    header (the header row's cells, or None), labels, texts, where ('file:line' per row).
    """
    path = os.fspath(path)
    records, tab = _records(path, max_text_bytes, max_data_bytes)
    if not records:
        raise DataError(f"{path}: empty dataset (no labelled lines)")
    for lineno, fields in records:
        if len(fields) < 2:
            sep = "a tab" if tab else "a comma"
            raise DataError(f"{path}:{lineno}: malformed line: expected 'label' {sep} 'text' "
                            f"(or 'text' {sep} 'label'), got {_clip(fields[0])!r}")
    label_col, header = _sniff(path, records)
    if header is not None:
        records = records[1:]
        if not records:
            raise DataError(f"{path}: empty dataset (a header row and no labelled lines)")
    labels, texts, where = [], [], []
    for lineno, fields in records:
        if label_col == 1:
            label, text = fields[0], ("\t" if tab else ",").join(fields[1:])
        else:
            label, text = fields[-1], ("\t" if tab else ",").join(fields[:-1])
        label = label.strip()
        if not label:
            raise DataError(f"{path}:{lineno}: malformed line: empty label "
                            f"(column {label_col} {_col_name(label_col)} is the label)")
        labels.append(label)
        texts.append(text)
        where.append(f"{path}:{lineno}")
    _check_classes(path, labels, label_col)
    return {"sep": "tab" if tab else "comma", "label_column": label_col, "header": header,
            "labels": labels, "texts": texts, "where": where}


def _records(path, max_text_bytes, max_data_bytes):
    """[(line number, fields)] of the non-blank lines, and whether the file is tab-separated."""
    require_file(path)
    check_file_size(path, max_data_bytes)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            data = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    first = data.split("\n", 1)[0]
    tab = path.lower().endswith(".tsv") or ("\t" in first and not path.lower().endswith(".csv"))
    if tab:
        records = ((i + 1, line.rstrip("\r").split("\t")) for i, line in enumerate(data.split("\n")))
    else:
        # strict: a quote never closed is an error, not a field running to the end of the file
        reader = csv.reader(data.splitlines(keepends=True), strict=True)
        records = _csv_records(reader, path, max_text_bytes)
    out = []
    for n, fields in records:
        for field in fields:
            check_line(f"{path}:{n}", field, max_text_bytes)
        if not (len(fields) == 1 and not fields[0].strip()):
            out.append((n, fields))
    return out, tab


def _csv_records(reader, path, max_text_bytes):
    start = 1
    old_limit = csv.field_size_limit(max(max_text_bytes, 1 << 17))   # module-wide: restored below
    try:
        for fields in reader:
            yield start, fields if fields else [""]
            start = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise DataError(f"{path}:{start}: unterminated quote: the quoted field that opens "
                            f"on line {start} runs to the end of the file") from None
        if "field larger than field limit" in str(e):
            raise DataError(f"{path}:{start}: a text over the limit of {max_text_bytes} bytes "
                            f"per text (max_text_bytes; raise it with --max-text-bytes)") from None
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    finally:
        csv.field_size_limit(old_limit)


def _col_name(col):
    return "(the first field)" if col == 1 else "(the last field)"


def _is_header(cells):
    low = [c.strip().lower() for c in cells]
    if low[0] in LABEL_NAMES and low[-1] in TEXT_NAMES:
        return 1
    if low[0] in TEXT_NAMES and low[-1] in LABEL_NAMES:
        return 2
    return 0


def _label_like(values):
    """Whether a column reads as class labels: single words, repeated across rows (empty
    cells are left to the row check, which names their line)."""
    values = [v for v in values if v]
    if any(len(v.split()) != 1 for v in values):
        return False
    return len(set(values)) <= max(2, len(values) // 2)


def _sniff(path, records):
    """(label column 1 | 2, header cells or None) of a file's records."""
    first = records[0][1]
    named = _is_header(first)
    if named:
        return named, [c.strip() for c in first]
    body = [f for _, f in records[1:]] or [first]
    heads, tails = [f[0].strip() for f in body], [f[-1].strip() for f in body]
    head_ok, tail_ok = _label_like(heads), _label_like(tails)
    if head_ok and tail_ok:
        col = 1 if len(set(heads)) <= len(set(tails)) else 2
    elif head_ok or tail_ok:
        col = 1 if head_ok else 2
    else:
        col = 1 if len(set(heads)) <= len(set(tails)) else 2
        vals = heads if col == 1 else tails
        raise DataError(f"{path}: cannot tell which column holds the label: column {col} "
                        f"{_col_name(col)} would be taken, but it has {len(set(vals))} distinct "
                        f"values in {len(vals)} rows; expected one word per label, e.g. "
                        f"'pos<TAB>a fine film' or 'a fine film<TAB>pos'")
    # an unnamed header: a first row of two name-like cells whose label occurs nowhere else,
    # above at least 10 rows of a label column that repeats and texts of several words
    label = (first[0] if col == 1 else first[-1]).strip()
    text = (" ".join(first[1:]) if col == 1 else " ".join(first[:-1])).strip()
    labels, texts = (heads, tails) if col == 1 else (tails, heads)
    words = sorted(len(t.split()) for t in texts)
    if (len(body) >= 10 and len(set(labels)) <= len(body) // 3 and label not in labels
            and _NAME.match(label) and _NAME.match(text) and len(text.split()) <= 2
            and words[len(words) // 2] >= 3):
        return col, [c.strip() for c in first]
    return col, None


def _check_classes(path, labels, col):
    # texts read as labels give about one class per row
    n, k = len(labels), len(set(labels))
    if n >= 20 and k > n // 2:
        raise DataError(f"{path}: column {col} {_col_name(col)} was taken as the label but it "
                        f"has {k} distinct values in {n} rows; expected a few classes "
                        f"('label<TAB>text' or 'text<TAB>label')")


def _clip(s, k=40):
    return s if len(s) <= k else s[:k] + "..."


def load_text(path, *, max_len=None, vocab_size=20000, min_count=1, truncate="head", vocab=None,
              bigrams=0, n_train=None, n_test=None, test_fraction=None, seed=0,
              max_text_bytes=MAX_TEXT_BYTES, max_data_bytes=MAX_DATA_BYTES):
    """Labelled text files -> {'train': Dataset, 'test': Dataset} (task 'classify').

    ``path``: 'train.tsv,test.tsv', a folder with train.{tsv,csv,txt} and test.{...}, or one
    file split by ``test_fraction`` (a seeded split stratified by label, see
    ``holdout_split``). Classes come from the training labels; the vocabulary from the
    training texts unless ``vocab`` (e.g. from a checkpoint) is given; ``bigrams`` adds that
    many word pairs to it, those whose class counts are the most lopsided
    (``gruengine.data.corpus``).
    """
    test_fraction = check_test_fraction(test_fraction)
    limits = dict(max_text_bytes=max_text_bytes, max_data_bytes=max_data_bytes)
    tr, te = resolve_pair(path, (".tsv", ".csv", ".txt"), "text")
    if te is None and test_fraction is None:
        raise DataError(f"{tr}: the text loader needs a train and a test file "
                        f"('TRAIN,TEST' or a folder with train.tsv and test.tsv), or a "
                        f"test fraction to hold out of this one (--test-fraction 0.2)")
    if te is not None and test_fraction is not None:
        raise DataError(f"test_fraction: {path} has its own test file; a test fraction splits "
                        f"a single file only")
    if te is None:
        layout = text_layout(tr, **limits)
        train_rows, test_rows = holdout_split(len(layout["labels"]), test_fraction, seed,
                                              layout["labels"])
        rows = {"train": train_rows, "test": test_rows}
        read = {name: tuple([layout[k][i] for i in idx] for k in ("labels", "texts", "where"))
                for name, idx in rows.items()}
        columns = {"train": layout["label_column"], "test": layout["label_column"]}
    else:
        read, columns = {}, {}
        for name, p in (("train", tr), ("test", te)):
            layout = text_layout(p, **limits)
            read[name] = (layout["labels"], layout["texts"], layout["where"])
            columns[name] = layout["label_column"]
    splits = {}
    for name, limit in (("train", n_train), ("test", n_test)):
        labels, texts, where = read.pop(name)
        if limit is not None:
            labels, texts, where = labels[:limit], texts[:limit], where[:limit]
        splits[name] = (labels, texts, where)
    classes = label_order(splits["train"][0])
    word_rows = {}              # split -> word ids of its texts, once the vocabulary is known
    if vocab is None:
        index = {}
        train_y = encode_labels(splits["train"][0], classes, splits["train"][2])
        vocab, word_rows["train"] = build_vocab(word_ids(splits["train"][1], index), index,
                                                vocab_size, min_count, bigrams, train_y)
        del index
    out = {}
    for name, (labels, texts, where) in splits.items():
        try:
            y = encode_labels(labels, classes, where)
        except DataError as e:
            raise DataError(f"{e}; the label is column {columns[name]} "
                            f"{_col_name(columns[name])} of that file") from None
        rows = word_rows.pop(name, None)
        if rows is None:
            rows = vocab_ids(texts, vocab)
        ids, lengths = pack_rows(encode_rows(rows, vocab, max_len, truncate),
                                 tr if name == "train" else te or tr, max_data_bytes)
        del rows
        out[name] = Dataset(ids, lengths, y, "classify", len(classes), list(classes), vocab)
    return out
