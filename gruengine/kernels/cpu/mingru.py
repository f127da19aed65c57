"""minGRU, one layer, one direction, on the CPU.

* Both gate pre-activations for all timesteps are one GEMM: ``G = X @ [W_z; W_h].T + [b_z; b_h]``
  (the ``_simd`` micro-kernels, parallel over rows, like every CPU cell's products).
* The recurrence has no matrix product (gates read only x_t), so a Numba kernel scans over time
  with ``prange`` over (batch row, chunk of ``_CHUNK`` hidden units): every job owns its row's
  slice of y, h_n, dG and dh0.
* Forward (``SCAN = "log"``, the default): the log-space scan evaluated step by step, in float64
  whatever the storage dtype: ``logP_t = logaddexp(log a_t + logP_{t-1}, log b_t)`` (the
  log-cumsum-exp of the reference, term by term, without its growing cumsum offset) and
  ``A_t = a_t A_{t-1}`` for the h0 term; ``h_t = exp(logP_t) + A_t h0``.
  ``SCAN = "linear"``: ``h_t = h_{t-1} + z_t (h̃_t - h_{t-1})``, also in float64.
* Backward: the adjoint recurrence ``dh_{t-1} = a_t dh_t + dy_{t-1}`` has terms of either sign,
  and with 0 < a_t < 1 it is contractive, so it runs as a plain reverse linear scan.
* ``dX``, ``dW``, ``db`` are single GEMMs/sums after the scan. Stored values are flushed to zero
  below the dtype's smallest normal number.
"""
import math

import numpy as np
from numba import njit, prange

from ..._checks import check_cell_args, check_cell_grads
from ._gemm import gemm
from ._math import ftz, sigmoid_

__all__ = ["mingru_forward", "mingru_backward", "mingru_gates"]

_CHUNK = 32   # hidden units per prange job: contiguous loads, enough jobs for small batches

# Forward scan: "log" evaluates the log-space scan (logaddexp per step, ~6 libm calls per
# element); "linear" runs the same recurrence as h += z (h̃ - h) (2 exp per element, ~7x faster
# on one core, equal results to float32 rounding). Both are tested against the reference.
SCAN = "log"


@njit(cache=True, inline="always")
def _softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


@njit(parallel=True, cache=True)
def _mingru_fwd_scan(G, h0, lengths, reverse, tiny, y, h_n):
    # G: (B, T, 2H) pre-activations [z | h], time order   h0, h_n: (B, H)   y: (B, T, H)
    B, T, H2 = G.shape
    H = H2 // 2
    nch = (H + _CHUNK - 1) // _CHUNK
    for job in prange(B * nch):
        b = job // nch
        u0 = (job % nch) * _CHUNK
        n = min(_CHUNK, H - u0)
        logP = np.full(n, -np.inf)       # log of the h0-free part of h; b_t > 0 keeps it real
        A = np.ones(n)                   # Π a_s, multiplies h0
        L = lengths[b]
        for s in range(L):
            t = L - 1 - s if reverse else s
            for q in range(n):
                u = u0 + q
                a = np.float64(G[b, t, u])
                k = np.float64(G[b, t, H + u])
                e = math.exp(-abs(a))
                sp = max(a, 0.0) + math.log1p(e)      # softplus(a): log(1-z) = -sp, log z = a - sp
                log_g = math.log(k + 0.5) if k >= 0 else k - _softplus(k)
                lb = a - sp + log_g
                if logP[q] == -np.inf:
                    logP[q] = lb
                else:
                    la = logP[q] - sp
                    logP[q] = max(la, lb) + math.log1p(math.exp(-abs(la - lb)))
                A[q] *= e / (1.0 + e) if a >= 0 else 1.0 / (1.0 + e)     # 1 - z = σ(-a)
                y[b, t, u] = ftz(math.exp(logP[q]) + A[q] * h0[b, u], tiny)
        for q in range(n):
            h_n[b, u0 + q] = y[b, 0 if reverse else L - 1, u0 + q]


@njit(parallel=True, cache=True)
def _mingru_fwd_scan_linear(G, h0, lengths, reverse, tiny, y, h_n):
    # same shapes as _mingru_fwd_scan; h_t = h_{t-1} + z_t (h̃_t - h_{t-1}) in float64, a convex
    # combination per step: sequentially as stable as the log-space form, 2 exp per element
    B, T, H2 = G.shape
    H = H2 // 2
    nch = (H + _CHUNK - 1) // _CHUNK
    for job in prange(B * nch):
        b = job // nch
        u0 = (job % nch) * _CHUNK
        n = min(_CHUNK, H - u0)
        h = np.empty(n)
        for q in range(n):
            h[q] = h0[b, u0 + q]
        L = lengths[b]
        for s in range(L):
            t = L - 1 - s if reverse else s
            for q in range(n):
                u = u0 + q
                z = sigmoid_(np.float64(G[b, t, u]))
                k = np.float64(G[b, t, H + u])
                h_tilde = k + 0.5 if k >= 0 else sigmoid_(k)
                h[q] = ftz(h[q] + z * (h_tilde - h[q]), tiny)
                y[b, t, u] = h[q]
        for q in range(n):
            h_n[b, u0 + q] = h[q]


