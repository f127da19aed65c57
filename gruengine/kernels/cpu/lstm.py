"""LSTM, one layer, one direction, on the CPU: the GRU's recipe (``kernels.cpu.gru``).

* forward: x gathered into packed rows, then the recurrence (``_lstm_loop``): blocks of batch
  rows, one per thread, each running all its steps (per step the (rows, I) x (I, 4H) and
  (rows, H) x (H, 4H) micro-kernel products fused with the gate maths);
* backward: the recurrence backward in the same blocks (per step the gate backward, the
  (rows, 4H) x (4H, H) product for dh_prev and the rows' ``dX = dA @ W_ih``), then
  ``dW_ih = dA.T @ Xp`` and ``dW_hh = dA.T @ H_prev`` as parallel GEMMs; the bias gradients
  are summed per row.

Gate order i, f, g, o. Every stored value is flushed to zero below sqrt(smallest normal)
(``gru._scalars``), so long sequences never crawl on subnormals. ``cache`` is private to this
module.
"""
import numpy as np

from ..._checks import check_cell_args, check_cell_grads
from . import _lstm_loop as L
from ._gemm import gemm
from ._packed import Packing, gate_panels, gather, row_blocks, scatter
from .gru import _scalars

__all__ = ["lstm_forward", "lstm_backward", "lstm_gates", "lstm_infer"]


def _forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse, keep):
    # keep: store the activations for backward (training) or not (inference)
    lengths = check_cell_args("lstm", x, (h0, c0), (W_ih, W_hh, b_ih, b_hh), lengths)[0]
    B, T, I = x.shape
    H = h0.shape[1]
    dt = x.dtype
    _, tiny = _scalars(dt)
    pk = Packing(lengths, T)
    rev = bool(reverse)
    Xp = gather(x, pk, rev)
    Hp = np.empty((pk.N, H), dt)              # packed h_prev, c_prev of every (step, row)
    Cp = np.empty((pk.N, H), dt)
    Hp[:B] = h0[pk.perm]
    Cp[:B] = c0[pk.perm]
    bounds = row_blocks(pk, L.MR)
    # packed i, f, g, o, tanh(c_t), or one scratch row per block
    Acts = np.empty((pk.N if keep else bounds.shape[0] - 1, 5 * H), dt)
    y = (np.empty if pk.full else np.zeros)((B, T, H), dt)
    h_n = np.empty((B, H), dt)
    c_n = np.empty((B, H), dt)
    gates = (0, 1, 2, 3)
    L.fwd(bounds, pk.nb, pk.off, Xp, gate_panels(W_ih, gates, H), gate_panels(W_hh, gates, H),
          b_ih + b_hh, Hp, Cp, Acts, keep, pk.perm, pk.lengths, rev, y, h_n, c_n, tiny)
    cache = {"pack": pk, "Xp": Xp, "Hp": Hp, "Cp": Cp, "Acts": Acts, "y": y,
             "c_n": c_n.copy(), "reverse": rev}
    return y, h_n, c_n, cache


def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse=False):
    """Numba CPU ``lstm_forward``; same arguments and results as the reference.

    x (B,T,I)  h0, c0 (B,H)  W_ih (4H,I)  W_hh (4H,H)  b_ih, b_hh (4H,)  lengths (B,) int64
    -> y (B,T,H), h_n (B,H), c_n (B,H), cache
    """
    return _forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse, True)


def lstm_infer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse=False):
    """``lstm_forward`` without what backward needs (inference): -> y, h_n, c_n."""
    return _forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse, False)[:3]


def lstm_backward(dy, dh_n, dc_n, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, cache,
                  reverse=False):
    """Numba CPU ``lstm_backward``; same arguments and results as the reference.

    -> dx (B,T,I), dh0 (B,H), dc0 (B,H), dW_ih (4H,I), dW_hh (4H,H), db_ih (4H,), db_hh (4H,)
    """
    lengths, dt, shape = check_cell_args("lstm", x, (h0, c0), (W_ih, W_hh, b_ih, b_hh), lengths)
    check_cell_grads("lstm", dy, (dh_n, dc_n), shape, dt)
    B, T, I = x.shape
    H = h0.shape[1]
    one, tiny = _scalars(dt)
    pk, Xp, Hp, Cp, Acts = (cache[k] for k in ("pack", "Xp", "Hp", "Cp", "Acts"))
    rev = bool(reverse)
    N = pk.N
    dA = np.empty((N, 4 * H), dt)             # packed da_i, da_f, da_g, da_o
    dh = np.empty((B, H), dt)                 # sorted rows: dA @ W_hh of the step after
    dc = np.empty((B, H), dt)                 # sorted rows: dL/dc carried back
    db = np.zeros((B, 4 * H), dt)
    dXp = np.empty((N, I), dt)                # packed input gradients
    L.bwd(row_blocks(pk, L.MR), pk.nb, pk.off, np.ascontiguousarray(dy),
          np.ascontiguousarray(dh_n), np.ascontiguousarray(dc_n), Cp, Acts,
          np.ascontiguousarray(W_hh), np.ascontiguousarray(W_ih), pk.perm, pk.lengths, rev,
          dh, dc, dA, dXp, db, one, tiny)
    dh0 = np.empty((B, H), dt)
    dc0 = np.empty((B, H), dt)
    dh0[pk.perm] = dh
    dc0[pk.perm] = dc
    dx = scatter(dXp, pk, rev, T)
    dW_ih = np.empty((4 * H, I), dt)
    gemm(4 * H, I, N, dA, 0, 1, 4 * H, Xp, 0, I, dW_ih, 0, I, False)
    dW_hh = np.empty((4 * H, H), dt)
    gemm(4 * H, H, N, dA, 0, 1, 4 * H, Hp, 0, H, dW_hh, 0, H, False)
    db = db.sum(axis=0)
    return dx, dh0, dc0, dW_ih, dW_hh, db, db.copy()


def lstm_gates(cache):
    """Per-time activations: dict of "i","f","g","o","c","h" (B,T,H), zero past each length."""
    pk, Acts, Cp, y = cache["pack"], cache["Acts"], cache["Cp"], cache["y"]
    B, T, H = y.shape
    out = {k: np.zeros((B, T, H), dtype=y.dtype) for k in "ifgoc"}
    c_n = cache["c_n"]
    for s in range(pk.steps):
        # host-side gather of the packed rows of step s, only used for inspection
        n, o, n1, o1 = pk.nb[s], pk.off[s], pk.nb[s + 1], pk.off[s + 1]
        rows = pk.perm[:n]
        t = pk.lengths[rows] - 1 - s if cache["reverse"] else np.full(n, s)
        for g, k in enumerate("ifgo"):
            out[k][rows, t] = Acts[o:o + n, g * H:(g + 1) * H]
        # c_t is c_prev of the step after, or c_n at a row's last step
        c_t = np.concatenate([Cp[o1:o1 + n1], c_n[pk.perm[n1:n]]])
        out["c"][rows, t] = c_t
    out["h"] = y.copy()
    return out
