"""Numba CPU kernels of the convolutional front end: conv1d over time, batch and layer norm,
ReLU.

Same names, argument order and results as ``gruengine.reference.conv``. The convolution is
im2col + one BLAS GEMM: ``cols`` (B*T_out, Cin*K) holds each output step's input window,
column ``i*K + k`` for channel i and tap k, so ``W`` (Cout, Cin, K) is the GEMM operand
``W.reshape(Cout, Cin*K)`` without a copy. The backward recomputes ``cols`` (cheaper than
keeping it) and gathers ``dx`` step by step, each ``prange`` iteration owning its output
rows: no atomics, the same bits on every run.
"""
import numpy as np
from numba import njit, prange

__all__ = [
    "conv1d_forward", "conv1d_backward",
    "batch_norm_stats", "batch_norm_forward", "batch_norm_backward",
    "layer_norm_forward", "layer_norm_backward",
    "relu_forward", "relu_backward",
]


# ---------------------------------------------------------------- conv1d over time

@njit(parallel=True, cache=True)
def _im2col(x, lengths, K, stride, T_out):
    # x: (B, T, Cin)   -> cols: (B*T_out, Cin*K); zero where the source step is outside
    # [0, L[b]) and on every output step t >= L_out[b]
    B, T, Cin = x.shape
    pad = (K - 1) // 2
    cols = np.zeros((B * T_out, Cin * K), dtype=x.dtype)
    for r in prange(B * T_out):
        b = r // T_out
        t = r - b * T_out
        L = lengths[b]
        if t * stride >= L:
            continue
        for k in range(K):
            s = t * stride + k - pad
            if 0 <= s < L:
                for i in range(Cin):
                    cols[r, i * K + k] = x[b, s, i]
    return cols


@njit(parallel=True, cache=True)
def _zero_past_lengths(y, lengths):
    # y: (B, T, C) in place: y[b, t >= lengths[b]] = 0
    B, T, C = y.shape
    for b in prange(B):
        for t in range(lengths[b], T):
            for c in range(C):
                y[b, t, c] = 0


@njit(parallel=True, cache=True)
def _col2im(dcols, lengths, K, stride, T, T_out):
    # dcols: (B*T_out, Cin*K) -> dx: (B, T, Cin); dx[b, s] gathers every (t, k) with
    # t*stride + k - pad = s, t < L_out[b]; zero at s >= L[b]
    Cin = dcols.shape[1] // K
    B = dcols.shape[0] // T_out
    pad = (K - 1) // 2
    dx = np.zeros((B, T, Cin), dtype=dcols.dtype)
    for r in prange(B * T):
        b = r // T
        s = r - b * T
        L = lengths[b]
        if s >= L:
            continue
        L_out = (L + stride - 1) // stride
        for k in range(K):
            u = s + pad - k                    # = t * stride
            if u < 0 or u % stride != 0:
                continue
            t = u // stride
            if t < L_out:
                row = b * T_out + t
                for i in range(Cin):
                    dx[b, s, i] += dcols[row, i * K + k]
    return dx


