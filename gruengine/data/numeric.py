"""Numeric sequence files: ``.npz`` archives of padded feature arrays.

An ``.npz`` (read with ``allow_pickle=False``) holds

    X        (N, T, F) or (N, T) numbers (F = 1); cast to float32, must be finite
    y        the targets; the task follows from shape and dtype:
               (N,) integer -> classify     (N,) or (N, K) float -> regress
               (N, T) integer -> tag         (N, T, K) float -> tag
    lengths  optional (N,) integers in [1, T]; default T for every row
    classes  optional (C,) strings naming the classes of integer targets

Integer targets are class ids in [0, C); C is len(classes) if given, else max(train y) + 1,
and a test id outside [0, C) is an error. Training ids that cannot be class indices (negative,
or ``MAX_CLASS_ID`` and beyond) are labels instead: the classes are then their distinct
values in increasing order, named by their value, so nothing is ever allocated up to the
largest id. Per-step (tag) ids are read at the valid steps only.

Every member's header is read before its data: the declared sizes must fit
``max_data_bytes``, so a small file claiming a huge array is refused without allocating it.
"""
import os

import numpy as np

from .._npz import NpzReader
from ..errors import DataError
from ..limits import MAX_DATA_BYTES, check_data_size, check_limit, fmt_bytes
from .dataset import Dataset, check_test_fraction, holdout_split, require_file, resolve_pair

_KEYS = {"X", "y", "lengths", "classes"}
# ids from here on are labels, not indices: a head of 65536 outputs is already a large one
MAX_CLASS_ID = 1 << 16
_F32_MAX = float(np.finfo(np.float32).max)


def read_npz(path, *, max_data_bytes=MAX_DATA_BYTES):
    """Load and check one split's arrays -> dict with X float32, y, lengths int64, classes or None."""
    path = os.fspath(path)
    require_file(path)
    check_limit("max_data_bytes", max_data_bytes)
    with NpzReader(path, error=DataError, where=path, unreadable="not a readable .npz") as z:
        found = sorted(z.members)
        for k in ("X", "y"):
            if k not in z.members:
                raise DataError(f"{path}: missing array {k!r} (found {found})")
        extra = sorted(set(found) - _KEYS)
        if extra:
            raise DataError(f"{path}: unexpected array(s) {extra}; expected X, y, optional lengths, classes")
        declared = sum(m.nbytes for m in z.members.values())
        # X is cast to float32 beside the stored copy
        X_shape = z.members["X"].shape
        check_data_size(path, declared + int(np.prod(X_shape, dtype=object)) * 4, max_data_bytes,
                        f"the arrays (X {X_shape} {z.members['X'].dtype}; "
                        f"{fmt_bytes(declared)} stored)")
        arrays = {k: z.read(k) for k in found}
    X, y = arrays["X"], arrays["y"]
    if X.dtype.kind not in "iuf":
        raise DataError(f"{path}: X: expected a numeric array, got dtype {X.dtype}")
    if X.ndim == 2:
        X = X[:, :, None]
    if X.ndim != 3:
        raise DataError(f"{path}: X: expected shape (N, T, F) or (N, T), got {X.shape}")
    n, t = X.shape[:2]
    if n == 0 or t == 0 or X.shape[2] == 0:
        raise DataError(f"{path}: empty dataset (X has shape {X.shape})")
    if X.dtype.kind == "f" and X.dtype.itemsize > 4:
        _check_float32_range(path, "X", X)
    X = np.ascontiguousarray(X, dtype=np.float32)
    lengths = arrays.get("lengths")
    if lengths is None:
        lengths = np.full(n, t, dtype=np.int64)
    else:
        if lengths.dtype.kind not in "iu" or lengths.shape != (n,):
            raise DataError(f"{path}: lengths: expected ({n},) integers, got {lengths.dtype} {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > t:
            raise DataError(f"{path}: lengths: expected values in [1, {t}], "
                            f"got [{int(lengths.min())}, {int(lengths.max())}]")
        lengths = lengths.astype(np.int64)
    # padding may hold anything (NaN included) and is zeroed; valid steps must be finite
    valid = np.arange(t)[None, :] < lengths[:, None]
    X[~valid] = 0.0
    if not np.isfinite(X).all():
        row = int(np.nonzero(~np.isfinite(X).all(axis=(1, 2)))[0][0])
        raise DataError(f"{path}: X: NaN or Inf in row {row}; numeric data must be finite")
    if y.shape[:1] != (n,):
        raise DataError(f"{path}: y: expected first dimension N={n} (as X), got shape {y.shape}")
    if y.dtype.kind in "iu":
        if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != t):
            raise DataError(f"{path}: y: integer targets must have shape ({n},) or ({n}, {t}), got {y.shape}")
    elif y.dtype.kind == "f":
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim == 3 and y.shape[1] != t:
            raise DataError(f"{path}: y: per-step float targets must have shape ({n}, {t}, K), got {y.shape}")
        if y.ndim not in (2, 3):
            raise DataError(f"{path}: y: float targets must have shape ({n},), ({n}, K) or ({n}, {t}, K), "
                            f"got {y.shape}")
        if y.dtype.itemsize > 4:
            _check_float32_range(path, "y", y)
        y = np.ascontiguousarray(y, dtype=np.float32)
        if not np.isfinite(y).all():
            raise DataError(f"{path}: y: NaN or Inf in the targets")
    else:
        raise DataError(f"{path}: y: expected integer or float targets, got dtype {y.dtype}")
    classes = arrays.get("classes")
    if classes is not None:
        if classes.dtype.kind != "U" or classes.ndim != 1:
            raise DataError(f"{path}: classes: expected a 1-D string array, got {classes.dtype} {classes.shape}")
        classes = [str(c) for c in classes]
    return {"X": X, "y": y, "lengths": lengths, "classes": classes, "path": path}


