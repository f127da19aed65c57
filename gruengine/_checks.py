"""Input validation shared by every public entry point.

Each check raises ``ValueError`` whose one-line message names the argument, what was
expected and what was received. Nothing is broadcast or cast silently.
"""
import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def check_dtype(name, dtype):
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"{name}: expected dtype float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {dt}")
    return dt


def check_array(name, a, shape, dtype=None, finite=True):
    """Check that ``a`` is an ndarray of the given shape (None = any size on that axis).

    ``shape`` is a tuple whose entries are ints or None; its length fixes the rank.
    ``dtype``, when given, must match exactly (no casting). ``finite`` rejects NaN/Inf.
    Returns ``a`` unchanged.
    """
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.ndim != len(shape):
        raise ValueError(f"{name}: expected {len(shape)}-D array of shape {_fmt(shape)}, "
                         f"got {a.ndim}-D array of shape {a.shape}")
    for want, got in zip(shape, a.shape):
        if want is not None and want != got:
            raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {a.shape}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if finite and a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "Inf"
        raise ValueError(f"{name}: contains {bad} values; inputs must be finite")
    return a


def check_lengths(name, lengths, batch, steps):
    """Validate per-sequence lengths: integers in [1, steps], one per batch row.

    Returns an int64 array (a copy only when the input is another integer dtype).
    ``None`` means every sequence is ``steps`` long.
    """
    if lengths is None:
        return np.full(batch, steps, dtype=np.int64)
    lengths = np.asarray(lengths) if not isinstance(lengths, np.ndarray) else lengths
    if lengths.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array, got dtype {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},), got {lengths.shape}")
    if batch and lengths.min() < 1:
        raise ValueError(f"{name}: every length must be >= 1, got {int(lengths.min())}")
    if batch and lengths.max() > steps:
        raise ValueError(f"{name}: every length must be <= T={steps}, got {int(lengths.max())}")
    return lengths.astype(np.int64, copy=False)


def _gated(gates):
    # GRU (3 gates) and LSTM (4): stacked input and recurrent weights and biases
    return lambda I, H: (("W_ih", (gates * H, I)), ("W_hh", (gates * H, H)),
                         ("b_ih", (gates * H,)), ("b_hh", (gates * H,)))


# per cell: (state, final-state gradient) names, and the weights' (name, shape) from (I, H),
# both in the order of the cell's op arguments
CELL_ARGS = {
    "gru": ((("h0", "dh_n"),), _gated(3)),
    "lstm": ((("h0", "dh_n"), ("c0", "dc_n")), _gated(4)),
    "mingru": ((("h0", "dh_n"),),
               lambda I, H: (("W_z", (H, I)), ("W_h", (H, I)), ("b_z", (H,)), ("b_h", (H,)))),
}


def _check_shape(name, a, shape, dtype=None):
    # the op-level check: shape and dtype; no NaN scan (the modules check their inputs)
    return check_array(name, a, shape, dtype, finite=False)


def check_cell_args(cell, x, states, weights, lengths, check=_check_shape,
                    to_lengths=check_lengths):
    """Check the inputs of one layer, one direction of ``cell`` ('gru', 'lstm', 'mingru').

    ``states`` (h0[, c0]) and ``weights`` in the op's argument order: x (B, T, I) float32 or
    float64, every state (B, H) (H from h0), the weights as ``CELL_ARGS`` says, all of x's
    dtype. ``check(name, a, shape, dtype)`` checks one array (the CUDA launchers pass one that
    also takes device arrays), ``to_lengths(name, lengths, B, T)`` the lengths.
    Returns (lengths as ``to_lengths`` returns them, dtype, (B, T, I, H)).
    """
    state_names, weight_shapes = CELL_ARGS[cell]
    check("x", x, (None, None, None))
    dt = check_dtype("x", x.dtype)
    B, T, I = x.shape
    (h_name, _), *more = state_names
    check(h_name, states[0], (B, None), dt)
    H = states[0].shape[1]
    for (name, _), a in zip(more, states[1:]):
        check(name, a, (B, H), dt)
    for (name, shape), a in zip(weight_shapes(I, H), weights):
        check(name, a, shape, dt)
    return to_lengths("lengths", lengths, B, T), dt, (B, T, I, H)


def check_cell_grads(cell, dy, dfinals, shape, dtype, check=_check_shape):
    """Check the incoming gradients of ``cell``'s backward op: dy (B, T, H) and the final-state
    gradients (dh_n[, dc_n]) (B, H), all of ``dtype``; ``shape`` is (B, T, I, H)."""
    B, T, _, H = shape
    check("dy", dy, (B, T, H), dtype)
    for (_, name), a in zip(CELL_ARGS[cell][0], dfinals):
        check(name, a, (B, H), dtype)


def check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_state_dict(name, got, expected):
    """``expected`` maps key -> ndarray (the layer's own parameters)."""
    if not isinstance(got, dict):
        raise ValueError(f"{name}: expected a dict of arrays, got {type(got).__name__}")
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise ValueError(f"{name}: keys do not match; missing {missing}, unexpected {extra}")
    for k, ref in expected.items():
        check_array(f"{name}[{k!r}]", got[k], ref.shape, ref.dtype)


def _fmt(shape):
    inner = ", ".join("?" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"
