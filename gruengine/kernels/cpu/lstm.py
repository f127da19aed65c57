"""LSTM, one layer, one direction, on the CPU: the cuDNN recipe with Numba gate kernels.

* ``Gx = X @ W_ih.T + (b_ih + b_hh)`` for all timesteps is one GEMM (NumPy/BLAS, outside njit).
* Per step: one (nb, H) x (H, 4H) product for the active rows and one fused gate kernel
  (``prange`` over batch rows) that writes c, h and the activated gates backward needs.
* Backward per step: the fused gate backward and one (nb, 4H) x (4H, H) product for dh_{t-1};
  ``dX``, ``dW_ih``, ``dW_hh`` and the biases are single GEMMs/sums after the loop.

Rows are processed in order of decreasing length (``perm``), so the rows active at step s are
the prefix ``[:nb]`` and the recurrent GEMM shrinks with the sequences. State arrays kept
for backward (``hs``, ``cs``, ``acts``) are indexed [step, sorted row]; ``y``/``dx`` use the
caller's [row, time] layout. Every value a kernel stores is flushed to zero below the dtype's
smallest normal number, so long sequences never crawl on denormals.

Activations and the flush come from ``_math`` (shared with the GRU and minGRU): libm in
float64, a vectorizable rational tanh/sigmoid in float32 (error < 3.2e-7); ``one``/``tiny``
arrive as scalars of the array dtype so float32 math stays float32. Each step kernel exists
as a ``prange`` version and a serial one from the same row function; steps with fewer than
``PARALLEL_MIN_ELEMENTS`` gate elements take the serial one (a parallel launch next to
OpenBLAS's threads costs more than the work, see ``_gru_cells``).
"""
import numpy as np
from numba import njit, prange

from ..._checks import check_cell_args, check_cell_grads
from ._math import ftz, sigmoid_, tanh_

__all__ = ["lstm_forward", "lstm_backward", "lstm_gates"]


@njit(inline="always")
def _lstm_fwd_row(j, Gx, gh, c_prev, perm, lengths, s, reverse, tiny, h_out, c_out, act, y):
    # one batch row j (sorted order) of the fused forward gate kernel; writes only row j
    H = c_prev.shape[1]
    b = perm[j]
    t = lengths[b] - 1 - s if reverse else s
    for u in range(H):
        i = sigmoid_(Gx[b, t, u] + gh[j, u])
        f = sigmoid_(Gx[b, t, H + u] + gh[j, H + u])
        g = tanh_(Gx[b, t, 2 * H + u] + gh[j, 2 * H + u])
        o = sigmoid_(Gx[b, t, 3 * H + u] + gh[j, 3 * H + u])
        c = ftz(f * c_prev[j, u] + i * g, tiny)
        h = ftz(o * tanh_(c), tiny)
        act[j, u] = i
        act[j, H + u] = f
        act[j, 2 * H + u] = g
        act[j, 3 * H + u] = o
        c_out[j, u] = c
        h_out[j, u] = h
        y[b, t, u] = h


@njit(parallel=True, cache=True, error_model="numpy")
def _lstm_fwd_step(Gx, gh, c_prev, perm, lengths, s, reverse, nb, tiny, h_out, c_out, act, y):
    # Gx: (B, T, 4H) input projections + both biases, [row, time]
    # gh: (B, 4H) h_prev @ W_hh.T, rows [:nb] valid, sorted order
    # c_prev, h_out, c_out: (B, H) sorted order      act: (B, 4H) activated i, f, g, o
    # y: (B, T, H) [row, time]
    for j in prange(nb):
        _lstm_fwd_row(j, Gx, gh, c_prev, perm, lengths, s, reverse, tiny, h_out, c_out, act, y)


@njit(cache=True, error_model="numpy")
def _lstm_fwd_step_serial(Gx, gh, c_prev, perm, lengths, s, reverse, nb, tiny, h_out, c_out,
                          act, y):
    # same shapes as _lstm_fwd_step; for steps too small to pay for a parallel launch
    for j in range(nb):
        _lstm_fwd_row(j, Gx, gh, c_prev, perm, lengths, s, reverse, tiny, h_out, c_out, act, y)


