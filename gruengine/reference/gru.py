"""Plain NumPy GRU, one layer, one direction: the executable specification.

Slow and obvious on purpose: one Python loop over steps, whole-batch NumPy inside it.
Gate order r, z, n (PyTorch). Step s (0..T-1) is active for row b when s < lengths[b];
it reads time index t = s (forward) or t = lengths[b]-1-s (reverse). Inactive rows keep
their state, y is zero at padding, h_n is the state after each row's last active step.

reset_after=True  : n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      (cuDNN, PyTorch)
reset_after=False : n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)      (Cho et al. 2014)
"""
import numpy as np

from .._checks import check_cell_args, check_cell_grads
from ._math import sigmoid, time_index

__all__ = ["gru_forward", "gru_backward", "gru_gates"]


def gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after=True, reverse=False):
    # x: (B, T, I)  h0: (B, H)  W_ih: (3H, I)  W_hh: (3H, H)  b_ih, b_hh: (3H,)  lengths: (B,)
    # -> y: (B, T, H), h_n: (B, H), cache
    lengths = check_cell_args("gru", x, (h0,), (W_ih, W_hh, b_ih, b_hh), lengths)[0]
    B, T, _ = x.shape
    H = h0.shape[1]
    rows = np.arange(B)
    y = np.zeros((B, T, H), dtype=x.dtype)
    h = h0.copy()
    steps = []  # per step: dict of what backward needs
    for s in range(T):
        active = s < lengths                      # (B,)
        t = time_index(s, lengths, reverse)      # (B,)
        x_t = x[rows, t]                          # (B, I)
        gx = x_t @ W_ih.T + b_ih                  # (B, 3H)
        if reset_after:
            gh = h @ W_hh.T + b_hh                # (B, 3H)
            r = sigmoid(gx[:, :H] + gh[:, :H])
            z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            hn = gh[:, 2 * H:]                    # W_hn h + b_hn
            n = np.tanh(gx[:, 2 * H:] + r * hn)
        else:
            gh = h @ W_hh[:2 * H].T + b_hh[:2 * H]
            r = sigmoid(gx[:, :H] + gh[:, :H])
            z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            hn = (r * h) @ W_hh[2 * H:].T + b_hh[2 * H:]   # W_hn (r h) + b_hn
            n = np.tanh(gx[:, 2 * H:] + hn)
        h_new = (1.0 - z) * n + z * h
        steps.append(dict(active=active, t=t, h_prev=h, r=r, z=z, n=n, hn=hn))
        h = np.where(active[:, None], h_new, h).astype(x.dtype)
        y[rows[active], t[active]] = h[active]
    return y, h, {"steps": steps, "y": y}


def gru_backward(dy, dh_n, x, h0, W_ih, W_hh, b_ih, b_hh, lengths, cache,
                 reset_after=True, reverse=False):
    # dy: (B, T, H)  dh_n: (B, H)  (other arguments as in gru_forward, cache from it)
    # -> dx (B, T, I), dh0 (B, H), dW_ih (3H, I), dW_hh (3H, H), db_ih (3H,), db_hh (3H,)
    lengths, dt, shape = check_cell_args("gru", x, (h0,), (W_ih, W_hh, b_ih, b_hh), lengths)
    check_cell_grads("gru", dy, (dh_n,), shape, dt)
    B, T, I = x.shape
    H = h0.shape[1]
    rows = np.arange(B)
    dx = np.zeros_like(x)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db_ih = np.zeros_like(b_ih)
    db_hh = np.zeros_like(b_hh)
    dh = dh_n.copy()
    for s in range(T - 1, -1, -1):
        c = cache["steps"][s]
        active, t = c["active"], c["t"]
        m = active[:, None].astype(x.dtype)       # (B, 1): inactive rows pass dh through
        h_prev, r, z, n, hn = c["h_prev"], c["r"], c["z"], c["n"], c["hn"]
        g = dh + m * dy[rows, t]                  # dL/dh_t
        dn = g * (1.0 - z) * m
        dz = g * (h_prev - n) * m
        da_n = dn * (1.0 - n * n)
        da_z = dz * z * (1.0 - z)
        if reset_after:
            dr = da_n * hn
            da_r = dr * r * (1.0 - r)
            dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)     # (B, 3H)
            dW_hh += dgh.T @ h_prev
            db_hh += dgh.sum(axis=0)
            dh_prev = g * (1.0 - m) + g * z * m + dgh @ W_hh
        else:
            d_rh = da_n @ W_hh[2 * H:]                               # (B, H)
            dr = d_rh * h_prev
            da_r = dr * r * (1.0 - r)
            dgh_rz = np.concatenate([da_r, da_z], axis=1)            # (B, 2H)
            dW_hh[:2 * H] += dgh_rz.T @ h_prev
            dW_hh[2 * H:] += da_n.T @ (r * h_prev)
            db_hh += np.concatenate([da_r, da_z, da_n], axis=1).sum(axis=0)
            dh_prev = g * (1.0 - m) + g * z * m + dgh_rz @ W_hh[:2 * H] + d_rh * r
        dgx = np.concatenate([da_r, da_z, da_n], axis=1)             # (B, 3H), zero where inactive
        x_t = x[rows, t] * m
        dW_ih += dgx.T @ x_t
        db_ih += dgx.sum(axis=0)
        dx_t = dgx @ W_ih
        dx[rows[active], t[active]] = dx_t[active]
        dh = dh_prev.astype(x.dtype)
    return dx, dh, dW_ih, dW_hh, db_ih, db_hh


def gru_gates(cache):
    """Per-time values kept by ``gru_forward``: dict of "r", "z", "n" (the gates) and "h"
    (the hidden state), each (B,T,H), zero past each row's length."""
    y = cache["y"]
    rows = np.arange(y.shape[0])
    out = {k: np.zeros_like(y) for k in "rzn"}
    for st in cache["steps"]:
        a = st["active"]
        for k in "rzn":
            out[k][rows[a], st["t"][a]] = st[k][a]
    out["h"] = y.copy()
    return out