def _out_steps(T, stride):
    return -(-int(T) // int(stride))


def conv1d_forward(x, W, b, lengths, stride=1):
    # x: (B, T, Cin)   W: (Cout, Cin, K)   b: (Cout,) or None   -> y: (B, ceil(T/stride), Cout)
    B, T, Cin = x.shape
    Cout, _, K = W.shape
    T_out = _out_steps(T, stride)
    cols = _im2col(x, lengths, K, int(stride), T_out)
    y = cols @ W.reshape(Cout, Cin * K).T                   # (B*T_out, Cout)
    if b is not None:
        y += b
    y = y.reshape(B, T_out, Cout)
    _zero_past_lengths(y, (lengths + stride - 1) // stride)
    return y


def conv1d_backward(dy, x, W, lengths, stride=1):
    # dy: (B, T_out, Cout)   x: (B, T, Cin)   W: (Cout, Cin, K)
    # -> dx (B, T, Cin), dW (Cout, Cin, K), db (Cout,)
    B, T, Cin = x.shape
    Cout, _, K = W.shape
    T_out = _out_steps(T, stride)
    g = np.array(dy, dtype=dy.dtype, copy=True)
    _zero_past_lengths(g, (lengths + stride - 1) // stride)   # dy past L_out never counts
    g = g.reshape(B * T_out, Cout)
    cols = _im2col(x, lengths, K, int(stride), T_out)
    dW = (g.T @ cols).reshape(Cout, Cin, K)
    db = g.sum(axis=0)
    dcols = g @ W.reshape(Cout, Cin * K)                    # (B*T_out, Cin*K)
    dx = _col2im(dcols, lengths, K, int(stride), T, T_out)
    return dx, dW, db


# ---------------------------------------------------------------- batch norm over valid steps

@njit(parallel=True, cache=True)
def _batch_norm_stats(x, lengths):
    # x: (B, T, C) -> mean, var (C,) over the valid steps; one prange iteration per channel,
    # two passes in float64
    B, T, C = x.shape
    mean = np.zeros(C, dtype=x.dtype)
    var = np.zeros(C, dtype=x.dtype)
    n = 0
    for b in range(B):
        n += lengths[b]
    for c in prange(C):
        s = 0.0
        for b in range(B):
            for t in range(lengths[b]):
                s += x[b, t, c]
        m = s / n
        v = 0.0
        for b in range(B):
            for t in range(lengths[b]):
                d = x[b, t, c] - m
                v += d * d
        mean[c] = m
        var[c] = v / n
    return mean, var


@njit(parallel=True, cache=True)
def _batch_norm_forward(x, gamma, beta, mean, rstd, lengths):
    # x: (B, T, C) -> y: (x - mean) * rstd * gamma + beta at valid steps, 0 at padding
    B, T, C = x.shape
    y = np.zeros_like(x)
    for r in prange(B * T):
        b = r // T
        t = r - b * T
        if t < lengths[b]:
            for c in range(C):
                y[b, t, c] = (x[b, t, c] - mean[c]) * rstd[c] * gamma[c] + beta[c]
    return y


@njit(parallel=True, cache=True)
def _batch_norm_dparams(dy, x, mean, rstd, lengths):
    # -> dgamma, dbeta (C,) over the valid steps, float64 sums; one iteration per channel
    B, T, C = x.shape
    dgamma = np.zeros(C, dtype=np.float64)
    dbeta = np.zeros(C, dtype=np.float64)
    for c in prange(C):
        sg = 0.0
        sb = 0.0
        for b in range(B):
            for t in range(lengths[b]):
                g = np.float64(dy[b, t, c])
                sg += g * (x[b, t, c] - mean[c]) * rstd[c]
                sb += g
        dgamma[c] = sg
        dbeta[c] = sb
    return dgamma, dbeta


@njit(parallel=True, cache=True)
def _batch_norm_dx(dy, x, gamma, mean, rstd, lengths, dgamma, dbeta, batch_stats):
    # -> dx (B, T, C): gamma rstd (dy - dbeta/N - xhat dgamma/N) [batch_stats] or gamma rstd dy
    B, T, C = x.shape
    n = 0
    for b in range(B):
        n += lengths[b]
    dx = np.zeros_like(x)
    for r in prange(B * T):
        b = r // T
        t = r - b * T
        if t < lengths[b]:
            for c in range(C):
                k = np.float64(gamma[c]) * rstd[c]
                if batch_stats:
                    xhat = (x[b, t, c] - mean[c]) * np.float64(rstd[c])
                    dx[b, t, c] = k * (dy[b, t, c] - dbeta[c] / n - xhat * dgamma[c] / n)
                else:
                    dx[b, t, c] = k * dy[b, t, c]
    return dx


def batch_norm_stats(x, lengths):
    # x: (B, T, C)   -> mean (C,), var (C,) (biased) over the valid steps
    return _batch_norm_stats(x, lengths)


def batch_norm_forward(x, gamma, beta, mean, rstd, lengths):
    # x: (B, T, C)   gamma, beta, mean, rstd: (C,)   -> y (B, T, C)
    return _batch_norm_forward(x, gamma, beta, mean, rstd, lengths)


def batch_norm_backward(dy, x, gamma, mean, rstd, lengths, batch_stats=True):
    # -> dx (B, T, C), dgamma (C,), dbeta (C,)
    dy = np.ascontiguousarray(dy)
    dgamma, dbeta = _batch_norm_dparams(dy, x, mean, rstd, lengths)
    dx = _batch_norm_dx(dy, x, gamma, mean, rstd, lengths, dgamma, dbeta, bool(batch_stats))
    return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)


# ---------------------------------------------------------------- layer norm over channels

@njit(parallel=True, cache=True)
def _layer_norm_forward(x, gamma, beta, lengths, eps):
    # x: (B, T, C) -> y (B, T, C), mean (B, T), rstd (B, T); statistics in float64
    B, T, C = x.shape
    y = np.zeros_like(x)
    mean = np.zeros((B, T), dtype=x.dtype)
    rstd = np.zeros((B, T), dtype=x.dtype)
    for r in prange(B * T):
        b = r // T
        t = r - b * T
        if t >= lengths[b]:
            continue
        m = 0.0
        for c in range(C):
            m += x[b, t, c]
        m /= C
        v = 0.0
        for c in range(C):
            d = x[b, t, c] - m
            v += d * d
        rs = 1.0 / np.sqrt(v / C + eps)
        mean[b, t] = m
        rstd[b, t] = rs
        for c in range(C):
            y[b, t, c] = (x[b, t, c] - m) * rs * gamma[c] + beta[c]
    return y, mean, rstd


@njit(parallel=True, cache=True)
def _layer_norm_dx(dy, x, gamma, mean, rstd, lengths):
    # -> dx (B, T, C): rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma
    B, T, C = x.shape
    dx = np.zeros_like(x)
    for r in prange(B * T):
        b = r // T
        t = r - b * T
        if t >= lengths[b]:
            continue
        m = np.float64(mean[b, t])
        rs = np.float64(rstd[b, t])
        sg = 0.0
        sgx = 0.0
        for c in range(C):
            g = np.float64(dy[b, t, c]) * gamma[c]
            sg += g
            sgx += g * (x[b, t, c] - m) * rs
        sg /= C
        sgx /= C
        for c in range(C):
            g = np.float64(dy[b, t, c]) * gamma[c]
            xhat = (x[b, t, c] - m) * rs
            dx[b, t, c] = rs * (g - sg - xhat * sgx)
    return dx


@njit(parallel=True, cache=True)
def _layer_norm_dparams(dy, x, mean, rstd, lengths):
    # -> dgamma, dbeta (C,): sums over the valid steps; one prange iteration per channel
    B, T, C = x.shape
    dgamma = np.zeros(C, dtype=x.dtype)
    dbeta = np.zeros(C, dtype=x.dtype)
    for c in prange(C):
        sg = 0.0
        sb = 0.0
        for b in range(B):
            for t in range(lengths[b]):
                g = np.float64(dy[b, t, c])
                sg += g * (x[b, t, c] - mean[b, t]) * rstd[b, t]
                sb += g
        dgamma[c] = sg
        dbeta[c] = sb
    return dgamma, dbeta


def layer_norm_forward(x, gamma, beta, lengths, eps=1e-5):
    # x: (B, T, C)   gamma, beta: (C,)   -> y (B, T, C), mean (B, T), rstd (B, T)
    return _layer_norm_forward(x, gamma, beta, lengths, float(eps))


def layer_norm_backward(dy, x, gamma, mean, rstd, lengths):
    # -> dx (B, T, C), dgamma (C,), dbeta (C,)
    dy = np.ascontiguousarray(dy)
    dx = _layer_norm_dx(dy, x, gamma, mean, rstd, lengths)
    dgamma, dbeta = _layer_norm_dparams(dy, x, mean, rstd, lengths)
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- relu

@njit(parallel=True, cache=True)
def _relu(x):
    # x: (N,) flat -> max(x, 0)
    out = np.empty_like(x)
    for i in prange(x.shape[0]):
        out[i] = x[i] if x[i] > 0 else 0
    return out


@njit(parallel=True, cache=True)
def _relu_grad(dy, y):
    # dy, y: (N,) flat -> dy where y > 0
    out = np.empty_like(dy)
    for i in prange(dy.shape[0]):
        out[i] = dy[i] if y[i] > 0 else 0
    return out


def relu_forward(x):
    # x: any shape -> max(x, 0)
    return _relu(np.ascontiguousarray(x).reshape(-1)).reshape(x.shape)


def relu_backward(dy, y):
    # dy, y: same shape -> dy where y > 0, else 0
    return _relu_grad(np.ascontiguousarray(dy).reshape(-1),
                      np.ascontiguousarray(y).reshape(-1)).reshape(dy.shape)
