"""Gate maths: record a recurrent stack's gates on one input, memory-retention curves.

    from gruengine.gates import record_gates, keep_gate, retention_curve
    gates = record_gates(model, inputs, lengths)     # {"l0": {"r","z","n","h": (B,T,H)}, ...}
    keep = keep_gate(gates["l0"])                    # (B,T,H) the factor on the carried state
    R = retention_curve(keep[0, :L])                 # (L,H): share of h_t left at the last step

The *keep gate* is what multiplies the carried state in the cell's update: z for the GRU
(h_t = (1 - z) n + z h_{t-1}), the forget gate f for the LSTM (c_t = f c_{t-1} + i g) and
1 - z for minGRU (h_t = (1 - z) h_{t-1} + z h~). Its product over the later steps,
R_t = prod_{s=t+1..L-1} keep_s, is how much of what the cell held at step t still survives,
unchanged by later writes, at the last step (for a reverse direction: at the first step).

The picture is ``gruengine.gates_plot.plot_gates`` (needs matplotlib); a whole checkpoint on
one input is ``gruengine.inspection.inspect_checkpoint`` (what ``gruengine inspect`` runs).
"""
import numpy as np

from ._checks import check_array, check_lengths

__all__ = ["record_gates", "keep_gate", "retention_curve", "retention_horizon", "summarize",
           "cell_of"]

# the name of the keep gate per cell, as summaries print it
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
            if "frontend" in mods:                                    # (B, T', C): the cell's input
                x, lengths = mods["frontend"].forward(x, lengths)
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
