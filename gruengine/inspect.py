"""Gate inspection: record a recurrent stack's gates on one input, memory-retention curves, plots.

    from gruengine.inspect import record_gates, keep_gate, retention_curve, plot_gates
    gates = record_gates(model, inputs, lengths)     # {"l0": {"r","z","n","h": (B,T,H)}, ...}
    keep = keep_gate(gates["l0"])                    # (B,T,H) the factor on the carried state
    R = retention_curve(keep[0, :L])                 # (L,H): share of h_t left at the last step

The *keep gate* is what multiplies the carried state in the cell's update: z for the GRU
(h_t = (1 - z) n + z h_{t-1}), the forget gate f for the LSTM (c_t = f c_{t-1} + i g) and
1 - z for minGRU (h_t = (1 - z) h_{t-1} + z h~). Its product over the later steps,
R_t = prod_{s=t+1..L-1} keep_s, is how much of what the cell held at step t still survives,
unchanged by later writes, at the last step (for a reverse direction: at the first step).

``inspect_checkpoint`` does what ``gruengine inspect`` does: load a checkpoint, build one
input from a text, ``adding:SEED``, ``copy:SEED`` or ``FILE.npz:INDEX``, record the gates,
write ``gates.npz`` and ``gates.png`` and return a summary.
"""
import math
import os

import numpy as np

from ._checks import check_array, check_lengths
from .errors import GruengineError

__all__ = ["record_gates", "keep_gate", "retention_curve", "retention_horizon", "summarize",
           "plot_gates", "parse_input", "inspect_checkpoint", "cell_of", "PANELS"]

# gates drawn as heatmaps per cell, (key, title); the keep gate first
PANELS = {
    "gru": (("z", "update gate z (1 = keep h)"), ("r", "reset gate r"), ("h", "hidden state h")),
    "lstm": (("f", "forget gate f (1 = keep c)"), ("i", "input gate i"), ("c", "cell state c"),
             ("h", "hidden state h")),
    "mingru": (("z", "update gate z (0 = keep h)"), ("h_tilde", "candidate h~"),
               ("h", "hidden state h")),
}
KEEP_NAME = {"gru": "z", "lstm": "f", "mingru": "1 - z"}


def cell_of(layer_gates):
    """'gru', 'lstm' or 'mingru' from the keys of one layer's gate dict."""
    keys = set(layer_gates)
    if {"r", "z", "n", "h"} <= keys:
        return "gru"
    if {"i", "f", "g", "o", "c", "h"} <= keys:
        return "lstm"
    if {"z", "h", "h_tilde"} <= keys:
        return "mingru"
    raise ValueError(f"gates: expected the gates of a GRU (r, z, n, h), an LSTM (i, f, g, o, c, h) "
                     f"or a minGRU (z, h, h_tilde), got keys {sorted(keys)}")


def record_gates(model, inputs, lengths=None):
    """Run ``model``'s recurrent stack on ``inputs`` in eval mode and return its gates.

    ``model`` is a ``SequenceModel`` (inputs: (B, T) int64 ids or (B, T, F) features, fed
    through its embedding / input projection) or a bare ``GRU`` / ``LSTM`` / ``MinGRU``
    (inputs: (B, T, I)). Returns {"l{k}[_reverse]": {gate: (B, T, H)}} as the layer's
    ``forward(..., return_gates=True)``: GRU "r", "z", "n", "h"; LSTM "i", "f", "g", "o",
    "c", "h"; minGRU "z", "h_tilde", "h"; zero past each row's length. Dropout is off; the
    model's training/eval mode is restored afterwards. Like any forward, it replaces what a
    following ``backward`` would differentiate.
    """
    mods = getattr(model, "modules", None)
    rnn = mods["rnn"] if isinstance(mods, dict) and "rnn" in mods else model
    rnn = getattr(rnn, "inner", rnn)          # the LSTM behind SequenceModel's adapter
    if not hasattr(rnn, "forward") or not hasattr(rnn, "train"):
        raise ValueError(f"model: expected a SequenceModel, GRU, LSTM or MinGRU, "
                         f"got {type(model).__name__}")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        if rnn is model:
            check_array("inputs", inputs, (None, None, rnn.input_size), rnn.dtype)
            lengths = check_lengths("lengths", lengths, *inputs.shape[:2])
            x = inputs
        else:
            lengths = model.check_inputs(inputs, lengths)
            if model.config.input == "tokens":
                x = mods["embedding"].forward(inputs)                 # (B, T, E)
            elif "input_proj" in mods:
                x = mods["input_proj"].forward(inputs)                # (B, T, P)
            else:
                x = inputs                                            # (B, T, F)
        out = rnn.forward(np.ascontiguousarray(x), None, lengths=lengths, return_gates=True)
    finally:
        if was_training:
            model.train()
    return out[2]


