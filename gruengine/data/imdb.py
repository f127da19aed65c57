"""The Large Movie Review Dataset (Maas et al., ACL 2011): binary sentiment of IMDB reviews.

Reads the official layout ``aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt`` either from the
extracted folder or straight from the ``.tar.gz`` (streamed, nothing unpacked to disk).
``train/unsup`` and every other file of the archive are ignored, and so are members outside
the archive's one top folder (``aclImdb/`` in the official archive; the first review found
fixes it): absolute names, names with ``..``, links and devices. In a folder, a review that
is a symbolic link must resolve inside the dataset folder.

Every review's size is checked before it is read (``max_text_bytes``), and so is the running
total of the text read (``max_data_bytes``): an archive that expands to gigabytes is refused
at its first oversized member.
"""
import gzip
import os
import re
import tarfile
import zlib

import numpy as np

from .._checks import check_positive_int
from ..errors import DataError
from ..limits import MAX_DATA_BYTES, MAX_TEXT_BYTES, Budget, check_text_size
from .dataset import Dataset
from .corpus import encode_rows, pack_rows, vocab_ids, word_ids
from .text import build_vocab

CLASSES = ["neg", "pos"]
SPLITS = ("train", "test")
_CHUNK = 1 << 20
# [<one top folder>/]{train,test}/{neg,pos}/<id>_<rating>.txt
_MEMBER = re.compile(r"(?:([^/]+)/)?(train|test)/(neg|pos)/(\d+)_(\d+)\.txt")
# tar header records (long names, pax attributes) are read whole by tarfile: bound them
_MAX_HEADER_RECORD = 1 << 20


