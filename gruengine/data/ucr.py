"""The UCR/UEA time-series classification archives.

* ``.ts`` (sktime/UEA format): ``@`` header lines, then ``@data`` and one case per line,
  channels separated by ``:``, values by ``,``, the class label last. Cases may have different
  lengths (all channels of one case share its length). ``@targetLabel true`` files (the
  regression archive) give a float target instead of a class.
* ``.tsv`` (UCR 2018) and ``.txt`` (older UCR): one univariate series per line, the label
  first; tabs, commas or spaces between values. Variable-length series are right-padded
  with NaN in those files, so trailing NaNs mark the end of a series.

A path is a folder holding ``<Name>_TRAIN.<ext>`` and ``<Name>_TEST.<ext>``, one of those two
files (the other is found beside it), or an explicit pair 'a_TRAIN.ts,a_TEST.ts'.
Classes: the ``@classLabel`` list of a ``.ts`` file, else the training labels in sorted order.
"""
import os
import re

import numpy as np

from ..errors import DataError
from ..limits import (MAX_DATA_BYTES, MAX_TEXT_BYTES, check_data_size, check_file_size,
                      check_line)
from .dataset import (Dataset, encode_labels, explicit_pair, label_order, pad_sequences,
                      require_file)

EXTS = (".ts", ".tsv", ".txt")
_SPLIT_WS = re.compile(r"[,\s]+")
_F32_MAX = float(np.finfo(np.float32).max)


def resolve_ucr(path):
    path, pair = explicit_pair(path, "ucr")
    if pair:
        return pair
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        for ext in EXTS:
            for n in names:
                if n.upper().endswith("_TRAIN" + ext.upper()):
                    test = n[: -len("_TRAIN" + ext)] + "_TEST" + n[len(n) - len(ext):]
                    if test in names:
                        return os.path.join(path, n), os.path.join(path, test)
        raise DataError(f"{path}: folder holds no <Name>_TRAIN/<Name>_TEST pair of .ts, .tsv or .txt files")
    m = re.search(r"_(TRAIN|TEST)(\.\w+)$", path, re.IGNORECASE)
    if m is None:
        raise DataError(f"{path}: expected a folder, a <Name>_TRAIN.ts/.tsv/.txt file or a 'TRAIN,TEST' pair")
    stem, ext = path[: m.start()], m.group(2)
    return stem + "_TRAIN" + ext, stem + "_TEST" + ext


def _floats(text, where):
    try:
        v = np.array(text, dtype=np.float64)
    except ValueError:
        bad = next((v for v in text if not _is_float(v)), "?")
        raise DataError(f"{where}: malformed value {bad!r} (expected a number)") from None
    with np.errstate(invalid="ignore"):
        big = np.abs(v) > _F32_MAX            # would become Inf as float32; NaN is not big
    if big.any():
        raise DataError(f"{where}: value {v[big][0]:.4g} is outside the float32 range "
                        f"(+-{_F32_MAX:.4g})")
    return v


def _is_float(v):
    try:
        float(v)
        return True
    except ValueError:
        return False


def _read_lines(path, max_text_bytes, max_data_bytes):
    require_file(path)
    check_file_size(path, max_data_bytes)
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    for i, line in enumerate(lines, start=1):
        check_line(f"{path}:{i}", line, max_text_bytes)
    return lines


def _norm_label(s):
    """'1.0000000e+00' (old UCR files) and '1' name the same class."""
    s = s.strip()
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f.is_integer() else s


def _flag(header, key):
    """True when the header line '@key true ...' is present."""
    words = header.get(key, "").split()
    return bool(words) and words[0].lower() == "true"


