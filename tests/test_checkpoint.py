"""Checkpoint files: round trip, atomic writes, and every kind of bad file refused clearly."""
import json
import os
import zipfile

import numpy as np
import pytest

from gruengine import checkpoint as ckpt
from gruengine.errors import CheckpointError


def _arrays(rng):
    return {"model/rnn.weight_ih_l0": rng.standard_normal((6, 3)).astype(np.float32),
            "model/head.bias": rng.standard_normal(4),
            "optim/m.head.bias": rng.standard_normal(4),
            "rng/dropout0": ckpt.rng_to_array(np.random.default_rng(int(rng.integers(1 << 30))))}


def test_round_trip_arrays_and_meta(tmp_path):
    rng = np.random.default_rng(1)
    arrays = _arrays(rng)
    meta = {"epoch": int(rng.integers(100)), "vocab": {"tokens": ["<pad>", "<unk>", "ü"]},
            "best": float(rng.random())}
    path = ckpt.save_checkpoint(tmp_path / "a.npz", arrays, meta)
    got, got_meta = ckpt.load_checkpoint(path)
    assert got.keys() == arrays.keys()
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
    assert got_meta == meta
    assert ckpt.split_arrays(got, "model").keys() == {"rnn.weight_ih_l0", "head.bias"}
    # no pickle anywhere: the file opens with allow_pickle=False and holds only plain arrays
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_rng_state_round_trip_continues_the_stream():
    g = np.random.default_rng(12345)
    g.random(7)
    g.integers(0, 10, size=3)   # leaves a buffered uint32 in some bit generators
    h = ckpt.rng_from_array(ckpt.rng_to_array(g))
    assert np.array_equal(g.random(50), h.random(50))
    assert np.array_equal(g.integers(0, 1 << 31, 20), h.integers(0, 1 << 31, 20))


def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    old = _arrays(rng)
    path = tmp_path / "last.npz"
    ckpt.save_checkpoint(path, old, {"epoch": 1})
    before = path.read_bytes()

    def dying_writer(f, arrays):
        f.write(b"PK\x03\x04 half a zip")   # the temp file exists and holds garbage
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_npz", dying_writer)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(path, _arrays(rng), {"epoch": 2})
    assert path.read_bytes() == before
    got, meta = ckpt.load_checkpoint(path)
    assert meta["epoch"] == 1 and np.array_equal(got["model/head.bias"], old["model/head.bias"])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "t.npz"
    ckpt.save_checkpoint(path, _arrays(np.random.default_rng(3)), {"epoch": 1})
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
            ckpt.load_checkpoint(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_corrupted_bytes_are_refused(tmp_path):
    path = tmp_path / "c.npz"
    ckpt.save_checkpoint(path, {"model/w": np.random.default_rng(4).standard_normal(5000)},
                         {"epoch": 1})
    data = bytearray(path.read_bytes())
    mid = len(data) // 2                       # inside the stored array: the CRC must catch it
    data[mid:mid + 8] = bytes((b ^ 0xFF) for b in data[mid:mid + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.load_checkpoint(path)


def _rewrite(path, arrays, meta_obj):
    """Write an npz by hand (bypassing save_checkpoint) to forge bad checkpoints."""
    blob = np.frombuffer(json.dumps(meta_obj).encode(), dtype=np.uint8)
    np.savez(path, __meta__=blob, **arrays)


def test_other_format_version_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    arrays = _arrays(rng)
    path = tmp_path / "v.npz"
    ckpt.save_checkpoint(path, arrays, {"epoch": 1})
    _, meta = ckpt.load_checkpoint(path)
    manifest = {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()}
    _rewrite(path, arrays, dict(meta, format_version=ckpt.FORMAT_VERSION + 1, arrays=manifest))
    with pytest.raises(CheckpointError, match=f"format version {ckpt.FORMAT_VERSION + 1}"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize("fault", ["missing", "extra", "shape", "dtype", "no_meta", "bad_json",
                                   "pickled"])
def test_field_by_field_validation(tmp_path, fault):
    rng = np.random.default_rng(6)
    arrays = _arrays(rng)
    manifest = {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()}
    meta = {"format_version": ckpt.FORMAT_VERSION, "arrays": manifest, "epoch": 3}
    path = tmp_path / "f.npz"
    bad = dict(arrays)
    if fault == "missing":
        del bad["model/head.bias"]
        match = r"missing \['model/head.bias'\]"
    elif fault == "extra":
        bad["model/sneaky"] = rng.standard_normal(2)
        match = r"unexpected \['model/sneaky'\]"
    elif fault == "shape":
        bad["model/head.bias"] = rng.standard_normal(5)
        match = r"'model/head.bias' expected shape \(4,\), got \(5,\)"
    elif fault == "dtype":
        bad["model/head.bias"] = bad["model/head.bias"].astype(np.float32)
        match = "'model/head.bias' expected dtype float64, got float32"
    if fault in ("missing", "extra", "shape", "dtype"):
        _rewrite(path, bad, meta)
    elif fault == "no_meta":
        np.savez(path, **arrays)
        match = "not a gruengine checkpoint"
    elif fault == "bad_json":
        np.savez(path, __meta__=np.frombuffer(b"{not json", dtype=np.uint8), **arrays)
        match = "not valid JSON"
    else:  # an object array needs pickle, which loading refuses
        np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 obj=np.array([{"a": 1}], dtype=object), **arrays)
        match = "pickled objects"
    with pytest.raises(CheckpointError, match=match) as e:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_not_a_zip_and_missing_file(tmp_path):
    path = tmp_path / "x.npz"
    path.write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such file"):
        ckpt.load_checkpoint(tmp_path / "nope.npz")
    with pytest.raises(CheckpointError, match="is a folder"):
        ckpt.load_checkpoint(tmp_path)
    assert zipfile.is_zipfile(path) is False
