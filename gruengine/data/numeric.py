"""Numeric sequence files: ``.npz`` archives of padded feature arrays.

An ``.npz`` (read with ``allow_pickle=False``) holds

    X        (N, T, F) or (N, T) numbers (F = 1); cast to float32, must be finite
    y        the targets; the task follows from shape and dtype:
               (N,) integer -> classify     (N,) or (N, K) float -> regress
               (N, T) integer -> tag         (N, T, K) float -> tag
    lengths  optional (N,) integers in [1, T]; default T for every row
    classes  optional (C,) strings naming the classes of integer targets

Integer targets are class ids in [0, C); C is len(classes) if given, else max(train y) + 1,
and a test id outside [0, C) is an error.
"""
import os
import zipfile

import numpy as np

from ..errors import DataError
from .dataset import Dataset, check_test_fraction, holdout_split, require_file, resolve_pair

_KEYS = {"X", "y", "lengths", "classes"}


def read_npz(path):
    """Load and check one split's arrays -> dict with X float32, y, lengths int64, classes or None."""
    path = os.fspath(path)
    require_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz ({' '.join(str(e).split()) or type(e).__name__})") from None
    for k in ("X", "y"):
        if k not in arrays:
            raise DataError(f"{path}: missing array {k!r} (found {sorted(arrays)})")
    extra = sorted(set(arrays) - _KEYS)
    if extra:
        raise DataError(f"{path}: unexpected array(s) {extra}; expected X, y, optional lengths, classes")
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
        y = y.astype(np.int64)
    elif y.dtype.kind == "f":
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim == 3 and y.shape[1] != t:
            raise DataError(f"{path}: y: per-step float targets must have shape ({n}, {t}, K), got {y.shape}")
        if y.ndim not in (2, 3):
            raise DataError(f"{path}: y: float targets must have shape ({n},), ({n}, K) or ({n}, {t}, K), "
                            f"got {y.shape}")
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


def _task(y):
    if y.dtype == np.int64:
        return "classify" if y.ndim == 1 else "tag"
    return "regress" if y.ndim == 2 else "tag"


def load_npz(path, *, n_train=None, n_test=None, test_fraction=None, seed=0):
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
    if te is None:
        a = read_npz(tr)
        y = a["y"]
        rows = holdout_split(len(y), test_fraction, seed,
                             y if y.dtype == np.int64 and y.ndim == 1 else None)
        a, b = ({**a, **{k: np.ascontiguousarray(a[k][idx]) for k in ("X", "y", "lengths")}}
                for idx in rows)
        te = f"{tr} (test rows)"
    else:
        a, b = read_npz(tr), read_npz(te)
    for name, lim in (("train", n_train), ("test", n_test)):
        s = a if name == "train" else b
        if lim is not None:
            for k in ("X", "y", "lengths"):
                s[k] = s[k][:lim]
    if a["X"].shape[2] != b["X"].shape[2]:
        raise DataError(f"{te}: X has {b['X'].shape[2]} features, the training file {tr} has {a['X'].shape[2]}")
    ta, tb = _task(a["y"]), _task(b["y"])
    if ta != tb or a["y"].dtype != b["y"].dtype or a["y"].shape[2:] != b["y"].shape[2:] \
            or (ta == "regress" and a["y"].shape[1] != b["y"].shape[1]):
        raise DataError(f"{te}: y has shape {b['y'].shape} {b['y'].dtype}, which does not match the "
                        f"training targets {a['y'].shape} {a['y'].dtype}")
    classes = a["classes"]
    num_classes = None
    if a["y"].dtype == np.int64:
        num_classes = len(classes) if classes is not None else int(a["y"].max()) + 1
        if classes is None:
            classes = [str(i) for i in range(num_classes)]
        for s in (a, b):
            y = s["y"]
            if y.min() < 0 or y.max() >= num_classes:
                bad = int(y[(y < 0) | (y >= num_classes)].ravel()[0])
                raise DataError(f"{s['path']}: y: class id {bad} is outside the known classes "
                                f"[0, {num_classes}) of the training file")
        if b["classes"] is not None and b["classes"] != classes:
            raise DataError(f"{te}: classes {b['classes']} differ from the training file's {classes}")
    elif classes is not None:
        raise DataError(f"{tr}: classes given but the targets are float (a regression or float tag task)")
    return {name: Dataset(s["X"], s["lengths"], s["y"], ta, num_classes, classes, None)
            for name, s in (("train", a), ("test", b))}
