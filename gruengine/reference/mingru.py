"""minGRU (Feng et al., 2024, "Were RNNs All We Needed?"), one layer, one direction, in NumPy.

    z_t = σ(W_z x_t + b_z)          h̃_t = g(W_h x_t + b_h),  g(k) = k + 0.5 if k >= 0 else σ(k)
    h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t  =  a_t ⊙ h_{t-1} + b_t

The gates read only x_t, so with A_t = Π_{s<=t} a_s the recurrence unrolls to
    h_t = A_t ⊙ h0 + A_t ⊙ Σ_{s<=t} b_s / A_s,
computed in log space: log(A_t Σ b_s/A_s) = logA_t + logcumsumexp_s(log b_s - logA_s), with
log a = -softplus(pre_z), log z = -softplus(-pre_z), log g(k) = log(k+0.5) | -softplus(-k).
b_s > 0 always; h0 may have any sign (zero by default), so its term A_t ⊙ h0 is kept apart in
linear space instead of taking log h0 (the paper feeds g(h0); we keep h0 exact).

Two implementations of the same op live here: ``mingru_forward``/``mingru_backward`` (the log-space
scan over the whole sequence, vectorised over time) and ``mingru_forward_sequential``/
``mingru_backward_sequential`` (a plain loop over time). Tests check they agree.

Lengths follow the GRU contract: step s is active for row b when s < lengths[b] and reads time
t = s (forward) or t = lengths[b]-1-s (reverse); y is zero past the length; h_n is the state
after the row's last active step.
"""
import numpy as np

from .._checks import check_cell_args, check_cell_grads
from ._math import sigmoid

__all__ = ["mingru_forward", "mingru_backward", "mingru_gates",
           "mingru_forward_sequential", "mingru_backward_sequential"]


def _softplus(v):
    return np.logaddexp(0.0, v)


def _g(k):
    return np.where(k >= 0, np.maximum(k, 0) + 0.5, sigmoid(k))


def _log_g(k):
    return np.where(k >= 0, np.log(np.maximum(k, 0) + 0.5), -_softplus(-k))


def _dg(k):
    s = sigmoid(k)
    return np.where(k >= 0, 1.0, s * (1 - s))


def _step_index(lengths, T, reverse):
    """(B, T) time index read at step s (clipped for inactive steps) and the active mask."""
    s = np.arange(T)[None, :]
    active = s < lengths[:, None]
    t = (lengths[:, None] - 1 - s) if reverse else np.broadcast_to(s, active.shape)
    return np.clip(t, 0, T - 1), active


def _projections(x, W_z, W_h, b_z, b_h, lengths, reverse):
    """Pre-activations gathered in step order: pre_z, pre_h (B,T,H), plus t, active, rows."""
    B, T, _ = x.shape
    t, active = _step_index(lengths, T, reverse)
    rows = np.arange(B)[:, None]
    xs = x[rows, t]                                     # (B, T, I) in step order
    return xs @ W_z.T + b_z, xs @ W_h.T + b_h, xs, t, active, rows


def _scatter_time(vals, t, active, rows, T):
    # step order -> time order; zero at padding
    out = np.zeros(vals.shape[:1] + (T,) + vals.shape[2:], dtype=vals.dtype)
    bi = np.broadcast_to(rows, t.shape)
    out[bi[active], t[active]] = vals[active]
    return out


def mingru_forward(x, h0, W_z, W_h, b_z, b_h, lengths, reverse=False):
    """minGRU forward as a log-space scan over the whole sequence.

    x (B,T,I)  h0 (B,H)  W_z, W_h (H,I)  b_z, b_h (H,)  lengths (B,) int64 in [1,T]
    -> y (B,T,H), h_n (B,H), cache
    """
    lengths = check_cell_args("mingru", x, (h0,), (W_z, W_h, b_z, b_h), lengths)[0]
    dt = x.dtype
    B, T, _ = x.shape
    pre_z, pre_h, xs, t, active, rows = _projections(x, W_z, W_h, b_z, b_h, lengths, reverse)
    m = active[:, :, None]
    log_a = np.where(m, -_softplus(pre_z), 0.0)                  # inactive: a = 1 (carry)
    log_b = np.where(m, -_softplus(-pre_z) + _log_g(pre_h), -np.inf)
    log_A = np.cumsum(log_a, axis=1)
    with np.errstate(invalid="ignore"):                          # -inf - finite is fine
        L = np.logaddexp.accumulate(log_b - log_A, axis=1)
    A = np.exp(log_A)
    h = (A * h0[:, None, :] + np.exp(log_A + L)).astype(dt)     # (B, T, H) step order
    y = _scatter_time(h, t, active, rows, T)
    h_n = h[np.arange(B), lengths - 1]
    z = sigmoid(pre_z).astype(dt)
    cache = {"pre_z": pre_z, "pre_h": pre_h, "xs": xs, "t": t, "active": active, "h": h,
             "log_A": log_A, "z": z, "y": y}
    return y, h_n, cache