def read_ts(path, *, max_text_bytes=MAX_TEXT_BYTES, max_data_bytes=MAX_DATA_BYTES):
    """One ``.ts`` file -> (series list of (T_i, F) float64, labels list[str] or float targets,
    where list['file:line'], header dict). A line over ``max_text_bytes`` or a file over
    ``max_data_bytes`` is a DataError, and so is a value a float32 cannot hold."""
    lines = _read_lines(path, max_text_bytes, max_data_bytes)
    header, series, labels, where = {}, [], [], []
    in_data = False
    n_dims = None
    for i, line in enumerate(lines, start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not in_data:
            if not s.startswith("@"):
                raise DataError(f"{path}:{i}: malformed header line (expected '@key value' or '@data')")
            key, _, rest = s[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
                if _flag(header, "timestamps"):
                    raise DataError(f"{path}:{i}: '@timeStamps true' files are not supported")
                if not (_flag(header, "classlabel") or _flag(header, "targetlabel")):
                    raise DataError(f"{path}: no labels ('@classLabel true ...' or '@targetLabel true' missing)")
            else:
                header[key] = rest.strip()
            continue
        parts = s.split(":")
        if len(parts) < 2:
            raise DataError(f"{path}:{i}: malformed line: expected channels and a label separated by ':'")
        label, chans = parts[-1].strip(), parts[:-1]
        if n_dims is None:
            n_dims = len(chans)
            declared = header.get("dimensions")
            if declared and declared.isdigit() and int(declared) != n_dims:
                raise DataError(f"{path}:{i}: {n_dims} channel(s), the header declares {declared}")
        elif len(chans) != n_dims:
            raise DataError(f"{path}:{i}: {len(chans)} channel(s), earlier lines have {n_dims}")
        vals = [_floats(c.replace("?", "nan").split(","), f"{path}:{i}") for c in chans]
        t = len(vals[0])
        if any(len(v) != t for v in vals):
            raise DataError(f"{path}:{i}: channels of one case have different lengths "
                            f"{sorted({len(v) for v in vals})}")
        x = np.stack(vals, axis=1)
        if not np.isfinite(x).all():
            raise DataError(f"{path}:{i}: missing or non-finite values ('?' or NaN) are not supported")
        if not label:
            raise DataError(f"{path}:{i}: malformed line: empty label")
        series.append(x)
        labels.append(label)
        where.append(f"{path}:{i}")
    if not in_data:
        raise DataError(f"{path}: no '@data' line; not a .ts file")
    if not series:
        raise DataError(f"{path}: empty dataset (no cases after '@data')")
    return series, labels, where, header


def read_ucr_table(path, *, max_text_bytes=MAX_TEXT_BYTES, max_data_bytes=MAX_DATA_BYTES):
    """One ``.tsv``/``.txt`` file -> (series list of (T_i, 1), labels list[str], where)."""
    lines = _read_lines(path, max_text_bytes, max_data_bytes)
    series, labels, where = [], [], []
    tab = path.lower().endswith(".tsv")
    for i, line in enumerate(lines, start=1):
        s = line.strip()
        if not s:
            continue
        fields = s.split("\t") if tab else _SPLIT_WS.split(s)
        if len(fields) < 2:
            raise DataError(f"{path}:{i}: malformed line: expected a label and at least one value")
        v = _floats([f.strip() for f in fields[1:]], f"{path}:{i}")
        fin = np.isfinite(v)
        n = int(np.nonzero(fin)[0][-1]) + 1 if fin.any() else 0
        if n == 0 or not fin[:n].all():
            raise DataError(f"{path}:{i}: NaN or Inf inside the series (only trailing NaN padding is allowed)")
        series.append(v[:n, None])
        labels.append(_norm_label(fields[0]))
        where.append(f"{path}:{i}")
    if not series:
        raise DataError(f"{path}: empty dataset (no series)")
    return series, labels, where


def load_ucr(path, *, n_train=None, n_test=None, max_text_bytes=MAX_TEXT_BYTES,
             max_data_bytes=MAX_DATA_BYTES):
    """UCR/UEA pair -> {'train': Dataset, 'test': Dataset} (classify, or regress for @targetLabel)."""
    limits = dict(max_text_bytes=max_text_bytes, max_data_bytes=max_data_bytes)
    tr, te = resolve_ucr(path)
    ext = os.path.splitext(tr)[1].lower()
    if ext not in EXTS or os.path.splitext(te)[1].lower() != ext:
        raise DataError(f"{tr}: expected a .ts, .tsv or .txt pair with one extension, got {tr!r} and {te!r}")
    raw = {}
    for name, p, lim in (("train", tr, n_train), ("test", te, n_test)):
        if ext == ".ts":
            series, labels, where, header = read_ts(p, **limits)
        else:
            (series, labels, where), header = read_ucr_table(p, **limits), {}
        if lim is not None:
            series, labels, where = series[:lim], labels[:lim], where[:lim]
        raw[name] = (series, labels, where, header)
    f_tr, f_te = raw["train"][0][0].shape[1], raw["test"][0][0].shape[1]
    if f_tr != f_te:
        raise DataError(f"{te}: {f_te} channel(s), the training file has {f_tr}")
    header = raw["train"][3]
    regress = _flag(header, "targetlabel") and not _flag(header, "classlabel")
    classes = None
    if not regress:
        declared = header.get("classlabel", "").split()[1:]
        classes = declared or label_order(raw["train"][1])
    out = {}
    for name, (series, labels, where, _) in raw.items():
        T = max(len(x) for x in series)
        check_data_size(tr if name == "train" else te, len(series) * T * f_tr * 4,
                        max_data_bytes, f"the padded series ({len(series)} x {T} steps x "
                        f"{f_tr} channels, float32)")
        X, lengths = pad_sequences(series, np.float32)
        if regress:
            y = np.array([float(v) if _is_float(v) else np.nan for v in labels], dtype=np.float32)[:, None]
            if not np.isfinite(y).all():
                bad = int(np.nonzero(~np.isfinite(y[:, 0]))[0][0])
                raise DataError(f"{where[bad]}: target {labels[bad]!r} is not a finite number")
            out[name] = Dataset(X, lengths, y, "regress", None, None, None)
        else:
            y = encode_labels(labels, classes, where)
            out[name] = Dataset(X, lengths, y, "classify", len(classes), list(classes), None)
    return out