def keep_gate(layer_gates):
    """(B, T, H) or (T, H): the factor on the carried state -- z (GRU), f (LSTM), 1 - z (minGRU).

    For minGRU the result is 1 at padding (where z is 0); ``retention_curve`` with
    ``lengths`` ignores padding either way.
    """
    cell = cell_of(layer_gates)
    if cell == "gru":
        return layer_gates["z"]
    if cell == "lstm":
        return layer_gates["f"]
    return 1 - layer_gates["z"]


def retention_curve(z, lengths=None, reverse=False):
    """Products of keep gates: how much of the state at each step survives to the end.

    z : (T, H) one sequence, or (B, T, H) with optional ``lengths`` (B,); values in [0, 1]
        (GRU: z; LSTM: f; minGRU: 1 - z; see ``keep_gate``).
    Returns float64 of z's shape: R[t] = prod_{s=t+1..L-1} z[s] (R[L-1] = 1), or with
    ``reverse=True`` (a reverse direction, whose last step is t = 0) R[t] = prod_{s<t} z[s].
    Zero at padding (t >= L).
    """
    if not isinstance(z, np.ndarray) or z.ndim not in (2, 3):
        raise ValueError(f"z: expected a 2-D (T, H) or 3-D (B, T, H) array, got "
                         f"{getattr(z, 'ndim', type(z).__name__)}"
                         f"{'-D array' if isinstance(z, np.ndarray) else ''}")
    check_array("z", z, (None,) * z.ndim)
    if z.dtype.kind != "f":
        raise ValueError(f"z: expected a float array, got dtype {z.dtype}")
    if z.size and (z.min() < 0 or z.max() > 1):
        raise ValueError(f"z: expected gate values in [0, 1], got range "
                         f"[{float(z.min()):.4g}, {float(z.max()):.4g}]")
    z3 = z[None] if z.ndim == 2 else z                                   # (B, T, H)
    B, T, _ = z3.shape
    if lengths is not None and z.ndim == 2:
        raise ValueError("lengths: only with a 3-D (B, T, H) z; slice one sequence to its length")
    lengths = check_lengths("lengths", lengths, B, T)
    valid = (np.arange(T)[None, :] < lengths[:, None])[:, :, None]      # (B, T, 1)
    k = np.where(valid, z3.astype(np.float64), 1.0)                     # padding keeps all
    R = np.ones_like(k)
    if reverse:
        R[:, 1:] = np.cumprod(k, axis=1)[:, :-1]                        # prod_{s<t}
    else:
        R[:, :-1] = np.cumprod(k[:, ::-1], axis=1)[:, ::-1][:, 1:]      # prod_{s>t}
    R = np.where(valid, R, 0.0)
    return R[0] if z.ndim == 2 else R


def retention_horizon(R, threshold=0.5, reverse=False):
    """Steps back from the end (the start, for ``reverse``) before retention drops below
    ``threshold``: R (L,) -> int, or R (L, H) -> (H,) ints; L when it never does."""
    R = np.asarray(R)
    below = R < threshold
    if not reverse:
        below = below[::-1]
    first = np.argmax(below, axis=0)
    return np.where(below.any(axis=0), first, R.shape[0])


def summarize(layer_gates, reverse=False, top=5, threshold=0.5):
    """Numbers that sum up one sequence's gates (each (L, H), trimmed to its length).

    Returns {'cell', 'keep_name', 'length', 'units', 'retention' (L, H), 'retention_mean' (L,),
    'retaining' (L,) the share of units whose retention is >= ``threshold``,
    'horizon' (of the mean curve), 'horizon_units' (H,), 'order' (units, most retentive
    first), 'drops' [(t, change of the mean keep gate from t-1 to t)] for the ``top`` largest
    drops, i.e. where the cell writes the most}.
    """
    cell = cell_of(layer_gates)
    keep = keep_gate(layer_gates).astype(np.float64)                    # (L, H)
    L, H = keep.shape
    R = retention_curve(keep, reverse=reverse)
    Rm = R.mean(axis=1)
    order = np.argsort(-R.sum(axis=0), kind="stable")
    mean_keep = keep.mean(axis=1)
    step = np.diff(mean_keep[::-1] if reverse else mean_keep)           # (L-1,)
    idx = np.argsort(step, kind="stable")[:top]
    drops = [(int(L - 2 - i if reverse else i + 1), float(step[i])) for i in idx if step[i] < 0]
    return {"cell": cell, "keep_name": KEEP_NAME[cell], "length": L, "units": H,
            "retention": R, "retention_mean": Rm,
            "retaining": (R >= threshold).mean(axis=1),
            "horizon": int(retention_horizon(Rm, threshold, reverse)),
            "horizon_units": retention_horizon(R, threshold, reverse).astype(np.int64),
            "order": order, "drops": drops, "threshold": threshold}


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GruengineError("plotting needs matplotlib: pip install 'gruengine[plot]' "
                             "(or pass --no-plot)") from None
    return plt


