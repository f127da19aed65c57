"""A trained checkpoint's gates on one input: what ``gruengine inspect`` runs.

    from gruengine.inspection import inspect_checkpoint, adding_input
    s = inspect_checkpoint("runs/adding/best.npz", adding_input(3), "insp")  # gates.npz, gates.png
    s = inspect_checkpoint("runs/imdb/best.npz", "A moving, beautifully shot film.", plot=False)

An *input builder* is a callable ``(model, meta) -> (inputs, lengths, info)``: it makes one
sequence the checkpoint's model reads, from what the checkpoint knows (its vocabulary and
max_len, the length of the synthetic task it was trained on). ``text_input``,
``adding_input``, ``copy_input`` and ``npz_input`` return the builders the command line
offers; ``info`` is {'source' (what the input was made from, as printed), 'labels' (tokens or
None), 'marks' (steps to mark), 'target' (or None)}.
"""
import functools
import os

import numpy as np

from .gates import keep_gate, record_gates, summarize
from .limits import check_fits_memory

__all__ = ["inspect_checkpoint", "text_input", "adding_input", "copy_input", "npz_input"]


# ---------------------------------------------------------------------------------- input builders
def _check_seed(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def text_input(text, *, source=None):
    """A builder for token models: ``text`` encoded with the checkpoint's vocabulary and its
    training max_len / truncate. ``source`` names the input in the summary (default: the text)."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string, got {type(text).__name__}")
    return functools.partial(_build_text, text=text, source=text if source is None else source)


def copy_input(seed, *, source=None):
    """A builder for a model trained on the copy task: one instance at the checkpoint's length."""
    seed = _check_seed("seed", seed)
    return functools.partial(_build_copy, seed=seed,
                             source=f"copy:{seed}" if source is None else source)


def adding_input(seed, T=None, *, source=None):
    """A builder for a model of 2 features per step: one adding-problem instance of length
    ``T`` (default: the length the checkpoint was trained on)."""
    seed = _check_seed("seed", seed)
    T = None if T is None else _check_seed("T", T)
    default = f"adding:{seed}" + ("" if T is None else f":{T}")
    return functools.partial(_build_adding, seed=seed, T=T,
                             source=default if source is None else source)


def npz_input(path, index, *, source=None):
    """A builder for a feature model: row ``index`` of an .npz in the layout of
    ``gruengine.data.numeric`` (X (N, T, F), y, optional lengths), read when it runs."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a file path, got {type(path).__name__}")
    path = os.fspath(path)
    return functools.partial(_build_npz, path=path, index=index,
                             source=f"{path}:{index}" if source is None else source)


def _info(source):
    return {"source": source, "labels": None, "marks": [], "target": None}


def _features(model, what):
    """The model's features per step; a token model cannot read ``what``."""
    if model.config.input == "tokens":
        raise ValueError(f"INPUT: {what} is a feature input, the model reads tokens")
    return model.config.num_features


def _vocab(model, meta, what):
    from .data.text import Vocab
    if model.config.input != "tokens":
        raise ValueError(f"INPUT: {what} needs a model that reads tokens, the model reads "
                         f"{model.config.num_features} features per step")
    if meta.get("vocab") is None:
        raise ValueError("INPUT: the checkpoint holds no vocabulary; cannot encode a text")
    return Vocab.from_json(meta["vocab"])


def _token_input(model, vocab, ids, lengths, info):
    # ids (1, T) int64  lengths (1,) int64
    if ids.max() >= model.config.vocab_size:
        raise ValueError(f"INPUT: token ids reach {int(ids.max())}, the model has "
                         f"{model.config.vocab_size} embeddings")
    info["labels"] = vocab.decode(ids[0, :lengths[0]])
    return ids, lengths, info


def _build_text(model, meta, *, text, source):
    from .data.text import encode_texts, tokenize
    vocab = _vocab(model, meta, "a text")
    if not tokenize(text):
        raise ValueError(f"INPUT: the text {source[:40]!r} holds no words to read")
    tc = meta.get("train_config") or {}
    ids, lengths = encode_texts([text], vocab, tc.get("max_len"), tc.get("truncate", "head"))
    return _token_input(model, vocab, ids, lengths, _info(source))


def _build_copy(model, meta, *, seed, source):
    from .data import synthetic
    vocab = _vocab(model, meta, "a copy-task instance")
    dcfg = meta.get("data_config") or {}
    if dcfg.get("name") != "copy":
        raise ValueError("INPUT: a copy-task instance needs a checkpoint trained on the copy task, "
                         f"this one was trained on {dcfg.get('name')!r}")
    X, y = synthetic.copy_memory(1, dcfg.get("seq_len") or 100, seed=seed)
    ids = np.ascontiguousarray(X + 2)                 # Vocab ids, as load_copy
    info = _info(source)
    info.update(marks=[int(np.argmax(X[0] == X.max()))], target=y[0].tolist())
    return _token_input(model, vocab, ids, np.array([ids.shape[1]], dtype=np.int64), info)


def _build_adding(model, meta, *, seed, T, source):
    from .data import synthetic
    F = _features(model, "an adding-problem instance")
    if F != 2:
        raise ValueError(f"INPUT: adding-problem inputs have 2 features, the model reads {F}")
    if T is None:
        dcfg = meta.get("data_config") or {}
        T = dcfg.get("seq_len") if dcfg.get("name") == "adding" else None
        if not T:
            raise ValueError("INPUT: the checkpoint was not trained on the adding task; "
                             "give the length as 'adding:SEED:T'")
    if T < 2:
        raise ValueError(f"INPUT: the adding problem needs T >= 2, got {T}")
    c = model.config
    units = c.hidden_size * c.num_layers * (2 if c.bidirectional else 1)
    # per step: the input and its float64 draw, and about sixteen float64 values per unit
    # (the gates and states recorded, then the retention curves computed from them)
    check_fits_memory("INPUT", T * (64 + 128 * units),
                      f"{source!r}: {T} steps of gates of {units} units", "give a smaller T")
    X, y = synthetic.adding_problem(1, T, seed=seed)
    info = _info(source)
    info.update(marks=np.nonzero(X[0, :, 1])[0].tolist(), target=y[0].tolist())
    return X.astype(model.dtype), np.array([T], dtype=np.int64), info


def _build_npz(model, meta, *, path, index, source):
    from .data.numeric import read_npz
    from .inference import scaler_from_meta
    F = _features(model, "a row of an .npz file")
    scaler = scaler_from_meta(meta)        # the row is scaled as the training data were
    if scaler is not None:
        F = scaler.num_features
    a = read_npz(path)
    N = a["X"].shape[0]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < N:
        # str(): a command line gives the index as text, and the message quotes what was typed
        raise ValueError(f"INPUT: expected a row index in [0, {N}) after {path}:, "
                         f"got {str(index)!r}")
    if a["X"].shape[2] != F:
        raise ValueError(f"INPUT: {path} has {a['X'].shape[2]} features per step, the model "
                         f"reads {F}")
    n = int(a["lengths"][index])
    X = np.ascontiguousarray(a["X"][index:index + 1, :n]).astype(model.dtype)
    if scaler is not None:
        X = scaler.transform_arrays(X, np.array([n])).astype(model.dtype)
    info = _info(source)
    if (meta.get("data_config") or {}).get("name") == "adding" and F == 2:
        info["marks"] = np.nonzero(X[0, :, 1])[0].tolist()
    info["target"] = np.asarray(a["y"][index]).tolist()
    return X, np.array([n], dtype=np.int64), info


# ---------------------------------------------------------------------------------- checkpoints
def _prediction(model, meta, inputs, lengths):
    out = model.predict_proba(model.forward(inputs, lengths))[0]
    task = model.config.task
    if task == "regress":
        return [float(v) for v in out]
    classes = meta.get("classes") or [str(k) for k in range(model.config.num_outputs)]
    if task == "classify":
        k = int(out.argmax())
        return {"label": str(classes[k]), "probability": float(out[k])}
    return [str(classes[k]) for k in out[:int(lengths[0])].argmax(axis=-1)]


def inspect_checkpoint(path, input_spec, out_dir=".", *, layer=None, units=None, reverse=False,
                       plot=True, device=None):
    """Record the gates of the checkpoint at ``path`` on one input and write
    ``out_dir/gates.npz`` (and ``out_dir/gates.png`` when ``plot``).

    ``input_spec``: a text (token models), or an input builder such as ``adding_input(3)``
    (see the module docstring). ``layer``: 0-based (default the top layer). ``units``:
    heatmap rows, the most retentive units (default all). ``reverse``: the reverse direction
    of a bidirectional model. Returns ``summarize``'s dict plus 'layer', 'reverse', 'input'
    (the builder's info), 'prediction', 'npz' and 'png' (None without a plot).
    """
    from .inference import load_model
    if isinstance(input_spec, str):
        input_spec = text_input(input_spec)
    if not callable(input_spec):
        raise ValueError(f"input_spec: expected a text or an input builder (model, meta) -> "
                         f"(inputs, lengths, info), got {type(input_spec).__name__}")
    model, meta = load_model(path, device)
    if meta.get("ensemble") is not None:
        raise ValueError(f"checkpoint {path}: an ensemble of {len(model)} models, each with its "
                         f"own gates; inspect one member (an ensemble's run folder holds them "
                         f"as member-1/, member-2/, ...)")
    c = model.config
    if layer is None:
        layer = c.num_layers - 1
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
            or not 0 <= layer < c.num_layers:
        raise ValueError(f"layer: expected an integer in [0, {c.num_layers - 1}] (the model has "
                         f"{c.num_layers} layer{'s' if c.num_layers > 1 else ''}), got {layer!r}")
    if units is not None and (isinstance(units, bool) or not isinstance(units, (int, np.integer))
                              or units < 1):
        raise ValueError(f"units: expected an integer >= 1, got {units!r}")
    if reverse and not c.bidirectional:
        raise ValueError("reverse: the model is not bidirectional; it has no reverse direction")
    if plot:
        from .gates_plot import plot_gates, pyplot
        pyplot()                                    # fail before any work
    inputs, lengths, info = input_spec(model, meta)
    gates = record_gates(model, inputs, lengths)
    n = int(lengths[0])
    key = f"l{layer}" + ("_reverse" if reverse else "")
    g = {k: np.ascontiguousarray(v[0, :n]) for k, v in gates[key].items()}
    s = summarize(g, reverse=reverse)
    s.update(layer=int(layer), reverse=bool(reverse), input=info,
             prediction=_prediction(model, meta, inputs, lengths))
    os.makedirs(out_dir, exist_ok=True)
    extra = {"keep": keep_gate(g), "retention": s["retention"],
             "retention_mean": s["retention_mean"], "retaining": s["retaining"],
             "horizon_units": s["horizon_units"],
             "unit_order": s["order"], "marks": np.asarray(info["marks"], dtype=np.int64),
             "inputs": inputs[0, :n], "cell": np.array(s["cell"]), "layer": np.array(layer),
             "reverse": np.array(bool(reverse))}
    if info["labels"] is not None:
        extra["tokens"] = np.array(info["labels"], dtype=str)
    s["npz"] = os.path.join(out_dir, "gates.npz")
    np.savez(s["npz"], **g, **extra)
    s["png"] = None
    if plot:
        feats = inputs[0, :n] if inputs.ndim == 3 else None
        title = (f"{os.path.basename(os.fspath(path))}: {s['cell']} layer {layer}"
                 f"{' (reverse)' if reverse else ''}, {s['units']} units, input {info['source'][:50]!r}")
        s["png"] = plot_gates(g, os.path.join(out_dir, "gates.png"), marks=info["marks"],
                              labels=info["labels"], units=units, reverse=reverse, inputs=feats,
                              title=title)
    return s
