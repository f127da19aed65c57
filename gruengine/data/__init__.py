"""Datasets: IMDB reviews, labelled text files, numeric .npz files, UCR/UEA archives and
synthetic memory tasks, all as padded NumPy arrays.

    from gruengine.data import load_dataset
    splits = load_dataset("imdb", "aclImdb_v1.tar.gz", max_len=400, vocab_size=20000)
    train, test = splits["train"], splits["test"]      # Dataset: inputs, lengths, targets, ...
"""
import os

from .._checks import check_positive_int
from ..errors import DataError
from ..limits import MAX_DATA_BYTES, MAX_TEXT_BYTES, check_limit
from .dataset import Dataset, describe
from .text import Vocab, encode_texts, tokenize

NAMES = ("adding", "copy", "imdb", "npz", "text", "ucr")

__all__ = ["Dataset", "Vocab", "load_dataset", "describe", "guess_name", "default_test_fraction",
           "tokenize", "encode_texts", "NAMES"]


def load_dataset(name, path=None, *, seed=0, max_len=None, vocab_size=20000, min_count=1, truncate="head",
                 bigrams=0, n_train=None, n_test=None, seq_len=None, vocab=None, test_fraction=None,
                 max_text_bytes=MAX_TEXT_BYTES, max_data_bytes=MAX_DATA_BYTES):
    """Load a named dataset -> {'train': Dataset, 'test': Dataset}.

    name        'adding' | 'copy' (synthetic, from ``seed``; ``seq_len`` = T, default 100;
                n_train / n_test default 10000 / 1000)
                'imdb'   path = aclImdb_v1.tar.gz (read without unpacking) or the aclImdb folder;
                         default: the download cache (see ``gruengine data download imdb``)
                'text'   path = 'train.tsv,test.tsv', a folder with train.{tsv,csv,txt} + test.*,
                         or one file with ``test_fraction``
                'npz'    path = 'train.npz,test.npz', a folder with train.npz + test.npz, or
                         one file with ``test_fraction``
                'ucr'    path = a folder with <Name>_TRAIN/_TEST .ts/.tsv/.txt, one of them, or the pair
    max_len     token datasets: cut texts to at most this many tokens (``truncate`` 'head' keeps
                the first tokens, 'tail' the last); T = min(max_len, longest text of the split)
    vocab_size  token datasets: vocabulary size including '<pad>' and '<unk>', from the
                training split only; ``min_count`` drops rarer tokens. ``vocab`` (a Vocab or
                its ``to_json()`` dict, e.g. from a checkpoint) replaces the built one.
    bigrams     token datasets: also this many of the most frequent pairs of adjacent words
                of the training split as tokens, each placed after its first word
                (``gruengine.data.corpus``; 0 = words only)
    n_train, n_test   cap the number of rows read (IMDB: half per class)
    test_fraction     text and npz: the share of a single file held out as the test split
                (seeded by ``seed``, stratified by class); ``default_test_fraction`` gives
                the value the trainer uses when none is set
    seed        synthetic data, the row order of IMDB, and the test_fraction split
    max_text_bytes    the largest review, text line or series line read (DataError beyond)
    max_data_bytes    the most one dataset may take: text read, token ids, padded arrays
    """
    if name not in NAMES:
        raise ValueError(f"name: expected one of {', '.join(NAMES)}, got {name!r}")
    for arg, v in (("n_train", n_train), ("n_test", n_test), ("seq_len", seq_len), ("max_len", max_len)):
        if v is not None:
            check_positive_int(arg, v)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    if truncate not in ("head", "tail"):
        raise ValueError(f"truncate: expected 'head' or 'tail', got {truncate!r}")
    limits = dict(max_text_bytes=check_limit("max_text_bytes", max_text_bytes),
                  max_data_bytes=check_limit("max_data_bytes", max_data_bytes))
    if isinstance(vocab, dict):
        vocab = Vocab.from_json(vocab)
    elif vocab is not None and not isinstance(vocab, Vocab):
        raise ValueError(f"vocab: expected a Vocab, its to_json() dict or None, got {type(vocab).__name__}")
    if test_fraction is not None and name not in ("text", "npz"):
        raise ValueError(f"test_fraction: only a single text or npz file is split; the {name!r} "
                         f"dataset has its own test split")
    if isinstance(bigrams, bool) or not isinstance(bigrams, int) or bigrams < 0:
        raise ValueError(f"bigrams: expected an integer >= 0, got {bigrams!r}")
    if bigrams and name not in ("imdb", "text"):
        raise ValueError(f"bigrams: only text datasets (imdb, text) take word pairs, not {name!r}")
    if name in ("adding", "copy"):
        if path is not None:
            raise ValueError(f"path: the synthetic {name!r} task reads no file, got {path!r}")
        if max_len is not None:
            raise ValueError(f"max_len: only token datasets (imdb, text) take it; use seq_len for {name!r}")
        from .synthetic import load_adding, load_copy
        if name == "adding":
            if vocab is not None:
                raise ValueError("vocab: the 'adding' task has float inputs and takes no vocabulary")
            return load_adding(n_train=n_train, n_test=n_test, seq_len=seq_len, seed=seed,
                               max_data_bytes=max_data_bytes)
        out = load_copy(n_train=n_train, n_test=n_test, seq_len=seq_len, seed=seed,
                        max_data_bytes=max_data_bytes)
        if vocab is not None and vocab != out["train"].vocab:
            raise ValueError(f"vocab: a vocabulary of {len(vocab)} tokens does not match the copy task's "
                             f"{len(out['train'].vocab)} tokens")
        return out
    if seq_len is not None:
        raise ValueError(f"seq_len: only the synthetic tasks take seq_len; use max_len for {name!r}")
    text_opts = dict(max_len=max_len, vocab_size=vocab_size, min_count=min_count, truncate=truncate,
                     vocab=vocab, bigrams=bigrams, n_train=n_train, n_test=n_test, **limits)
    split = dict(test_fraction=test_fraction, seed=seed)
    if name == "imdb":
        from .download import find_imdb
        from .imdb import load_imdb
        return load_imdb(find_imdb() if path is None else path, seed=seed, **text_opts)
    if name == "text":
        from .text import load_text
        return load_text(_need(path, name), **text_opts, **split)
    if max_len is not None or vocab is not None:
        raise ValueError(f"max_len/vocab: only token datasets (imdb, text) take them, not {name!r}")
    if name == "npz":
        from .numeric import load_npz
        return load_npz(_need(path, name), n_train=n_train, n_test=n_test,
                        max_data_bytes=max_data_bytes, **split)
    from .ucr import load_ucr
    return load_ucr(_need(path, name), n_train=n_train, n_test=n_test, **limits)