@njit(inline="always")
def _lstm_bwd_row(j, dy, act, c_prev, c_cur, perm, lengths, s, reverse, one, tiny, dh, dc, dG,
                  dGx):
    # one batch row j (sorted order) of the fused backward gate kernel; writes only row j
    # (of dh/dc/dG) and row perm[j] of dGx
    H = c_cur.shape[1]
    b = perm[j]
    t = lengths[b] - 1 - s if reverse else s
    for u in range(H):
        i = act[j, u]
        f = act[j, H + u]
        g = act[j, 2 * H + u]
        o = act[j, 3 * H + u]
        dh_t = dh[j, u] + dy[b, t, u]
        tc = tanh_(c_cur[j, u])
        dc_t = dc[j, u] + dh_t * o * (one - tc * tc)
        da_i = ftz(dc_t * g * i * (one - i), tiny)
        da_f = ftz(dc_t * c_prev[j, u] * f * (one - f), tiny)
        da_g = ftz(dc_t * i * (one - g * g), tiny)
        da_o = ftz(dh_t * tc * o * (one - o), tiny)
        dG[j, u] = da_i
        dG[j, H + u] = da_f
        dG[j, 2 * H + u] = da_g
        dG[j, 3 * H + u] = da_o
        dGx[b, t, u] = da_i
        dGx[b, t, H + u] = da_f
        dGx[b, t, 2 * H + u] = da_g
        dGx[b, t, 3 * H + u] = da_o
        dc[j, u] = ftz(dc_t * f, tiny)


@njit(parallel=True, cache=True, error_model="numpy")
def _lstm_bwd_step(dy, act, c_prev, c_cur, perm, lengths, s, reverse, nb, one, tiny, dh, dc, dG,
                   dGx):
    # dy: (B, T, H) [row, time]     act: (B, 4H) activated gates of step s, sorted order
    # c_prev, c_cur: (B, H) cell state before / after step s, sorted order
    # dh, dc: (B, H) adjoints of h, c after step s (sorted); dc is overwritten with dc_{s-1}
    # dG: (B, 4H) pre-activation gradients of step s (sorted)   dGx: (B, T, 4H) same, [row, time]
    for j in prange(nb):
        _lstm_bwd_row(j, dy, act, c_prev, c_cur, perm, lengths, s, reverse, one, tiny, dh, dc, dG,
                      dGx)


@njit(cache=True, error_model="numpy")
def _lstm_bwd_step_serial(dy, act, c_prev, c_cur, perm, lengths, s, reverse, nb, one, tiny, dh,
                          dc, dG, dGx):
    # same shapes as _lstm_bwd_step; for steps too small to pay for a parallel launch
    for j in range(nb):
        _lstm_bwd_row(j, dy, act, c_prev, c_cur, perm, lengths, s, reverse, one, tiny, dh, dc, dG,
                      dGx)


# Below this many gate elements (rows x H) per step a parallel launch costs more than it
# saves: the serial kernel runs a (32, 128) step in ~0.2 ms, a fork/join is ~0.02-5 ms
# depending on how busy the cores are.
PARALLEL_MIN_ELEMENTS = 16384


def _order(lengths):
    # rows by decreasing length (stable), and how many rows are active at each step
    perm = np.argsort(-lengths, kind="stable").astype(np.int64)
    T = int(lengths.max()) if lengths.size else 0
    return perm, T


def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse=False):
    """Numba CPU ``lstm_forward``; same arguments and results as the reference.

    x (B,T,I)  h0, c0 (B,H)  W_ih (4H,I)  W_hh (4H,H)  b_ih, b_hh (4H,)  lengths (B,) int64
    -> y (B,T,H), h_n (B,H), c_n (B,H), cache
    """
    lengths = check_cell_args("lstm", x, (h0, c0), (W_ih, W_hh, b_ih, b_hh), lengths)[0]
    B, T, I = x.shape
    H = h0.shape[1]
    dt = x.dtype
    tiny = dt.type(np.finfo(dt).tiny)
    perm, T_run = _order(lengths)
    sorted_len = lengths[perm]
    Gx = (np.ascontiguousarray(x).reshape(B * T, I) @ W_ih.T).reshape(B, T, 4 * H)
    Gx += b_ih + b_hh
    hs = np.zeros((T + 1, B, H), dtype=dt)
    cs = np.zeros((T + 1, B, H), dtype=dt)
    acts = np.zeros((T, B, 4 * H), dtype=dt)
    gh = np.empty((B, 4 * H), dtype=dt)
    y = np.zeros((B, T, H), dtype=dt)
    hs[0] = h0[perm]
    cs[0] = c0[perm]
    W_hh_T = W_hh.T
    for s in range(T_run):
        nb = int(np.count_nonzero(sorted_len > s))
        np.matmul(hs[s, :nb], W_hh_T, out=gh[:nb])
        step = _lstm_fwd_step if nb * H >= PARALLEL_MIN_ELEMENTS else _lstm_fwd_step_serial
        step(Gx, gh, cs[s], perm, lengths, s, reverse, nb, tiny, hs[s + 1], cs[s + 1], acts[s], y)
    h_n = np.empty((B, H), dtype=dt)
    c_n = np.empty((B, H), dtype=dt)
    h_n[perm] = hs[sorted_len, np.arange(B)]
    c_n[perm] = cs[sorted_len, np.arange(B)]
    cache = {"perm": perm, "sorted_len": sorted_len, "hs": hs, "cs": cs, "acts": acts,
             "T_run": T_run, "reverse": bool(reverse), "lengths": lengths}
    return y, h_n, c_n, cache


