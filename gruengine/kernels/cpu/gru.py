"""GRU forward/backward on the CPU: packed sequences, SIMD GEMMs, one compiled time loop.

Same names and argument order as ``gruengine.reference.gru``. The cuDNN recipe, with every
product on the ``_simd`` micro-kernels (no BLAS call, no Python per time step):

* forward: x gathered into packed rows (``_packed``); then the recurrence (``_gru_loop``):
  blocks of batch rows, one per thread, each running all its time steps; per step the
  (rows, I) x (I, 3H) input product and the (rows, H) x (H, 3H) recurrent product go into one
  tile of accumulators and straight into the gate maths (no (B, T, 3H) array of input
  projections is written or read back);
* backward: the recurrence backward in the same blocks (per step the gate backward, the
  (rows, 3H) x (3H, H) product for dh_prev and the rows' ``dX = dA @ W_ih``), then
  ``dW_ih = dA.T @ Xp`` and ``dW_hh = dA.T @ H_prev`` as parallel GEMMs over all rows; the
  bias gradients are summed per row inside the loop.

``cache`` holds the packed layout and state (and y, for ``gru_gates``); it is private to
this module.
"""
import numpy as np

from ..._checks import check_cell_args, check_cell_grads
from . import _gru_loop as L
from ._gemm import gemm
from ._packed import Packing, gate_panels, gather, row_blocks, scatter

__all__ = ["gru_forward", "gru_backward", "gru_gates", "gru_infer"]


def _scalars(dtype):
    # (one, flush threshold).  The threshold is sqrt(smallest normal) (1.1e-19 in float32,
    # 1.5e-154 in float64), not the smallest normal itself: the gate kernels' outputs are
    # GEMM operands, and a product of two values above sqrt(tiny) is never subnormal.
    # Flushing only below tiny left a band of just-normal gradients whose products with the
    # weights were subnormal; measured on a Xeon (2 threads, B=64 T=200 I=H=128), that band
    # alone made the classifier-pattern step 2.4x slower than the tagger pattern.
    return dtype.type(1), dtype.type(np.sqrt(np.finfo(dtype).tiny))


def _bias(b_ih, b_hh, H, reset_after):
    # (4H,): r and z take b_i + b_h together; b_in and b_hn stay apart (b_hn is inside r * (.)
    # when reset_after)
    return np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:], b_hh[2 * H:]])


def _forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after, reverse, keep):
    # keep: store the gates for backward (training) or not (inference)
    lengths = check_cell_args("gru", x, (h0,), (W_ih, W_hh, b_ih, b_hh), lengths)[0]
    B, T, I = x.shape
    H = h0.shape[1]
    dt = x.dtype
    one, tiny = _scalars(dt)
    pk = Packing(lengths, T)
    rev = bool(reverse)
    Xp = gather(x, pk, rev)
    Hp = np.empty((pk.N, H), dt)              # packed h_prev of every active (step, row)
    Hp[:B] = h0[pk.perm]
    bounds = row_blocks(pk, L.MR)
    # packed r, z, n, (W_hn h + b_hn | r * h_prev), or scratch rows per block
    G = np.empty((pk.N if keep else (bounds.shape[0] - 1) * L.MR, 4 * H), dt)
    y = (np.empty if pk.full else np.zeros)((B, T, H), dt)
    h_n = np.empty((B, H), dt)
    bias = _bias(b_ih, b_hh, H, reset_after)
    Wx = gate_panels(W_ih, (0, 1, 2), H)
    args = (bias, Hp, G, keep, pk.perm, pk.lengths, rev, y, h_n, one, tiny)
    if reset_after:
        L.fwd_after(bounds, pk.nb, pk.off, Xp, Wx, gate_panels(W_hh, (2, 0, 1), H), *args)
    else:
        L.fwd_before(bounds, pk.nb, pk.off, Xp, Wx, gate_panels(W_hh, (0, 1), H),
                     gate_panels(W_hh, (2,), H), *args)
    cache = {"pack": pk, "Xp": Xp, "Hp": Hp, "G": G, "y": y, "reverse": rev}
    return y, h_n, cache


def gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after=True, reverse=False):
    # x: (B, T, I)  h0: (B, H)  W_ih: (3H, I)  W_hh: (3H, H)  b_ih, b_hh: (3H,)  lengths: (B,)
    # -> y: (B, T, H), h_n: (B, H), cache
    return _forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after, reverse, True)


