"""GRU forward/backward on the CPU: BLAS GEMMs plus fused Numba gate kernels.

Same names and argument order as ``gruengine.reference.gru``. The cuDNN recipe:

* forward: ``Gx = X @ W_ih.T`` for all timesteps as one GEMM; per step one
  (n, H) x (H, 3H) product and one fused gate kernel (``_gru_cells``);
* backward: per step one fused gate-backward kernel and one (n, 3H) x (3H, H) product for
  dh_prev; ``dW_ih = dGx.T @ X``, ``dW_hh = dGh.T @ H_prev``, ``dX = dGx @ W_ih`` are single
  GEMMs after the loop; the bias gradients are summed per row inside the gate kernels.

Rows are sorted by length (descending) so the rows active at step s are a prefix of n rows
and the per-step GEMMs shrink with the sequences; the recurrent state is kept packed (one
contiguous block per step), like a PyTorch PackedSequence. The Python loop runs over time
steps only; batch rows and hidden units are covered by the kernels and GEMMs.

``cache`` holds the packed state and gates (and y, for ``gru_gates``); it is private to this
module.
"""
import numpy as np

from ..._checks import check_cell_args, check_cell_grads
from . import _gru_cells as K

__all__ = ["gru_forward", "gru_backward", "gru_gates"]


def _pack(lengths):
    # perm: sorted row -> original row; nb[s]: rows active at step s (nb[steps] = 0);
    # off[s]: first packed row of step s; steps = longest length.
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    perm = np.argsort(-lengths, kind="stable").astype(np.int64)
    steps = int(lengths.max())
    nb = np.bincount(lengths, minlength=steps + 1)[::-1].cumsum()[::-1][1:]  # (steps,) #{len > s}
    nb = np.append(nb, 0)
    off = np.concatenate([[0], np.cumsum(nb)])
    return lengths, perm, nb.tolist(), off.tolist(), steps


def _scalars(dtype):
    # (one, flush threshold).  The threshold is sqrt(smallest normal) (1.1e-19 in float32,
    # 1.5e-154 in float64), not the smallest normal itself: the gate kernels' outputs are
    # GEMM operands, and a product of two values above sqrt(tiny) is never subnormal.
    # Flushing only below tiny left a band of just-normal gradients whose products with the
    # weights were subnormal; measured on a Xeon (2 threads, B=64 T=200 I=H=128), that band
    # alone made the classifier-pattern step 2.4x slower than the tagger pattern.
    return dtype.type(1), dtype.type(np.sqrt(np.finfo(dtype).tiny))


def gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after=True, reverse=False):
    # x: (B, T, I)  h0: (B, H)  W_ih: (3H, I)  W_hh: (3H, H)  b_ih, b_hh: (3H,)  lengths: (B,)
    # -> y: (B, T, H), h_n: (B, H), cache
    lengths = check_cell_args("gru", x, (h0,), (W_ih, W_hh, b_ih, b_hh), lengths)[0]
    B, T, I = x.shape
    H = h0.shape[1]
    dt = x.dtype
    one, tiny = _scalars(dt)
    lengths, perm, nb, off, steps = _pack(lengths)
    N = off[steps]
    Gx = np.matmul(x.reshape(B * T, I), W_ih.T).reshape(B, T, 3 * H)
    Hp = np.empty((N, H), dt)                 # packed h_prev of every active (step, row)
    Hp[:B] = h0[perm]
    G = np.empty((N, 4 * H), dt)              # packed r, z, n, (W_hn h + b_hn | r * h_prev)
    full = N == B * T                          # no padding: every output slot gets written
    y = np.empty((B, T, H), dt) if full else np.zeros((B, T, H), dt)
    h_n = np.empty((B, H), dt)
    rev = bool(reverse)
    if reset_after:
        gh = np.empty((B, 3 * H), dt)
        W_hhT = W_hh.T
        for s in range(steps):
            n, o = nb[s], off[s]
            np.matmul(Hp[o:o + n], W_hhT, out=gh[:n])
            K.fwd_step_after(s, n, o, nb[s + 1], off[s + 1], Gx, gh, b_ih, b_hh, Hp, G,
                             perm, lengths, rev, y, h_n, one, tiny)
    else:
        gh = np.empty((B, 2 * H), dt)
        ghn = np.empty((B, H), dt)
        W_rzT = W_hh[:2 * H].T
        W_hnT = W_hh[2 * H:].T
        RH = G[:, 3 * H:]
        for s in range(steps):
            n, o = nb[s], off[s]
            np.matmul(Hp[o:o + n], W_rzT, out=gh[:n])
            K.fwd_step_before_rz(s, n, o, Gx, gh, b_ih, b_hh, Hp, G, perm, lengths, rev, one, tiny)
            np.matmul(RH[o:o + n], W_hnT, out=ghn[:n])
            K.fwd_step_before_n(s, n, o, nb[s + 1], off[s + 1], Gx, ghn, b_ih, b_hh, Hp, G,
                                perm, lengths, rev, y, h_n, one, tiny)
    cache = {"perm": perm, "nb": nb, "off": off, "steps": steps, "lengths": lengths,
             "Hp": Hp, "G": G, "y": y, "reverse": rev}
    return y, h_n, cache


