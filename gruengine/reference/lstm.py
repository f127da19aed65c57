"""LSTM, one layer, one direction: plain NumPy forward and backward (the executable spec).

Gate order i, f, g, o (PyTorch), stacked on the first axis of ``W_ih`` (4H, I) and ``W_hh`` (4H, H):

    i = σ(W_ii x + b_ii + W_hi h + b_hi)      f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f ⊙ c + i ⊙ g                          h' = o ⊙ tanh(c')

Lengths follow the GRU contract (docs/architecture.md): step s is active for row b when
s < lengths[b] and reads time index t = s (forward) or t = lengths[b]-1-s (reverse); y is zero
for t >= lengths[b]; h_n, c_n are the state after the row's last active step.
"""
import numpy as np

from .._checks import check_cell_args, check_cell_grads
from ._math import sigmoid, time_index

__all__ = ["lstm_forward", "lstm_backward", "lstm_gates"]


def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse=False):
    """Run one LSTM direction over a batch of padded sequences.

    x (B,T,I)  h0, c0 (B,H)  W_ih (4H,I)  W_hh (4H,H)  b_ih, b_hh (4H,)  lengths (B,) int64 in [1,T]
    -> y (B,T,H), h_n (B,H), c_n (B,H), cache
    """
    lengths = check_cell_args("lstm", x, (h0, c0), (W_ih, W_hh, b_ih, b_hh), lengths)[0]
    B, T, _ = x.shape
    H = h0.shape[1]
    rows = np.arange(B)
    y = np.zeros((B, T, H), dtype=x.dtype)
    gates = np.zeros((B, T, 4 * H), dtype=x.dtype)   # activated i, f, g, o at time t
    cseq = np.zeros((B, T, H), dtype=x.dtype)        # c_t at time t
    h, c = h0.copy(), c0.copy()
    steps = []
    for s in range(T):
        active = s < lengths
        t = time_index(s, lengths, reverse)
        xt = x[rows, t]                                          # (B, I)
        a = xt @ W_ih.T + b_ih + h @ W_hh.T + b_hh               # (B, 4H)
        i = sigmoid(a[:, :H])
        f = sigmoid(a[:, H:2 * H])
        g = np.tanh(a[:, 2 * H:3 * H])
        o = sigmoid(a[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        steps.append((t, active, xt, h, c, i, f, g, o, c_new))
        ra, ta = rows[active], t[active]
        y[ra, ta] = h_new[active]
        cseq[ra, ta] = c_new[active]
        gates[ra, ta] = np.concatenate([i, f, g, o], axis=1)[active]
        m = active[:, None]
        h = np.where(m, h_new, h)
        c = np.where(m, c_new, c)
    cache = {"steps": steps, "gates": gates, "c": cseq, "h": y}
    return y, h, c, cache


def lstm_backward(dy, dh_n, dc_n, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, cache,
                  reverse=False):
    """Gradients of one LSTM direction (backpropagation through time).

    dy (B,T,H)  dh_n, dc_n (B,H) ; the rest as in ``lstm_forward``, cache from it
    -> dx (B,T,I), dh0 (B,H), dc0 (B,H), dW_ih (4H,I), dW_hh (4H,H), db_ih (4H,), db_hh (4H,)
    """
    lengths, dt, shape = check_cell_args("lstm", x, (h0, c0), (W_ih, W_hh, b_ih, b_hh), lengths)
    check_cell_grads("lstm", dy, (dh_n, dc_n), shape, dt)
    B, T, _ = x.shape
    rows = np.arange(B)
    dx = np.zeros_like(x)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db = np.zeros_like(b_ih)
    dh, dc = dh_n.copy(), dc_n.copy()
    for s in range(T - 1, -1, -1):
        t, active, xt, h_prev, c_prev, i, f, g, o, c_new = cache["steps"][s]
        m = active[:, None]
        dh_t = dh + np.where(m, dy[rows, t], 0)
        tc = np.tanh(c_new)
        do = dh_t * tc
        dc_t = dc + dh_t * o * (1 - tc * tc)
        di, df, dg = dc_t * g, dc_t * c_prev, dc_t * i
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g),
                             do * o * (1 - o)], axis=1)
        da = np.where(m, da, 0)                                  # (B, 4H)
        dW_ih += da.T @ xt
        dW_hh += da.T @ h_prev
        db += da.sum(axis=0)
        dxt = da @ W_ih
        dx[rows[active], t[active]] += dxt[active]
        dh = np.where(m, da @ W_hh, dh)
        dc = np.where(m, dc_t * f, dc)
    return dx, dh, dc, dW_ih, dW_hh, db, db.copy()


def lstm_gates(cache):
    """Per-time activations kept by ``lstm_forward``: dict of "i","f","g","o","c","h" (B,T,H).

    Zero past each row's length.
    """
    gates = cache["gates"]
    H = gates.shape[2] // 4
    out = {k: np.ascontiguousarray(gates[:, :, n * H:(n + 1) * H]) for n, k in enumerate("ifgo")}
    out["c"] = cache["c"].copy()
    out["h"] = cache["h"].copy()
    return out