def gru_infer(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after=True, reverse=False):
    """``gru_forward`` without what backward needs (inference): -> y (B, T, H), h_n (B, H).
    The gates are not stored, so the step writes a third of the memory."""
    y, h_n, _ = _forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after, reverse, False)
    return y, h_n


def gru_backward(dy, dh_n, x, h0, W_ih, W_hh, b_ih, b_hh, lengths, cache,
                 reset_after=True, reverse=False):
    # dy: (B, T, H)  dh_n: (B, H)  (other arguments as in gru_forward, cache from it)
    # -> dx (B, T, I), dh0 (B, H), dW_ih (3H, I), dW_hh (3H, H), db_ih (3H,), db_hh (3H,)
    _, dt, shape = check_cell_args("gru", x, (h0,), (W_ih, W_hh, b_ih, b_hh), lengths)
    check_cell_grads("gru", dy, (dh_n,), shape, dt)
    B, T, I = x.shape
    H = h0.shape[1]
    one, tiny = _scalars(dt)
    pk, Xp, Hp, G = cache["pack"], cache["Xp"], cache["Hp"], cache["G"]
    rev = bool(reverse)
    N = pk.N
    dA = np.empty((N, 4 * H), dt)             # packed da_r, da_z, da_n, da_n * r
    dhz = np.empty((B, H), dt)                # direct path dL/dh_t * z, sorted rows
    dhg = np.empty((B, H), dt)                # GEMM path dA @ W_hh, sorted rows
    db = np.zeros((B, 4 * H), dt)             # per-row sums of dA (the bias gradients)
    dXp = np.empty((N, I), dt)                # packed input gradients
    bounds = row_blocks(pk, L.MR)
    args = (pk.nb, pk.off, np.ascontiguousarray(dy), np.ascontiguousarray(dh_n), Hp, G,
            np.ascontiguousarray(W_hh), np.ascontiguousarray(W_ih), pk.perm, pk.lengths, rev,
            dhz, dhg)
    if reset_after:
        L.bwd_after(bounds, *args, dA, dXp, db, one, tiny)
    else:
        L.bwd_before(bounds, *args, np.empty((B, H), dt), dA, dXp, db, one, tiny)
    dh0 = np.empty((B, H), dt)
    L.sum_rows_scatter(dhz, dhg, pk.perm, dh0, tiny)
    dx = scatter(dXp, pk, rev, T)
    dW_ih = np.empty((3 * H, I), dt)
    gemm(3 * H, I, N, dA, 0, 1, 4 * H, Xp, 0, I, dW_ih, 0, I, False)
    dW_hh = np.empty((3 * H, H), dt)
    gemm(2 * H, H, N, dA, 0, 1, 4 * H, Hp, 0, H, dW_hh, 0, H, False)
    db = db.sum(axis=0)
    if reset_after:   # n rows: (da_n * r).T @ h_prev
        gemm(H, H, N, dA, 3 * H, 1, 4 * H, Hp, 0, H, dW_hh, 2 * H * H, H, False)
        db_hh = np.concatenate([db[:2 * H], db[3 * H:]])
    else:             # n rows: da_n.T @ (r * h_prev)
        gemm(H, H, N, dA, 2 * H, 1, 4 * H, G, 3 * H, 4 * H, dW_hh, 2 * H * H, H, False)
        db_hh = db[:3 * H].copy()
    return dx, dh0, dW_ih, dW_hh, db[:3 * H].copy(), db_hh


def gru_gates(cache):
    """Per-time values kept by ``gru_forward``: dict of "r", "z", "n" (the gates) and "h"
    (the hidden state), each (B, T, H), zero past each row's length."""
    y, G, pk = cache["y"], cache["G"], cache["pack"]
    H = y.shape[2]
    out = {k: np.zeros_like(y) for k in "rzn"}
    for s in range(pk.steps):
        # host-side gather of the packed rows of step s, only used for inspection
        n, o = pk.nb[s], pk.off[s]
        rows = pk.perm[:n]
        t = pk.lengths[rows] - 1 - s if cache["reverse"] else np.full(n, s)
        for i, k in enumerate("rzn"):
            out[k][rows, t] = G[o:o + n, i * H:(i + 1) * H]
    out["h"] = y.copy()
    return out