@njit(parallel=True, cache=True)
def _mingru_bwd_scan(G, h0, y, dy, dh_n, lengths, reverse, tiny, dG, dh0):
    # G: (B, T, 2H)   h0, dh_n, dh0: (B, H)   y, dy: (B, T, H)   dG: (B, T, 2H), zero at padding
    B, T, H2 = G.shape
    H = H2 // 2
    nch = (H + _CHUNK - 1) // _CHUNK
    for job in prange(B * nch):
        b = job // nch
        u0 = (job % nch) * _CHUNK
        n = min(_CHUNK, H - u0)
        dh = np.empty(n)
        for q in range(n):
            dh[q] = dh_n[b, u0 + q]
        L = lengths[b]
        for s in range(L - 1, -1, -1):
            t = L - 1 - s if reverse else s
            tp = t + 1 if reverse else t - 1          # time index of the previous step
            for q in range(n):
                u = u0 + q
                a = np.float64(G[b, t, u])
                k = np.float64(G[b, t, H + u])
                h_prev = np.float64(h0[b, u]) if s == 0 else np.float64(y[b, tp, u])
                z = sigmoid_(a)
                if k >= 0:
                    h_tilde = k + 0.5
                    dg = 1.0
                else:
                    h_tilde = sigmoid_(k)
                    dg = h_tilde * (1.0 - h_tilde)
                d = dh[q] + dy[b, t, u]
                dG[b, t, u] = ftz(d * (h_tilde - h_prev) * z * (1.0 - z), tiny)
                dG[b, t, H + u] = ftz(d * z * dg, tiny)
                dh[q] = ftz(d * (1.0 - z), tiny)
        for q in range(n):
            dh0[b, u0 + q] = dh[q]


def _stack(W_z, W_h, b_z, b_h):
    return np.concatenate([W_z, W_h], axis=0), np.concatenate([b_z, b_h])


def mingru_forward(x, h0, W_z, W_h, b_z, b_h, lengths, reverse=False):
    """Numba CPU ``mingru_forward``; same arguments and results as the reference.

    x (B,T,I)  h0 (B,H)  W_z, W_h (H,I)  b_z, b_h (H,)  lengths (B,) int64 -> y, h_n, cache
    """
    lengths = check_cell_args("mingru", x, (h0,), (W_z, W_h, b_z, b_h), lengths)[0]
    B, T, I = x.shape
    H = h0.shape[1]
    W, bias = _stack(W_z, W_h, b_z, b_h)
    WT = np.ascontiguousarray(W.T)
    G = np.empty((B, T, 2 * H), x.dtype)
    gemm(B * T, 2 * H, I, np.ascontiguousarray(x), 0, I, 1, WT, 0, 2 * H, G, 0, 2 * H, False)
    G += bias
    y = np.zeros((B, T, H), dtype=x.dtype)
    h_n = np.empty((B, H), dtype=x.dtype)
    if SCAN not in ("log", "linear"):
        raise ValueError(f"SCAN: expected 'log' or 'linear', got {SCAN!r}")
    scan = _mingru_fwd_scan if SCAN == "log" else _mingru_fwd_scan_linear
    scan(G, np.ascontiguousarray(h0), lengths, bool(reverse), float(np.finfo(x.dtype).tiny),
         y, h_n)
    return y, h_n, {"G": G, "y": y, "lengths": lengths, "reverse": bool(reverse)}


def mingru_backward(dy, dh_n, x, h0, W_z, W_h, b_z, b_h, lengths, cache, reverse=False):
    """Numba CPU ``mingru_backward``; same arguments and results as the reference.

    -> dx (B,T,I), dh0 (B,H), dW_z (H,I), dW_h (H,I), db_z (H,), db_h (H,)
    """
    lengths, dt, shape = check_cell_args("mingru", x, (h0,), (W_z, W_h, b_z, b_h), lengths)
    check_cell_grads("mingru", dy, (dh_n,), shape, dt)
    B, T, I = x.shape
    H = h0.shape[1]
    G = cache["G"]
    dG = np.zeros_like(G)
    dh0 = np.empty((B, H), dtype=x.dtype)
    _mingru_bwd_scan(G, np.ascontiguousarray(h0), cache["y"], np.ascontiguousarray(dy),
                     np.ascontiguousarray(dh_n), lengths, bool(reverse),
                     float(np.finfo(x.dtype).tiny), dG, dh0)
    W, _ = _stack(W_z, W_h, b_z, b_h)
    N = B * T
    dx = np.empty((B, T, I), x.dtype)
    gemm(N, I, 2 * H, dG, 0, 2 * H, 1, W, 0, I, dx, 0, I, False)
    dW = np.empty((2 * H, I), x.dtype)
    gemm(2 * H, I, N, dG, 0, 1, 2 * H, np.ascontiguousarray(x), 0, I, dW, 0, I, False)
    db = dG.reshape(N, 2 * H).sum(axis=0)
    return dx, dh0, dW[:H].copy(), dW[H:].copy(), db[:H].copy(), db[H:].copy()


def mingru_gates(cache):
    """dict of "z" (update gate), "h" (hidden state), "h_tilde" (candidate), each (B,T,H),
    zero past each length."""
    G, y, lengths = cache["G"], cache["y"], cache["lengths"]
    B, T, H2 = G.shape
    H = H2 // 2
    valid = (np.arange(T)[None, :] < lengths[:, None])[:, :, None]
    pre_z, pre_h = G[:, :, :H], G[:, :, H:]
    e = np.exp(-np.abs(pre_z))
    z = np.where(pre_z >= 0, 1 / (1 + e), e / (1 + e))
    e = np.exp(-np.abs(pre_h))
    ht = np.where(pre_h >= 0, np.maximum(pre_h, 0) + 0.5, e / (1 + e))
    return {"z": np.where(valid, z, 0).astype(y.dtype), "h": y.copy(),
            "h_tilde": np.where(valid, ht, 0).astype(y.dtype)}