def _rev_logcumsumexp(v):
    # log Σ_{r >= s} exp(v_r) along axis 1
    return np.logaddexp.accumulate(v[:, ::-1], axis=1)[:, ::-1]


def _mingru_backward_log(dy, dh_n, x, h0, W_z, W_h, b_z, b_h, lengths, cache, reverse):
    """minGRU backward with the adjoint recurrence also solved as a log-space scan.

    dh_s = dy_s + a_{s+1} dh_{s+1} unrolls to dh_s = Σ_{r>=s} (A_r/A_s) gin_r, with gin the
    incoming gradient (dy, plus dh_n at the last valid step). gin has either sign, so it is
    split into its positive and negative parts, each summed by a reverse log-cumsum-exp.
    -> dx (B,T,I), dW_z, dW_h, db_z, db_h, dh0
    """
    dt = x.dtype
    B, T, _ = x.shape
    pre_z, pre_h, xs, t, active, h, log_A, z = (
        cache[k] for k in ("pre_z", "pre_h", "xs", "t", "active", "h", "log_A", "z"))
    rows = np.arange(B)[:, None]
    m = active[:, :, None]
    gin = np.where(m, dy[rows, t], 0.0)
    gin[np.arange(B), lengths - 1] += dh_n
    with np.errstate(divide="ignore"):
        log_pos = np.log(np.maximum(gin, 0.0))
        log_neg = np.log(np.maximum(-gin, 0.0))
    with np.errstate(invalid="ignore"):
        P = _rev_logcumsumexp(log_A + log_pos)
        N = _rev_logcumsumexp(log_A + log_neg)
    dh = np.exp(P - log_A) - np.exp(N - log_A)                   # (B, T, H) adjoint of h_s
    dh = np.where(m, dh, 0.0)
    h_prev = np.concatenate([h0[:, None, :], h[:, :-1]], axis=1)
    h_tilde = _g(pre_h)
    d_pre_z = dh * (h_tilde - h_prev) * z * (1 - z)
    d_pre_h = dh * z * _dg(pre_h)
    dh0 = (dh[:, 0] * (1 - z[:, 0])).astype(dt)
    return _input_grads(d_pre_z.astype(dt), d_pre_h.astype(dt), xs, W_z, W_h, t, active,
                        rows, T) + (dh0,)


def _input_grads(d_pre_z, d_pre_h, xs, W_z, W_h, t, active, rows, T):
    """dx (time order), dW_z, dW_h, db_z, db_h from step-order pre-activation gradients."""
    B, _, I = xs.shape
    H = W_z.shape[0]
    dxs = d_pre_z @ W_z + d_pre_h @ W_h
    dx = _scatter_time(dxs, t, active, rows, T)
    dz2, dh2, xs2 = d_pre_z.reshape(-1, H), d_pre_h.reshape(-1, H), xs.reshape(-1, I)
    return dx, dz2.T @ xs2, dh2.T @ xs2, dz2.sum(0), dh2.sum(0)


def _reorder(grads):
    # (dx, dW_z, dW_h, db_z, db_h, dh0) -> contract order (dx, dh0, dW_z, dW_h, db_z, db_h)
    dx, dW_z, dW_h, db_z, db_h, dh0 = grads
    return dx, dh0, dW_z, dW_h, db_z, db_h