def _check_float32_range(path, name, a):
    """Values a float32 cannot hold would become Inf in the cast: name them instead."""
    with np.errstate(invalid="ignore"):
        big = np.abs(a) > _F32_MAX
    if big.any():
        at = tuple(int(i) for i in np.argwhere(big)[0])
        raise DataError(f"{path}: {name}: value {a[at]:.4g} at index {at} is outside the float32 "
                        f"range (+-{_F32_MAX:.4g})")


def _task(y):
    if y.dtype.kind in "iu":
        return "classify" if y.ndim == 1 else "tag"
    return "regress" if y.ndim == 2 else "tag"


def _valid_ids(s):
    """The integer targets of a split at its valid steps (tag targets: not the padding)."""
    y = s["y"]
    if y.ndim == 1:
        return y
    return y[np.arange(y.shape[1])[None, :] < s["lengths"][:, None]]


def _as_int64(ids):
    """int64 when every id fits (uint64 ids past 2**63 stay uint64, never wrap)."""
    if ids.dtype.kind == "u" and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        return ids.astype(np.uint64)
    return ids.astype(np.int64)


def _map_ids(s, uniq, names):
    """Class ids of split ``s`` -> positions in ``uniq`` (the training ids); DataError for an id
    that is not one of them."""
    y = s["y"]
    valid = _valid_ids(s)
    vals = _as_int64(valid)
    if vals.dtype != uniq.dtype:      # one of the two is past int64: compare as Python ints
        index = {int(v): i for i, v in enumerate(uniq)}
        bad = next((int(v) for v in vals if int(v) not in index), None)
        pos = None if bad is not None else \
            np.array([index[int(v)] for v in vals], dtype=np.int64)
    else:
        pos = np.searchsorted(uniq, vals)
        miss = (pos >= len(uniq)) | (uniq[np.minimum(pos, len(uniq) - 1)] != vals)
        bad = int(vals[miss][0]) if miss.any() else None
    if bad is not None:
        contiguous = names == [str(i) for i in range(len(names))]
        known = f"[0, {len(names)})" if contiguous else _short(names)
        raise DataError(f"{s['path']}: y: class id {bad} is outside the known classes "
                        f"{known} of the training file")
    out = np.zeros(y.shape, dtype=np.int64)       # padding steps: class 0, never scored
    if y.ndim == 1:
        out[:] = pos
    else:
        out[np.arange(y.shape[1])[None, :] < s["lengths"][:, None]] = pos
    return out


