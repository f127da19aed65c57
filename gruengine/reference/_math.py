"""Elementwise helpers of the reference cells (GRU, LSTM, minGRU)."""
import numpy as np


def sigmoid(a):
    """Logistic sigmoid in a's dtype; exp of a non-positive argument only, so no overflow
    (and no RuntimeWarning) for large |a|."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


def time_index(s, lengths, reverse):
    """(B,) time index every row reads at step s: s, or lengths-1-s in reverse; clipped to 0
    for rows already finished (only meaningful where s < lengths)."""
    t = lengths - 1 - s if reverse else np.full_like(lengths, s)
    return np.clip(t, 0, None)