def plot_gates(layer_gates, path, *, marks=(), labels=None, units=None, reverse=False,
               inputs=None, title=None, top=5):
    """Draw heatmaps (time x units) of the gates and the state, and the retention curve.

    layer_gates : {gate: (L, H)} one sequence of one layer/direction (trimmed to its length)
    path        : the PNG to write; returns it
    marks       : time steps to mark with vertical lines (e.g. the adding problem's markers)
    labels      : L strings (tokens) for the time axis: all when L <= 60, else every k-th
    units       : draw only this many units, the most retentive ones (default all)
    inputs      : (L, F) feature inputs drawn above the heatmaps (F <= 4), or None
    Units are ordered most retentive first (top row). Needs matplotlib.
    """
    plt = _pyplot()
    s = summarize(layer_gates, reverse=reverse, top=top)
    L, H, cell = s["length"], s["units"], s["cell"]
    order = s["order"][:units] if units else s["order"]
    panels = PANELS[cell]
    n_in = 1 if inputs is not None and inputs.ndim == 2 and inputs.shape[1] <= 4 else 0
    heights = [1.0] * n_in + [2.2] * len(panels) + [1.6]
    fig, axes = plt.subplots(len(heights), 1, figsize=(11, 1.5 * sum(heights) + 0.6),
                             sharex=True, gridspec_kw={"height_ratios": heights})
    if n_in:
        ax = axes[0]
        for f in range(inputs.shape[1]):
            ax.plot(np.arange(L), inputs[:, f], lw=1, label=f"input {f}")
        ax.legend(loc="upper right", fontsize=7, ncol=inputs.shape[1])
        ax.set_ylabel("input", fontsize=8)
    for ax, (key, name) in zip(axes[n_in:], panels):
        a = np.asarray(layer_gates[key], dtype=np.float64)[:, order].T  # (units, L)
        state = key in ("h", "c", "h_tilde")
        lim = max(float(np.abs(a).max()), 1e-6) if state else 1.0
        im = ax.imshow(a, aspect="auto", origin="upper", interpolation="nearest",
                       cmap="RdBu_r" if state else "viridis",
                       vmin=-lim if state else 0.0, vmax=lim,
                       extent=(-0.5, L - 0.5, len(order) - 0.5, -0.5))
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel("unit (rank)", fontsize=8)
        fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03)
    ax = axes[-1]
    R = s["retention"]
    for u in s["order"][:top]:
        ax.plot(np.arange(L), R[:, u], lw=0.8, alpha=0.7)
    ax.plot(np.arange(L), s["retention_mean"], color="k", lw=2, label="mean over units")
    ax.plot(np.arange(L), s["retaining"], color="k", lw=1.2, ls="--",
            label=f"share of units >= {s['threshold']:g}")
    ax.axhline(s["threshold"], color="gray", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    end = "first" if reverse else "last"
    ax.set_title(f"retention to the {end} step: product of later {s['keep_name']} "
                 f"(thin: the {top} most retentive units); horizon {s['horizon']} steps",
                 fontsize=9, loc="left")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_ylabel("retention", fontsize=8)
    for a in axes:
        for m in marks:
            a.axvline(m, color="red", lw=0.8, ls="--", alpha=0.7)
    if labels is not None:
        k = max(1, math.ceil(L / 60))
        ticks = np.arange(0, L, k)
        ax.set_xticks(ticks)
        ax.set_xticklabels([labels[t] for t in ticks], rotation=90, fontsize=7)
    else:
        ax.set_xlabel("time step t")
    ax.set_xlim(-0.5, L - 0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path



# ---------------------------------------------------------------------------------- checkpoints
def _seed(text, spec):
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise ValueError(f"INPUT: expected a seed (an integer >= 0) in {spec!r}, got {text!r}")
    return v


def parse_input(spec, model, meta, stdin=None):
    """One input sequence for the checkpoint's model, from a command-line string.

    Token models: the text itself, '@FILE' (a text file) or '-' (``stdin``, default
    sys.stdin), encoded with the checkpoint's vocabulary and max_len; a copy-task model also
    takes 'copy:SEED'. Feature models: 'adding:SEED' or 'adding:SEED:T' (one adding-problem
    instance at the checkpoint's T, or at T), or 'FILE.npz:INDEX' (row INDEX of an .npz in
    the layout of ``gruengine.data.numeric``).
    Returns inputs (1, T) int64 or (1, T, F), lengths (1,) int64, and info {'source',
    'labels' (tokens or None), 'marks' (steps to mark), 'target' (or None)}.
    """
    from .data import synthetic
    c, dcfg = model.config, dict(meta.get("data_config") or {})
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"INPUT: expected a non-empty string, got {spec!r}")
    info = {"source": spec, "labels": None, "marks": [], "target": None}
    head, _, rest = spec.partition(":")
    if c.input == "tokens":
        from .data.text import Vocab, encode_texts
        if meta.get("vocab") is None:
            raise ValueError("INPUT: the checkpoint holds no vocabulary; cannot encode a text")
        vocab = Vocab.from_json(meta["vocab"])
        if head == "copy" and dcfg.get("name") == "copy":
            T = dcfg.get("seq_len") or 100
            X, y = synthetic.copy_memory(1, T, seed=_seed(rest, spec))
            ids = np.ascontiguousarray(X + 2)                 # Vocab ids, as load_copy
            info.update(marks=[int(np.argmax(X[0] == X.max()))], target=y[0].tolist())
            lengths = np.array([ids.shape[1]], dtype=np.int64)
        else:
            text = spec
            if spec == "-":
                import sys
                text = (stdin or sys.stdin).read()
            elif spec.startswith("@"):
                with open(spec[1:], encoding="utf-8") as f:
                    text = f.read()
            from .data.text import tokenize
            if not tokenize(text):
                raise ValueError(f"INPUT: the text {spec[:40]!r} holds no words to read")
            tc = meta.get("train_config") or {}
            ids, lengths = encode_texts([text], vocab, tc.get("max_len"), tc.get("truncate", "head"))
        if ids.max() >= c.vocab_size:
            raise ValueError(f"INPUT: token ids reach {int(ids.max())}, the model has "
                             f"{c.vocab_size} embeddings")
        info["labels"] = vocab.decode(ids[0, :lengths[0]])
        return ids, lengths, info
    F = c.num_features
    if head == "adding":
        parts = rest.split(":")
        if len(parts) not in (1, 2):
            raise ValueError(f"INPUT: expected 'adding:SEED' or 'adding:SEED:T', got {spec!r}")
        if F != 2:
            raise ValueError(f"INPUT: adding-problem inputs have 2 features, the model reads {F}")
        seed = _seed(parts[0], spec)
        if len(parts) == 2:
            T = _seed(parts[1], spec)
        else:
            T = dcfg.get("seq_len") if dcfg.get("name") == "adding" else None
            if not T:
                raise ValueError("INPUT: the checkpoint was not trained on the adding task; "
                                 "give the length as 'adding:SEED:T'")
        if T < 2:
            raise ValueError(f"INPUT: the adding problem needs T >= 2, got {T}")
        X, y = synthetic.adding_problem(1, T, seed=seed)
        info.update(marks=np.nonzero(X[0, :, 1])[0].tolist(), target=y[0].tolist())
        return X.astype(model.dtype), np.array([T], dtype=np.int64), info
    path, _, index = spec.rpartition(":")
    if path.lower().endswith(".npz"):
        from .data.numeric import read_npz
        a = read_npz(path)
        N = a["X"].shape[0]
        try:
            i = int(index)
        except ValueError:
            i = None
        if i is None or not 0 <= i < N:
            raise ValueError(f"INPUT: expected a row index in [0, {N}) after {path}:, got {index!r}")
        if a["X"].shape[2] != F:
            raise ValueError(f"INPUT: {path} has {a['X'].shape[2]} features per step, the model "
                             f"reads {F}")
        n = int(a["lengths"][i])
        X = np.ascontiguousarray(a["X"][i:i + 1, :n]).astype(model.dtype)
        if dcfg.get("name") == "adding" and F == 2:
            info["marks"] = np.nonzero(X[0, :, 1])[0].tolist()
        info["target"] = np.asarray(a["y"][i]).tolist()
        return X, np.array([n], dtype=np.int64), info
    raise ValueError(f"INPUT: expected 'adding:SEED', 'adding:SEED:T' or 'FILE.npz:INDEX' for this "
                     f"model of {F} features per step, got {spec[:60]!r}")


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
                       plot=True, stdin=None, device=None):
    """Record the gates of the checkpoint at ``path`` on one input and write
    ``out_dir/gates.npz`` (and ``out_dir/gates.png`` when ``plot``).

    ``input_spec``: see ``parse_input``. ``layer``: 0-based (default the top layer).
    ``units``: heatmap rows, the most retentive units (default all). ``reverse``: the reverse
    direction of a bidirectional model. Returns ``summarize``'s dict plus 'layer', 'reverse',
    'input' (parse_input's info), 'prediction', 'npz' and 'png' (None without a plot).
    """
    from .inference import load_model
    model, meta = load_model(path, device)
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
        _pyplot()                                   # fail before any work
    inputs, lengths, info = parse_input(input_spec, model, meta, stdin=stdin)
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