def _short(names, k=8):
    return "[" + ", ".join(names[:k]) + (", ..." if len(names) > k else "") + "]"


def load_npz(path, *, n_train=None, n_test=None, test_fraction=None, seed=0,
             max_data_bytes=MAX_DATA_BYTES):
    """'train.npz,test.npz', a folder with train.npz and test.npz, or one .npz split by
    ``test_fraction`` (seeded; stratified for class targets, see ``holdout_split``)
    -> {'train', 'test'} Datasets."""
    test_fraction = check_test_fraction(test_fraction)
    tr, te = resolve_pair(path, (".npz",), "npz")
    if te is None and test_fraction is None:
        raise DataError(f"{tr}: the npz loader needs a train and a test file "
                        f"('TRAIN.npz,TEST.npz' or a folder with train.npz and test.npz), or a "
                        f"test fraction to hold out of this one (--test-fraction 0.2)")
    if te is not None and test_fraction is not None:
        raise DataError(f"test_fraction: {path} has its own test file; a test fraction splits "
                        f"a single file only")
    a = read_npz(tr, max_data_bytes=max_data_bytes)
    if te is None:
        y = a["y"]
        rows = holdout_split(len(y), test_fraction, seed,
                             y if y.dtype.kind in "iu" and y.ndim == 1 else None)
        a, b = ({**a, **{k: np.ascontiguousarray(a[k][idx]) for k in ("X", "y", "lengths")}}
                for idx in rows)
        te = f"{tr} (test rows)"
    else:
        used = sum(v.nbytes for v in (a["X"], a["y"], a["lengths"]))
        b = read_npz(te, max_data_bytes=max(max_data_bytes - used, 1))
    for name, lim in (("train", n_train), ("test", n_test)):
        s = a if name == "train" else b
        if lim is not None:
            for k in ("X", "y", "lengths"):
                s[k] = s[k][:lim]
    if a["X"].shape[2] != b["X"].shape[2]:
        raise DataError(f"{te}: X has {b['X'].shape[2]} features, the training file {tr} has {a['X'].shape[2]}")
    ta, tb = _task(a["y"]), _task(b["y"])
    ints = a["y"].dtype.kind in "iu"
    if ta != tb or ints != (b["y"].dtype.kind in "iu") or a["y"].shape[2:] != b["y"].shape[2:] \
            or (ta == "regress" and a["y"].shape[1] != b["y"].shape[1]):
        raise DataError(f"{te}: y has shape {b['y'].shape} {b['y'].dtype}, which does not match the "
                        f"training targets {a['y'].shape} {a['y'].dtype}")
    classes = a["classes"]
    num_classes = None
    if ints:
        if classes is not None:
            num_classes = len(classes)
            uniq = np.arange(num_classes, dtype=np.int64)
        else:
            ids = _as_int64(_valid_ids(a))
            lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
            uniq = np.arange(hi + 1, dtype=np.int64) if 0 <= lo and hi < MAX_CLASS_ID \
                else np.unique(ids)
            classes = [str(int(v)) for v in uniq]
            num_classes = len(classes)
        for s in (a, b):
            s["y"] = _map_ids(s, uniq, classes)
        if b["classes"] is not None and b["classes"] != classes:
            raise DataError(f"{te}: classes {b['classes']} differ from the training file's {classes}")
    elif classes is not None:
        raise DataError(f"{tr}: classes given but the targets are float (a regression or float tag task)")
    return {name: Dataset(s["X"], s["lengths"], s["y"], ta, num_classes, classes, None)
            for name, s in (("train", a), ("test", b))}