def gru_backward(dy, dh_n, x, h0, W_ih, W_hh, b_ih, b_hh, lengths, cache,
                 reset_after=True, reverse=False):
    # dy: (B, T, H)  dh_n: (B, H)  (other arguments as in gru_forward, cache from it)
    # -> dx (B, T, I), dh0 (B, H), dW_ih (3H, I), dW_hh (3H, H), db_ih (3H,), db_hh (3H,)
    _, dt, shape = check_cell_args("gru", x, (h0,), (W_ih, W_hh, b_ih, b_hh), lengths)
    check_cell_grads("gru", dy, (dh_n,), shape, dt)
    B, T, I = x.shape
    H = h0.shape[1]
    dt = x.dtype
    one, tiny = _scalars(dt)
    perm, nb, off, steps = cache["perm"], cache["nb"], cache["off"], cache["steps"]
    lengths, Hp, G = cache["lengths"], cache["Hp"], cache["G"]
    N = off[steps]
    rev = bool(reverse)
    # zero at padding, so padding never reaches dX or dW_ih (no padding: all slots written)
    dGx = np.empty((B, T, 3 * H), dt) if N == B * T else np.zeros((B, T, 3 * H), dt)
    dGh = np.empty((N, 3 * H), dt)            # packed gradients of the recurrent pre-activations
    dhz = np.empty((B, H), dt)                # direct path dL/dh_t * z, sorted rows
    dhg = np.empty((B, H), dt)                # GEMM path dGh @ W_hh, sorted rows
    db = np.zeros((B, 4 * H), dt)             # per-row sums of da_r, da_z, da_n, d(W_hn h + b_hn)
    if reset_after:
        for s in range(steps - 1, -1, -1):
            n, o = nb[s], off[s]
            K.bwd_step_after(s, n, o, nb[s + 1], dy, dh_n, Hp, G, perm, lengths, rev,
                             dhz, dhg, dGx, dGh, db, one, tiny)
            np.matmul(dGh[o:o + n], W_hh, out=dhg[:n])
    else:
        d_rh = np.empty((B, H), dt)
        W_rz = W_hh[:2 * H]
        W_hn = W_hh[2 * H:]
        for s in range(steps - 1, -1, -1):
            n, o = nb[s], off[s]
            K.bwd_step_before_n(s, n, o, nb[s + 1], dy, dh_n, Hp, G, perm, lengths, rev,
                                dhz, dhg, dGx, dGh, db, one, tiny)
            np.matmul(dGh[o:o + n, 2 * H:], W_hn, out=d_rh[:n])
            K.bwd_step_before_r(s, n, o, d_rh, Hp, G, perm, lengths, rev, dhz, dGx, dGh, db,
                                one, tiny)
            np.matmul(dGh[o:o + n, :2 * H], W_rz, out=dhg[:n])
    dh0 = np.empty((B, H), dt)
    K.sum_rows_scatter(dhz, dhg, perm, dh0, tiny)
    dGx2 = dGx.reshape(B * T, 3 * H)
    dx = np.matmul(dGx2, W_ih).reshape(B, T, I)
    dW_ih = np.matmul(dGx2.T, x.reshape(B * T, I))
    db = db.sum(axis=0)
    db_ih = db[:3 * H].copy()
    if reset_after:
        dW_hh = np.matmul(dGh.T, Hp)
    else:
        dW_hh = np.empty_like(W_hh)
        np.matmul(dGh[:, :2 * H].T, Hp, out=dW_hh[:2 * H])
        np.matmul(dGh[:, 2 * H:].T, G[:, 3 * H:], out=dW_hh[2 * H:])
    db_hh = np.concatenate([db[:2 * H], db[3 * H:]])
    return dx, dh0, dW_ih, dW_hh, db_ih, db_hh


def gru_gates(cache):
    """Per-time values kept by ``gru_forward``: dict of "r", "z", "n" (the gates) and "h"
    (the hidden state), each (B, T, H), zero past each row's length."""
    y, G, perm, lengths = cache["y"], cache["G"], cache["perm"], cache["lengths"]
    H = y.shape[2]
    out = {k: np.zeros_like(y) for k in "rzn"}
    for s in range(cache["steps"]):
        # host-side gather of the packed rows of step s, only used for inspection
        n, o = cache["nb"][s], cache["off"][s]
        rows = perm[:n]
        t = lengths[rows] - 1 - s if cache["reverse"] else np.full(n, s)
        for i, k in enumerate("rzn"):
            out[k][rows, t] = G[o:o + n, i * H:(i + 1) * H]
    out["h"] = y.copy()
    return out
