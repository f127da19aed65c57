"""The Large Movie Review Dataset (Maas et al., ACL 2011): binary sentiment of IMDB reviews.

Reads the official layout ``aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt`` either from the
extracted folder or straight from the ``.tar.gz`` (streamed, nothing unpacked to disk).
``train/unsup`` and every other file of the archive are ignored.
"""
import gzip
import os
import re
import tarfile
import zlib

import numpy as np

from .._checks import check_positive_int
from ..errors import DataError
from .dataset import Dataset
from .text import Vocab, encode_texts, tokenize

CLASSES = ["neg", "pos"]
SPLITS = ("train", "test")
_CHUNK = 1 << 20
_MEMBER = re.compile(r"(?:^|/)(train|test)/(neg|pos)/(\d+)_(\d+)\.txt$")


def read_imdb(path, n_train=None, n_test=None):
    """Raw reviews -> {'train': (texts, labels), 'test': (texts, labels)}, labels int64 (0 neg, 1 pos).

    ``n_train`` / ``n_test`` cap each split (half per class, the first ones met in the archive /
    the lowest review ids in a folder); reading stops as soon as every cap is full.
    Within a split, reviews are ordered by (class, id).
    """
    path = os.fspath(path)
    quotas = {}
    for split, n in (("train", n_train), ("test", n_test)):
        n = None if n is None else check_positive_int(f"n_{split}", n)
        quotas[split] = None if n is None else {0: n // 2, 1: n - n // 2}
    if os.path.isdir(path):
        found = _read_folder(path, quotas)
    elif os.path.isfile(path):
        found = _read_tar(path, quotas)
    else:
        raise DataError(f"{path}: no such file or folder (expected aclImdb_v1.tar.gz or the aclImdb folder)")
    out = {}
    for split in SPLITS:
        items = sorted(found[split])  # (label, id, text)
        if not items:
            raise DataError(f"{path}: not the IMDB layout: no review files under "
                            f"aclImdb/{split}/{{neg,pos}}/<id>_<rating>.txt")
        out[split] = ([t for _, _, t in items], np.array([c for c, _, _ in items], dtype=np.int64))
    return out


def _full(quotas, found_counts):
    return all(q is not None and all(found_counts[s][c] >= q[c] for c in (0, 1))
               for s, q in quotas.items())


def _wanted(quotas, counts, split, cls):
    q = quotas[split]
    return q is None or counts[split][cls] < q[cls]


def _read_tar(path, quotas):
    found = {s: [] for s in SPLITS}
    counts = {s: {0: 0, 1: 0} for s in SPLITS}
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            complete = _scan_tar(stream, path, quotas, found, counts)
            if complete and gz:
                while stream.read(_CHUNK):  # a truncated gzip raises EOFError here
                    pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise DataError(f"{path}: cannot read the archive ({' '.join(str(e).split()) or type(e).__name__})") from None
    return found


def _scan_tar(stream, path, quotas, found, counts):
    """One pass over the members (stream mode); False when it stopped early with every quota full."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            hit = _MEMBER.search(m.name) if m.isfile() else None
            if hit is None:
                continue
            split, cls, rid = hit.group(1), CLASSES.index(hit.group(2)), int(hit.group(3))
            if not _wanted(quotas, counts, split, cls):
                continue
            raw = tar.extractfile(m).read()
            found[split].append((cls, rid, _decode(raw, f"{path}:{m.name}")))
            counts[split][cls] += 1
            if _full(quotas, counts):
                return False
    return True


def _read_folder(path, quotas):
    root = path
    if not os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "aclImdb")):
        root = os.path.join(root, "aclImdb")
    found = {s: [] for s in SPLITS}
    for split in SPLITS:
        for cls, cname in enumerate(CLASSES):
            d = os.path.join(root, split, cname)
            if not os.path.isdir(d):
                raise DataError(f"{path}: not the IMDB layout: missing folder {split}/{cname}")
            files = []
            for e in os.scandir(d):
                hit = _MEMBER.search(f"{split}/{cname}/{e.name}")
                if hit and e.is_file():
                    files.append((int(hit.group(3)), e.path))
            files.sort()
            q = quotas[split]
            if q is not None:
                files = files[:q[cls]]
            for rid, fp in files:
                try:
                    with open(fp, "rb") as f:
                        raw = f.read()
                except OSError as e:
                    raise DataError(f"{fp}: cannot read ({e.strerror})") from None
                found[split].append((cls, rid, _decode(raw, fp)))
    return found


def _decode(raw, where):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_imdb(path, *, max_len=None, vocab_size=20000, min_count=1, truncate="head", vocab=None,
              n_train=None, n_test=None, seed=0):
    """IMDB -> {'train': Dataset, 'test': Dataset}, task 'classify', classes ['neg', 'pos'].

    The vocabulary is built from the training reviews only, unless ``vocab`` is given. Rows of
    each split are shuffled with ``seed`` (the files are grouped by class on disk).
    """
    raw = read_imdb(path, n_train, n_test)
    toks = {s: [tokenize(t) for t in raw[s][0]] for s in SPLITS}
    if vocab is None:
        vocab = Vocab.build(toks["train"], vocab_size, min_count)
    out = {}
    for k, split in enumerate(SPLITS):
        ids, lengths = encode_texts(toks[split], vocab, max_len, truncate)
        perm = np.random.default_rng([seed, k]).permutation(len(lengths))
        out[split] = Dataset(ids[perm], lengths[perm], raw[split][1][perm], "classify", 2,
                             list(CLASSES), vocab)
    return out
