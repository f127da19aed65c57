"""The in-memory dataset every loader returns, and path helpers shared by the loaders."""
import os
from dataclasses import dataclass

import numpy as np

from .._checks import check_array, check_lengths
from ..errors import DataError

TASKS = ("classify", "regress", "tag")


@dataclass
class Dataset:
    """One split of a sequence dataset, padded to a common length ``T``.

    inputs      (N, T) int64 token ids, or (N, T, F) float32 features; zero past each length
    lengths     (N,) int64 in [1, T]
    targets     classify: (N,) int64 ; regress: (N, K) float32 ;
                tag (per step): (N, T) int64 class ids or (N, T, K) float32
    task        'classify' | 'regress' | 'tag'
    num_classes number of classes for integer targets, else None
    classes     label names (index = class id), or None
    vocab       the ``gruengine.data.text.Vocab`` behind token ids, or None

    Construction validates shapes and dtypes (ValueError with a one-line message).
    """
    inputs: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    task: str
    num_classes: int | None = None
    classes: list | None = None
    vocab: object | None = None

    def __post_init__(self):
        validate_dataset(self)

    def __len__(self):
        return int(self.inputs.shape[0])

    def subset(self, idx):
        """Rows ``idx`` (indices, a slice or a boolean mask) as a new Dataset with the same metadata."""
        if isinstance(idx, slice):
            sel = idx
        else:
            sel = np.asarray(idx)
            if sel.dtype == bool:
                if sel.shape != (len(self),):
                    raise ValueError(f"idx: expected a boolean mask of shape ({len(self)},), "
                                     f"got shape {sel.shape}")
            elif sel.dtype.kind not in "iu" or sel.ndim != 1:
                raise ValueError(f"idx: expected a 1-D integer index array, a slice or a boolean mask, "
                                 f"got dtype {sel.dtype} with {sel.ndim} dimension(s)")
            elif sel.size and (sel.min() < -len(self) or sel.max() >= len(self)):
                raise ValueError(f"idx: expected indices in [0, {len(self)}), "
                                 f"got values in [{int(sel.min())}, {int(sel.max())}]")
        return Dataset(np.ascontiguousarray(self.inputs[sel]), np.ascontiguousarray(self.lengths[sel]),
                       np.ascontiguousarray(self.targets[sel]), self.task, self.num_classes,
                       None if self.classes is None else list(self.classes), self.vocab)

    @property
    def steps(self):
        """T, the padded sequence length."""
        return int(self.inputs.shape[1])


def validate_dataset(ds):
    if ds.task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {ds.task!r}")
    x = ds.inputs
    if not isinstance(x, np.ndarray):
        raise ValueError(f"inputs: expected a numpy.ndarray, got {type(x).__name__}")
    if x.ndim == 2:
        check_array("inputs", x, (None, None), np.int64)
    else:
        check_array("inputs", x, (None, None, None), np.float32)
    n, t = x.shape[:2]
    ds.lengths = check_lengths("lengths", ds.lengths, n, t)
    y = ds.targets
    if ds.task == "classify":
        check_array("targets", y, (n,), np.int64)
    elif ds.task == "regress":
        check_array("targets", y, (n, None), np.float32)
    elif isinstance(y, np.ndarray) and y.ndim == 2:
        check_array("targets", y, (n, t), np.int64)
    else:
        check_array("targets", y, (n, t, None), np.float32)
    int_targets = y.dtype == np.int64
    if int_targets:
        if ds.num_classes is None or isinstance(ds.num_classes, bool) or int(ds.num_classes) < 1:
            raise ValueError(f"num_classes: expected an integer >= 1 for integer targets, "
                             f"got {ds.num_classes!r}")
        if y.size and (y.min() < 0 or y.max() >= ds.num_classes):
            raise ValueError(f"targets: expected class ids in [0, {ds.num_classes}), "
                             f"got values in [{int(y.min())}, {int(y.max())}]")
    elif ds.num_classes is not None:
        raise ValueError(f"num_classes: expected None for float targets, got {ds.num_classes!r}")
    if ds.classes is not None and int_targets and len(ds.classes) != ds.num_classes:
        raise ValueError(f"classes: expected {ds.num_classes} names, got {len(ds.classes)}")
    if ds.vocab is not None and x.ndim == 2 and x.size and x.max() >= len(ds.vocab):
        raise ValueError(f"inputs: token id {int(x.max())} is outside the vocabulary "
                         f"of size {len(ds.vocab)}")


def explicit_pair(path, what):
    """(path as str, (train, test) or None): the pair when ``path`` is 'TRAIN,TEST'."""
    if path is None:
        raise DataError(f"path: the {what} loader needs a path, got None")
    path = os.fspath(path)
    if "," in path and not os.path.exists(path):
        parts = [p.strip() for p in path.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"path: expected 'TRAIN,TEST' (two files), got {path!r}")
        return path, (parts[0], parts[1])
    return path, None