def _need(path, name):
    if path is None:
        raise DataError(f"path: the {name!r} dataset needs a path, got None")
    return os.fspath(path)


DEFAULT_TEST_FRACTION = 0.2


def default_test_fraction(name, path):
    """The test fraction a run uses when none is given: 0.2 for one text or npz file (it has
    no test split of its own), else None."""
    if name not in ("text", "npz") or path is None:
        return None
    path = os.fspath(path)
    if "," in path and not os.path.exists(path):
        return None
    return DEFAULT_TEST_FRACTION if os.path.isfile(path) else None


def guess_name(path_or_name):
    """The loader for a dataset name or a path: 'imdb' for .tar.gz / aclImdb folders, 'npz',
    'ucr' for .ts and <Name>_TRAIN files, 'text' for other .tsv/.csv/.txt."""
    s = os.fspath(path_or_name)
    if s in NAMES:
        return s
    first = s.split(",")[0].strip()
    low = first.lower()
    if low.endswith((".tar.gz", ".tgz", ".tar")) or os.path.basename(low.rstrip("/")) == "aclimdb":
        return "imdb"
    if low.endswith(".npz"):
        return "npz"
    if low.endswith(".ts") or "_train." in os.path.basename(low) or "_test." in os.path.basename(low):
        return "ucr"
    if low.endswith((".tsv", ".csv", ".txt")):
        return "text"
    if os.path.isdir(first):
        names = os.listdir(first)
        up = [n.upper() for n in names]
        if "train.npz" in names:
            return "npz"
        if any(u.endswith(("_TRAIN.TS", "_TRAIN.TSV", "_TRAIN.TXT")) for u in up):
            return "ucr"
        if any(n.startswith(("train.", "test.")) for n in names):
            return "text"
        if "aclImdb" in names or {"train", "test"} <= set(names):
            return "imdb"
    raise DataError(f"{s}: cannot tell the dataset kind; pass --task (one of {', '.join(NAMES)})")
