"""safetensors files: state dicts, and checkpoints as weights plus metadata.

    gruengine.save_safetensors(gru.state_dict(), "gru.safetensors")
    gru.load_state_dict(gruengine.load_safetensors("gru.safetensors"))

A safetensors file is a JSON header (names, dtypes, shapes, byte offsets, and a str -> str
metadata map) followed by the raw little-endian data: loading runs no code. gruengine's
parameter names, shapes and gate order are PyTorch's, so a ``torch.nn.GRU`` state_dict saved
with ``safetensors.torch.save_file`` loads into ``gruengine.GRU`` without torch, and a file
written here loads into torch with ``safetensors.torch.load_file``.

A checkpoint as safetensors (``save_checkpoint_safetensors``; ``gruengine export CKPT
model.safetensors``) holds the model's state_dict under the model's own names
(``rnn.weight_ih_l0``, ``head.weight``, ...) and, under the metadata key ``gruengine``, the
checkpoint's JSON metadata (model_config, vocab, classes, train_config, data_config) without
the optimizer and RNG state: weights to evaluate, predict, inspect and export, not a run to
resume. ``gruengine.checkpoint.load_checkpoint`` reads one as ``(arrays, meta)`` with the
weights under ``model/``, like a ``.npz`` checkpoint.

Uses the ``safetensors`` package (``pip install 'gruengine[onnx]'``), imported on first use.
"""
import json
import os

import numpy as np

from ._files import write_atomic
from ._optional import require
from .errors import CheckpointError

__all__ = ["save_safetensors", "load_safetensors", "safetensors_metadata",
           "save_checkpoint_safetensors", "load_checkpoint_safetensors"]

META_KEY = "gruengine"
FORMAT_VERSION = 1
# the checkpoint metadata that describes the weights (optimizer, RNG and progress stay in .npz)
CHECKPOINT_META = ("kind", "model_config", "vocab", "classes", "train_config", "data_config",
                   "metric", "source")


def _check_state_dict(state_dict):
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict: expected a dict of name -> numpy.ndarray, got "
                         f"{type(state_dict).__name__}")
    out = {}
    for k, v in state_dict.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"state_dict: expected non-empty str keys, got {k!r}")
        if not isinstance(v, np.ndarray):
            raise ValueError(f"state_dict[{k!r}]: expected a numpy.ndarray, got {type(v).__name__}")
        if v.dtype.hasobject or v.dtype.kind not in "biuf":
            raise ValueError(f"state_dict[{k!r}]: expected a bool, integer or float array, "
                             f"got dtype {v.dtype}")
        out[k] = np.ascontiguousarray(v)
    return out


def save_safetensors(state_dict, path, metadata=None):
    """Write ``state_dict`` (dict name -> ndarray) to ``path`` as safetensors, atomically.

    ``metadata``: an optional dict of str -> str stored in the header."""
    st = require("safetensors.numpy", "writing safetensors")
    tensors = _check_state_dict(state_dict)
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError(f"metadata: expected a dict of str -> str, got {metadata!r:.80}")
    return write_atomic(path, st.save(tensors, metadata=metadata))


def _open(path):
    """(safe_open handle, path); one-line ValueError for a missing or unreadable file."""
    safetensors = require("safetensors", "reading safetensors")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file" + (" (a folder)" if os.path.isdir(path) else ""))
    try:
        return safetensors.safe_open(path, framework="numpy")
    except Exception as e:          # SafetensorError and the header parser's errors
        why = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{path}: not a readable safetensors file ({why})") from None


def load_safetensors(path):
    """Read a safetensors file -> dict name -> ndarray (copies, in the file's order)."""
    with _open(path) as f:
        out = {}
        for k in f.keys():
            try:
                out[k] = np.array(f.get_tensor(k))
            except Exception as e:  # e.g. bfloat16, which NumPy has no dtype for
                why = " ".join(str(e).split()) or type(e).__name__
                raise ValueError(f"{os.fspath(path)}: tensor {k!r} cannot be read as a NumPy "
                                 f"array ({why})") from None
    return out


def safetensors_metadata(path):
    """The header's metadata of a safetensors file: dict str -> str ({} when there is none)."""
    with _open(path) as f:
        return dict(f.metadata() or {})


def save_checkpoint_safetensors(path, state_dict, meta):
    """Write a model's ``state_dict`` and the weights' part of a checkpoint's ``meta`` (the
    keys in ``CHECKPOINT_META``; model_config is required) to ``path``."""
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise ValueError("meta: expected a dict with a 'model_config' (a checkpoint's metadata)")
    kept = {k: meta[k] for k in CHECKPOINT_META if meta.get(k) is not None}
    kept["format_version"] = FORMAT_VERSION
    return save_safetensors(state_dict, path, {META_KEY: json.dumps(kept, sort_keys=True)})


def load_checkpoint_safetensors(path):
    """Read a checkpoint written by ``save_checkpoint_safetensors`` -> ``(arrays, meta)`` with
    the weights under ``model/<name>``; ``CheckpointError`` (one line) otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        raw = safetensors_metadata(path).get(META_KEY)
        arrays = load_safetensors(path)
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"checkpoint {' '.join(str(e).split())}") from None
    if raw is None:
        raise CheckpointError(f"checkpoint {path}: no {META_KEY!r} metadata; a bare state_dict "
                              f"(load it with gruengine.load_safetensors)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: metadata expected a JSON object, "
                              f"got {type(meta).__name__}")
    version = meta.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r} is not supported "
                              f"(this gruengine reads version {FORMAT_VERSION})")
    return {f"model/{k}": v for k, v in arrays.items()}, meta