def resolve_pair(path, suffixes, what):
    """Return (train_path, test_path) from 'a,b', a folder, or a single file.

    A folder must hold ``train<suffix>`` and ``test<suffix>`` (first suffix that exists);
    a single file gives (file, None).
    """
    path, pair = explicit_pair(path, what)
    if pair:
        return pair
    if os.path.isdir(path):
        for suf in suffixes:
            tr, te = os.path.join(path, "train" + suf), os.path.join(path, "test" + suf)
            if os.path.isfile(tr) and os.path.isfile(te):
                return tr, te
        names = " / ".join(f"train{s}+test{s}" for s in suffixes)
        raise DataError(f"{path}: folder holds no {what} pair ({names})")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    return path, None


def check_test_fraction(test_fraction):
    """``test_fraction`` as a float in (0, 1), or None."""
    if test_fraction is None:
        return None
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1) or None, got {test_fraction!r}")
    return float(test_fraction)


def holdout_split(n, test_fraction, seed, labels=None):
    """(train rows, test rows): a seeded split of ``n`` rows, both sorted (file order kept).

    With ``labels`` (one per row) the split is stratified: each class gives round(fraction x
    its count) rows to the test split and keeps at least one for training, so every test
    label is a known class. Raises DataError when the test split would be empty.
    """
    rng = np.random.default_rng([seed, 7321])
    if labels is None:
        k = min(max(int(round(n * test_fraction)), 1), n - 1)
        perm = rng.permutation(n)
        test = perm[:k]
    else:
        labels = np.asarray(labels)
        test = []
        for c in sorted(set(labels.tolist())):
            rows = np.flatnonzero(labels == c)
            rng.shuffle(rows)
            test.extend(rows[:min(int(round(len(rows) * test_fraction)), len(rows) - 1)])
        test = np.array(test, dtype=np.int64)
    if n < 2 or len(test) == 0:
        raise DataError(f"test_fraction: {test_fraction:g} of {n} rows leaves no test rows; "
                        "give a larger fraction or a separate test file ('TRAIN,TEST')")
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def require_file(path):
    """Raise DataError unless ``path`` is a readable regular file."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: file is not readable")


def label_order(labels):
    """Sorted unique labels: numerically when every label is a number, else as strings."""
    uniq = set(labels)
    try:
        return sorted(uniq, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(uniq)


def encode_labels(labels, classes, where):
    """Map label strings to ids; ``where`` lists 'file:line' per label for the error message."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(labels):
        cid = index.get(lab)
        if cid is None:
            raise DataError(f"{where[i]}: label {lab!r} is not one of the known classes "
                            f"{_short_list(classes)} (classes come from the training split)")
        out[i] = cid
    return out


def _short_list(items, k=10):
    items = list(items)
    body = ", ".join(repr(s) for s in items[:k])
    return f"[{body}{', ...' if len(items) > k else ''}]"


def pad_sequences(seqs, dtype, fill=0):
    """Stack 1-D (or 2-D, time-first) arrays into (N, T[, F]) padded with ``fill`` plus lengths."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    t = int(lengths.max()) if len(seqs) else 0
    tail = seqs[0].shape[1:] if len(seqs) else ()
    out = np.full((len(seqs), t) + tuple(tail), fill, dtype=dtype)
    if len(seqs):
        flat = np.concatenate(seqs, axis=0).astype(dtype, copy=False)
        rows = np.repeat(np.arange(len(seqs)), lengths)
        cols = np.arange(flat.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = flat
    return out, lengths


def describe(ds):
    """Counts and length statistics of one split, as a JSON-friendly dict."""
    lengths = ds.lengths
    info = {
        "rows": len(ds),
        "task": ds.task,
        "steps": ds.steps,
        "input": "token ids" if ds.inputs.ndim == 2 else f"{ds.inputs.shape[2]} float feature(s)",
        "length_min": int(lengths.min()) if len(ds) else 0,
        "length_mean": float(lengths.mean()) if len(ds) else 0.0,
        "length_median": float(np.median(lengths)) if len(ds) else 0.0,
        "length_max": int(lengths.max()) if len(ds) else 0,
        "target_shape": list(ds.targets.shape[1:]),
    }
    if ds.num_classes is not None:
        info["num_classes"] = int(ds.num_classes)
        names = ds.classes or [str(i) for i in range(ds.num_classes)]
        y = ds.targets
        if y.ndim == 2:  # per-step ids: count the valid steps only
            y = y[np.arange(ds.steps)[None, :] < lengths[:, None]]
        counts = np.bincount(y.ravel(), minlength=ds.num_classes)
        info["class_counts"] = {str(n): int(c) for n, c in zip(names, counts)}
    if ds.vocab is not None:
        info["vocab_size"] = len(ds.vocab)
    return info