def mingru_backward(dy, dh_n, x, h0, W_z, W_h, b_z, b_h, lengths, cache, reverse=False):
    """minGRU backward; the adjoint recurrence is solved as a log-space scan too.

    dy (B,T,H)  dh_n (B,H) ; the rest as in ``mingru_forward``, cache from it
    -> dx (B,T,I), dh0 (B,H), dW_z (H,I), dW_h (H,I), db_z (H,), db_h (H,)
    """
    lengths, dt, shape = check_cell_args("mingru", x, (h0,), (W_z, W_h, b_z, b_h), lengths)
    check_cell_grads("mingru", dy, (dh_n,), shape, dt)
    if "log_A" not in cache:
        raise ValueError("cache: expected the cache of mingru_forward (log-space scan)")
    return _reorder(_mingru_backward_log(dy, dh_n, x, h0, W_z, W_h, b_z, b_h, lengths, cache,
                                         reverse))


def mingru_forward_sequential(x, h0, W_z, W_h, b_z, b_h, lengths, reverse=False):
    """The same op as ``mingru_forward``, as a plain loop over time (no log space)."""
    lengths = check_cell_args("mingru", x, (h0,), (W_z, W_h, b_z, b_h), lengths)[0]
    B, T, _ = x.shape
    pre_z, pre_h, xs, t, active, rows = _projections(x, W_z, W_h, b_z, b_h, lengths, reverse)
    z, h_tilde = sigmoid(pre_z), _g(pre_h)
    hs = np.zeros_like(pre_z)
    h = h0.copy()
    for s in range(T):
        m = active[:, s, None]
        h = np.where(m, (1 - z[:, s]) * h + z[:, s] * h_tilde[:, s], h)
        hs[:, s] = h
    hs = np.where(active[:, :, None], hs, 0.0).astype(x.dtype)
    y = _scatter_time(hs, t, active, rows, T)
    cache = {"pre_z": pre_z, "pre_h": pre_h, "xs": xs, "t": t, "active": active, "h": hs,
             "z": z.astype(x.dtype), "y": y}
    return y, h, cache


def mingru_backward_sequential(dy, dh_n, x, h0, W_z, W_h, b_z, b_h, lengths, cache,
                               reverse=False):
    """The same gradients as ``mingru_backward``, from a plain reverse loop over time."""
    lengths, dt, shape = check_cell_args("mingru", x, (h0,), (W_z, W_h, b_z, b_h), lengths)
    check_cell_grads("mingru", dy, (dh_n,), shape, dt)
    B, T, _ = x.shape
    pre_z, pre_h, xs, t, active, h = (cache[k] for k in ("pre_z", "pre_h", "xs", "t",
                                                          "active", "h"))
    rows = np.arange(B)[:, None]
    z, h_tilde, dgk = sigmoid(pre_z), _g(pre_h), _dg(pre_h)
    d_pre_z = np.zeros_like(pre_z)
    d_pre_h = np.zeros_like(pre_h)
    dh = dh_n.copy()
    for s in range(T - 1, -1, -1):
        m = active[:, s, None]
        dh_s = dh + np.where(m, dy[rows[:, 0], t[:, s]], 0.0)
        h_prev = h0 if s == 0 else h[:, s - 1]
        d_pre_z[:, s] = np.where(m, dh_s * (h_tilde[:, s] - h_prev) * z[:, s] * (1 - z[:, s]), 0)
        d_pre_h[:, s] = np.where(m, dh_s * z[:, s] * dgk[:, s], 0)
        dh = np.where(m, dh_s * (1 - z[:, s]), dh)
    dx, dW_z, dW_h, db_z, db_h = _input_grads(d_pre_z, d_pre_h, xs, W_z, W_h, t, active, rows, T)
    return dx, dh.astype(x.dtype), dW_z, dW_h, db_z, db_h


def mingru_gates(cache):
    """Per-time values kept by the forward: dict of "z" (update gate), "h" (hidden state) and
    "h_tilde" (candidate g(W_h x + b_h)), each (B,T,H), zero past each length."""
    t, active = cache["t"], cache["active"]
    rows = np.arange(t.shape[0])[:, None]
    T = t.shape[1]
    z = np.where(active[:, :, None], cache["z"], 0).astype(cache["y"].dtype)
    ht = np.where(active[:, :, None], _g(cache["pre_h"]), 0).astype(cache["y"].dtype)
    return {"z": _scatter_time(z, t, active, rows, T), "h": cache["y"].copy(),
            "h_tilde": _scatter_time(ht, t, active, rows, T)}