def lstm_backward(dy, dh_n, dc_n, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, cache,
                  reverse=False):
    """Numba CPU ``lstm_backward``; same arguments and results as the reference.

    -> dx (B,T,I), dh0 (B,H), dc0 (B,H), dW_ih (4H,I), dW_hh (4H,H), db_ih (4H,), db_hh (4H,)
    """
    lengths, dt, shape = check_cell_args("lstm", x, (h0, c0), (W_ih, W_hh, b_ih, b_hh), lengths)
    check_cell_grads("lstm", dy, (dh_n, dc_n), shape, dt)
    B, T, I = x.shape
    H = h0.shape[1]
    dt = x.dtype
    one, tiny = dt.type(1), dt.type(np.finfo(dt).tiny)
    perm, sorted_len, hs, cs, acts = (cache[k] for k in ("perm", "sorted_len", "hs", "cs", "acts"))
    dy = np.ascontiguousarray(dy)
    dh = np.ascontiguousarray(dh_n[perm])
    dc = np.ascontiguousarray(dc_n[perm])
    dGs = np.zeros((T, B, 4 * H), dtype=dt)       # [step, sorted row]
    dGx = np.zeros((B, T, 4 * H), dtype=dt)       # [row, time]; zero at padding
    for s in range(cache["T_run"] - 1, -1, -1):
        nb = int(np.count_nonzero(sorted_len > s))
        step = _lstm_bwd_step if nb * H >= PARALLEL_MIN_ELEMENTS else _lstm_bwd_step_serial
        step(dy, acts[s], cs[s], cs[s + 1], perm, lengths, s, reverse, nb, one, tiny, dh, dc,
             dGs[s], dGx)
        np.matmul(dGs[s, :nb], W_hh, out=dh[:nb])
    dGx2 = dGx.reshape(B * T, 4 * H)
    dx = (dGx2 @ W_ih).reshape(B, T, I)
    dW_ih = dGx2.T @ np.ascontiguousarray(x).reshape(B * T, I)
    dW_hh = dGs.reshape(T * B, 4 * H).T @ hs[:T].reshape(T * B, H)
    db = dGx2.sum(axis=0)
    dh0 = np.empty((B, H), dtype=dt)
    dc0 = np.empty((B, H), dtype=dt)
    dh0[perm] = dh
    dc0[perm] = dc
    return dx, dh0, dc0, dW_ih, dW_hh, db, db.copy()


def lstm_gates(cache):
    """Per-time activations: dict of "i","f","g","o","c","h" (B,T,H), zero past each length."""
    perm, sorted_len, hs, cs, acts = (cache[k] for k in ("perm", "sorted_len", "hs", "cs", "acts"))
    T, B, H4 = acts.shape
    H = H4 // 4
    out = {k: np.zeros((B, T, H), dtype=acts.dtype) for k in "ifgoch"}
    for s in range(cache["T_run"]):
        # host-side gather, only used for inspection (return_gates=True)
        j = np.nonzero(sorted_len > s)[0]
        b = perm[j]
        t = sorted_len[j] - 1 - s if cache["reverse"] else np.full_like(j, s)
        for n, k in enumerate("ifgo"):
            out[k][b, t] = acts[s, j, n * H:(n + 1) * H]
        out["c"][b, t] = cs[s + 1, j]
        out["h"][b, t] = hs[s + 1, j]
    return out