def read_imdb(path, n_train=None, n_test=None, *, max_text_bytes=MAX_TEXT_BYTES,
              max_data_bytes=MAX_DATA_BYTES):
    """Raw reviews -> {'train': (texts, labels), 'test': (texts, labels)}, labels int64 (0 neg, 1 pos).

    ``n_train`` / ``n_test`` cap each split (half per class, the first ones met in the archive /
    the lowest review ids in a folder); reading stops as soon as every cap is full.
    Within a split, reviews are ordered by (class, id). A review over ``max_text_bytes``, or
    more text in all than ``max_data_bytes``, is a DataError.
    """
    path = os.fspath(path)
    quotas = {}
    for split, n in (("train", n_train), ("test", n_test)):
        n = None if n is None else check_positive_int(f"n_{split}", n)
        quotas[split] = None if n is None else {0: n // 2, 1: n - n // 2}
    budget = Budget(max_data_bytes, path)
    if os.path.isdir(path):
        found = _read_folder(path, quotas, max_text_bytes, budget)
    elif os.path.isfile(path):
        found = _read_tar(path, quotas, max_text_bytes, budget)
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


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a GNU long-name or pax header record into memory whole, before any
    member: a forged one of gigabytes would be read in full. These refuse it first."""

    def _check_record(self):
        if self.size > _MAX_HEADER_RECORD:
            raise tarfile.TarError(f"a header record of {self.size} bytes (names and "
                                   f"attributes take at most {_MAX_HEADER_RECORD})")

    def _proc_gnulong(self, tarfile):
        self._check_record()
        return super()._proc_gnulong(tarfile)

    def _proc_pax(self, tarfile):
        self._check_record()
        return super()._proc_pax(tarfile)


def _read_tar(path, quotas, max_text_bytes, budget):
    found = {s: [] for s in SPLITS}
    counts = {s: {0: 0, 1: 0} for s in SPLITS}
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            complete = _scan_tar(stream, path, quotas, found, counts, max_text_bytes, budget)
            if complete and gz:
                while stream.read(_CHUNK):  # a truncated gzip raises EOFError here
                    pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise DataError(f"{path}: cannot read the archive ({' '.join(str(e).split()) or type(e).__name__})") from None
    return found


def _scan_tar(stream, path, quotas, found, counts, max_text_bytes, budget):
    """One pass over the members (stream mode); False when it stopped early with every quota full."""
    root = ()                             # not yet known (None: reviews at the top level)
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar:
        for m in tar:
            name = m.name[2:] if m.name.startswith("./") else m.name
            hit = _MEMBER.fullmatch(name) if m.isfile() else None
            if hit is None or hit.group(1) in ("..", "."):
                continue
            if root == ():
                root = hit.group(1)
            if hit.group(1) != root:
                continue                  # outside the archive's top folder
            split, cls, rid = hit.group(2), CLASSES.index(hit.group(3)), int(hit.group(4))
            if not _wanted(quotas, counts, split, cls):
                continue
            where = f"{path}:{m.name}"
            check_text_size(where, m.size, max_text_bytes, "a review")
            budget.take(m.size, "reviews")
            raw = tar.extractfile(m).read()
            found[split].append((cls, rid, _decode(raw, where)))
            counts[split][cls] += 1
            if _full(quotas, counts):
                return False
    return True


def _read_folder(path, quotas, max_text_bytes, budget):
    root = path
    if not os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "aclImdb")):
        root = os.path.join(root, "aclImdb")
    inside = os.path.realpath(root)
    found = {s: [] for s in SPLITS}
    for split in SPLITS:
        for cls, cname in enumerate(CLASSES):
            d = os.path.join(root, split, cname)
            if not os.path.isdir(d):
                raise DataError(f"{path}: not the IMDB layout: missing folder {split}/{cname}")
            files = []
            for e in os.scandir(d):
                hit = _MEMBER.fullmatch(f"{split}/{cname}/{e.name}")
                if hit and e.is_file():
                    files.append((int(hit.group(4)), e.path))
            files.sort()
            q = quotas[split]
            if q is not None:
                files = files[:q[cls]]
            for rid, fp in files:
                found[split].append((cls, rid, _decode(_read_review(fp, inside, max_text_bytes,
                                                                    budget), fp)))
    return found


def _read_review(fp, inside, max_text_bytes, budget):
    """The bytes of one review file of the folder ``inside`` (a real path)."""
    real = os.path.realpath(fp)
    if os.path.commonpath([real, inside]) != inside:
        raise DataError(f"{fp}: a symbolic link to {real}, outside the dataset folder "
                        f"{inside}; refused")
    try:
        with open(real, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            check_text_size(fp, size, max_text_bytes, "a review")
            raw = f.read(max_text_bytes + 1)      # the file may have grown since fstat
    except OSError as e:
        raise DataError(f"{fp}: cannot read ({e.strerror})") from None
    check_text_size(fp, len(raw), max_text_bytes, "a review")
    budget.take(len(raw), "reviews")
    return raw


def _decode(raw, where):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_imdb(path, *, max_len=None, vocab_size=20000, min_count=1, truncate="head", vocab=None,
              bigrams=0, n_train=None, n_test=None, seed=0, max_text_bytes=MAX_TEXT_BYTES,
              max_data_bytes=MAX_DATA_BYTES):
    """IMDB -> {'train': Dataset, 'test': Dataset}, task 'classify', classes ['neg', 'pos'].

    The vocabulary is built from the training reviews only, unless ``vocab`` is given;
    ``bigrams`` adds that many word pairs to it, those whose sentiment counts are the most
    lopsided (``gruengine.data.corpus``). Rows of each split are shuffled with ``seed`` (the
    files are grouped by class on disk). Each review is tokenized once and its text dropped
    once encoded.
    """
    raw = read_imdb(path, n_train, n_test, max_text_bytes=max_text_bytes,
                    max_data_bytes=max_data_bytes)
    out = {}
    for k, split in enumerate(SPLITS):
        texts, labels = raw.pop(split)
        if vocab is None:
            index = {}
            rows = word_ids(texts, index)
            del texts
            vocab, rows = build_vocab(rows, index, vocab_size, min_count, bigrams, labels)
            del index
        else:
            rows = vocab_ids(texts, vocab)
            del texts
        perm = np.random.default_rng([seed, k]).permutation(len(rows))
        rows = encode_rows([rows[i] for i in perm], vocab, max_len, truncate)
        ids, lengths = pack_rows(rows, f"{path} ({split})", max_data_bytes)
        del rows
        out[split] = Dataset(ids, lengths, labels[perm], "classify", 2, list(CLASSES), vocab)
    return out
