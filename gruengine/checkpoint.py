"""Checkpoints: one ``.npz`` of named arrays plus a JSON metadata string, written atomically.

Layout of the file::

    __meta__        uint8 (n,)   UTF-8 JSON: format_version, the array manifest, and whatever
                                 the caller stores (model config, vocabulary, optimizer meta,
                                 epoch/step, best metric, data config, RNG bit-generator names)
    model/<name>    parameters of the model (PyTorch-style names)
    optim/<name>    optimizer state arrays (moments, step counts)
    rng/<name>      uint64 (6,) the state of a PCG64 generator (see ``rng_to_array``)

Loading never unpickles: it reads the metadata first, then every member's ``.npy`` header,
checks names, shapes and dtypes against the manifest and each header against the bytes the
archive holds for it, and only then reads the arrays. Members are stored uncompressed (as
``np.savez`` writes them), so no member can make the reader allocate more than the file's
size. Anything missing, extra, of the wrong shape or dtype, compressed, of another format
version, or unreadable raises ``CheckpointError`` with a one-line message. Writes go to a
temporary file in the same folder, are flushed and fsynced, then ``os.replace``-d over the
target, so a crash mid-write leaves the previous checkpoint untouched.
"""
import json
import os
import zipfile

import numpy as np

from ._files import write_atomic
from ._npz import NpzReader
from .errors import CheckpointError

FORMAT_VERSION = 1
META_KEY = "__meta__"
_MASK64 = (1 << 64) - 1


def save_checkpoint(path, arrays, meta):
    """Write ``arrays`` (dict name -> ndarray) and ``meta`` (JSON-able dict) to ``path``.

    The write is atomic: readers see the old file or the new one, never a partial one.
    """
    path = os.fspath(path)
    if META_KEY in arrays:
        raise ValueError(f"arrays: the name {META_KEY!r} is reserved for the metadata")
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise ValueError(f"arrays[{k!r}]: object arrays cannot be stored without pickle")
    manifest = {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()}
    full_meta = dict(meta, format_version=FORMAT_VERSION, arrays=manifest)
    blob = np.frombuffer(json.dumps(full_meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    return write_atomic(path, lambda f: _write_npz(f, {META_KEY: blob, **arrays}),
                        what="a checkpoint")


def _write_npz(f, arrays):
    # a seam of its own so tests can make the writer fail half-way
    np.savez(f, **arrays)


def load_checkpoint(path):
    """Read and validate a checkpoint; return ``(arrays, meta)``.

    ``meta`` is the caller's metadata (``format_version`` and the manifest removed).
    A ``.safetensors`` path is read by ``gruengine.safetensors.load_checkpoint_safetensors``.
    Raises ``CheckpointError`` naming the file and the first problem found. The metadata and
    its manifest are read first and every array's header is checked against the manifest
    before any array data is read; arrays are stored uncompressed, so nothing read can be
    larger than the file itself.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):               # weights + metadata, no optimizer state
        from .safetensors import load_checkpoint_safetensors
        return load_checkpoint_safetensors(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: is a folder; pass a .npz file "
                              f"(a run folder holds last.npz and best.npz)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path}: unreadable (truncated or corrupt): "
                              f"not a complete .npz (zip) archive")
    with NpzReader(path, error=CheckpointError, where=f"checkpoint {path}",
                   unreadable="unreadable (truncated or corrupt)", stored_only=True) as z:
        if META_KEY not in z.members:
            raise CheckpointError(f"checkpoint {path}: no {META_KEY} entry; "
                                  f"not a gruengine checkpoint")
        meta_member = z.members[META_KEY]
        if meta_member.dtype != np.uint8 or len(meta_member.shape) != 1:
            raise CheckpointError(f"checkpoint {path}: {META_KEY} expected a 1-D uint8 array, "
                                  f"got {len(meta_member.shape)}-D {meta_member.dtype}")
        meta = _decode_meta(path, z.read(META_KEY))
        version = meta.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path}: format version {version!r} is not "
                                  f"supported (this gruengine reads version {FORMAT_VERSION})")
        manifest = meta.pop("arrays", None)
        if not isinstance(manifest, dict):
            raise CheckpointError(f"checkpoint {path}: metadata has no array manifest")
        names = set(z.members) - {META_KEY}
        missing = sorted(set(manifest) - names)
        extra = sorted(names - set(manifest))
        if missing or extra:
            raise CheckpointError(f"checkpoint {path}: arrays do not match the manifest; "
                                  f"missing {missing}, unexpected {extra}")
        for k, spec in manifest.items():
            shape, dtype = _manifest_entry(path, k, spec)
            m = z.members[k]
            if m.shape != shape:
                raise CheckpointError(f"checkpoint {path}: array {k!r} expected shape {shape}, "
                                      f"got {m.shape}")
            if m.dtype != dtype:
                raise CheckpointError(f"checkpoint {path}: array {k!r} expected dtype {dtype}, "
                                      f"got {m.dtype}")
        data = {k: z.read(k) for k in manifest}
    return data, meta


def _manifest_entry(path, k, spec):
    try:
        shape, dtype = tuple(spec[0]), np.dtype(spec[1])
        ok = all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    except (TypeError, IndexError, ValueError, KeyError):
        ok = False
    if not ok:
        raise CheckpointError(f"checkpoint {path}: bad manifest entry for {k!r}: expected "
                              f"[shape, dtype], got {str(spec)[:60]}")
    return shape, dtype


def _decode_meta(path, blob):
    try:
        meta = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: metadata expected a JSON object, "
                              f"got {type(meta).__name__}")
    return meta


def split_arrays(arrays, prefix):
    """The entries of ``arrays`` under ``prefix/``, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}


def join_arrays(**groups):
    """``join_arrays(model={...}, optim={...})`` -> {'model/<k>': v, 'optim/<k>': v}."""
    return {f"{g}/{k}": v for g, d in groups.items() for k, v in d.items()}


def rng_to_array(rng):
    """The state of a PCG64 ``numpy.random.Generator`` as uint64 (6,):
    state hi, state lo, inc hi, inc lo, has_uint32, uinteger."""
    st = rng.bit_generator.state
    if st.get("bit_generator") != "PCG64":
        raise ValueError(f"rng: expected a PCG64 generator, got {st.get('bit_generator')!r}")
    s, inc = st["state"]["state"], st["state"]["inc"]
    return np.array([s >> 64, s & _MASK64, inc >> 64, inc & _MASK64,
                     st["has_uint32"], st["uinteger"]], dtype=np.uint64)


def rng_from_array(a, name="rng"):
    """Inverse of ``rng_to_array``: a fresh PCG64 Generator in that exact state."""
    if not isinstance(a, np.ndarray) or a.shape != (6,) or a.dtype != np.uint64:
        raise CheckpointError(f"{name}: expected a uint64 array of shape (6,), "
                              f"got {getattr(a, 'dtype', type(a).__name__)} "
                              f"{getattr(a, 'shape', '')}")
    v = [int(x) for x in a]
    bg = np.random.PCG64()
    bg.state = {"bit_generator": "PCG64",
                "state": {"state": (v[0] << 64) | v[1], "inc": (v[2] << 64) | v[3]},
                "has_uint32": v[4], "uinteger": v[5]}
    return np.random.Generator(bg)
