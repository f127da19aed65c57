"""The front end's normalisations on CUDA: batch norm over the valid steps of a batch and
layer norm over channels.

Same names, argument order and results as ``gruengine.reference.conv``. A thread owns what
it writes (an element, a row of the layer norm, a channel's parameter gradients); sums run
in float64 in a fixed order. NumPy inputs give NumPy outputs, device arrays device arrays.
"""
import math

import numpy as np
from numba import cuda, float64

from . import launch

__all__ = [
    "batch_norm_stats", "batch_norm_forward", "batch_norm_backward",
    "layer_norm_forward", "layer_norm_backward",
]


# ----------------------------------------------------------------------------- kernels

@cuda.jit(cache=True)
def batch_norm_stats_kernel(x, lengths, n, mean, var):
    # x: (B, T, C) -> mean, var (C,) over the n valid steps; thread per channel, float64
    B = x.shape[0]
    C = x.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for c in range(start, C, step):
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


@cuda.jit(cache=True)
def batch_norm_forward_kernel(x, gamma, beta, mean, rstd, lengths, y):
    # x, y: (B, T, C) -> y = (x - mean) * rstd * gamma + beta at valid steps, 0 at padding
    B = x.shape[0]
    T = x.shape[1]
    C = x.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for e in range(start, B * T * C, step):
        b = e // (T * C)
        rem = e - b * T * C
        t = rem // C
        c = rem - t * C
        v = x.dtype.type(0)
        if t < lengths[b]:
            v = (x[b, t, c] - mean[c]) * rstd[c] * gamma[c] + beta[c]
        y[b, t, c] = v


@cuda.jit(cache=True)
def batch_norm_dparams_kernel(dy, x, mean, rstd, lengths, dgamma, dbeta):
    # -> dgamma, dbeta (C,) float64 sums over the valid steps; thread per channel
    B = x.shape[0]
    C = x.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for c in range(start, C, step):
        sg = 0.0
        sb = 0.0
        for b in range(B):
            for t in range(lengths[b]):
                g = float64(dy[b, t, c])
                sg += g * (x[b, t, c] - mean[c]) * rstd[c]
                sb += g
        dgamma[c] = sg
        dbeta[c] = sb


@cuda.jit(cache=True)
def batch_norm_dx_kernel(dy, x, gamma, mean, rstd, lengths, dgamma, dbeta, n, batch_stats, dx):
    # -> dx (B, T, C) = gamma rstd (dy - dbeta/n - xhat dgamma/n) [batch_stats] or gamma rstd dy
    B = x.shape[0]
    T = x.shape[1]
    C = x.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for e in range(start, B * T * C, step):
        b = e // (T * C)
        rem = e - b * T * C
        t = rem // C
        c = rem - t * C
        v = 0.0
        if t < lengths[b]:
            k = float64(gamma[c]) * rstd[c]
            if batch_stats:
                xhat = (x[b, t, c] - mean[c]) * float64(rstd[c])
                v = k * (dy[b, t, c] - dbeta[c] / n - xhat * dgamma[c] / n)
            else:
                v = k * dy[b, t, c]
        dx[b, t, c] = v


@cuda.jit(cache=True)
def layer_norm_forward_kernel(x, gamma, beta, lengths, eps, y, mean, rstd):
    # x: (B, T, C) -> y (B, T, C), mean (B, T), rstd (B, T); thread per step, float64 sums
    B = x.shape[0]
    T = x.shape[1]
    C = x.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for r in range(start, B * T, step):
        b = r // T
        t = r - b * T
        if t >= lengths[b]:
            for c in range(C):
                y[b, t, c] = 0
            mean[b, t] = 0
            rstd[b, t] = 0
            continue
        m = 0.0
        for c in range(C):
            m += x[b, t, c]
        m /= C
        v = 0.0
        for c in range(C):
            d = x[b, t, c] - m
            v += d * d
        rs = 1.0 / math.sqrt(v / C + eps)
        mean[b, t] = m
        rstd[b, t] = rs
        for c in range(C):
            y[b, t, c] = (x[b, t, c] - m) * rs * gamma[c] + beta[c]


@cuda.jit(cache=True)
def layer_norm_dx_kernel(dy, x, gamma, mean, rstd, lengths, dx):
    # -> dx (B, T, C) = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma
    B = x.shape[0]
    T = x.shape[1]
    C = x.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for r in range(start, B * T, step):
        b = r // T
        t = r - b * T
        if t >= lengths[b]:
            for c in range(C):
                dx[b, t, c] = 0
            continue
        m = mean[b, t]
        rs = rstd[b, t]
        sg = 0.0
        sgx = 0.0
        for c in range(C):
            g = dy[b, t, c] * gamma[c]
            sg += g
            sgx += g * (x[b, t, c] - m) * rs
        sg /= C
        sgx /= C
        for c in range(C):
            g = dy[b, t, c] * gamma[c]
            dx[b, t, c] = rs * (g - sg - (x[b, t, c] - m) * rs * sgx)


@cuda.jit(cache=True)
def layer_norm_dparams_kernel(dy, x, mean, rstd, lengths, dgamma, dbeta):
    # -> dgamma, dbeta (C,): sums over the valid steps; thread per channel
    B = x.shape[0]
    C = x.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for c in range(start, C, step):
        sg = 0.0
        sb = 0.0
        for b in range(B):
            for t in range(lengths[b]):
                g = dy[b, t, c]
                sg += g * (x[b, t, c] - mean[b, t]) * rstd[b, t]
                sb += g
        dgamma[c] = sg
        dbeta[c] = sb


def ptx_signatures(f):
    """name -> argument types of this module's kernels for float type ``f`` (tests/test_ptx.py)."""
    from numba import boolean, int64
    v, m, t3, i1, i = f[::1], f[:, ::1], f[:, :, ::1], int64[::1], int64
    p = float64[::1]
    return {
        "batch_norm_stats_kernel": (t3, i1, i, v, v),
        "batch_norm_forward_kernel": (t3, v, v, v, v, i1, t3),
        "batch_norm_dparams_kernel": (t3, t3, v, v, i1, p, p),
        "batch_norm_dx_kernel": (t3, t3, v, v, v, i1, p, p, i, boolean, t3),
        "layer_norm_forward_kernel": (t3, v, v, i1, float64, t3, m, m),
        "layer_norm_dx_kernel": (t3, t3, v, m, m, i1, t3),
        "layer_norm_dparams_kernel": (t3, t3, m, m, i1, v, v),
    }


# ----------------------------------------------------------------------------- launchers

def _bn_args(x, lengths, *vectors):
    launch.check_input("x", x, (None, None, None))
    dt = launch.check_float("x", x)
    B, T, C = x.shape
    for name, a in vectors:
        launch.check_input(name, a, (C,), dt)
    lengths_d = launch.lengths_to_device(lengths, B, T)
    n = int(np.sum(lengths)) if not launch.is_device_array(lengths) else \
        int(np.sum(lengths.copy_to_host()))
    return dt, B, T, C, lengths_d, n


def batch_norm_stats(x, lengths):
    """Mean and (biased) variance (C,) of x (B, T, C) over every valid step of the batch."""
    on_device = launch.is_device_array(x)
    dt, B, T, C, lengths_d, n = _bn_args(x, lengths)
    mean = cuda.device_array((C,), dtype=dt)
    var = cuda.device_array((C,), dtype=dt)
    blocks, tpb = launch.grid_1d(C)
    batch_norm_stats_kernel[blocks, tpb](launch.as_device(x), lengths_d, n, mean, var)
    return launch.to_output(mean, on_device), launch.to_output(var, on_device)


def batch_norm_forward(x, gamma, beta, mean, rstd, lengths):
    """(x - mean) * rstd * gamma + beta at valid steps, 0 at padding; x (B, T, C), the rest (C,)."""
    on_device = launch.is_device_array(x)
    dt, B, T, C, lengths_d, _ = _bn_args(x, lengths, ("gamma", gamma), ("beta", beta),
                                         ("mean", mean), ("rstd", rstd))
    y = cuda.device_array((B, T, C), dtype=dt)
    blocks, tpb = launch.grid_1d(y.size)
    batch_norm_forward_kernel[blocks, tpb](launch.as_device(x), launch.as_device(gamma),
                                           launch.as_device(beta), launch.as_device(mean),
                                           launch.as_device(rstd), lengths_d, y)
    return launch.to_output(y, on_device)


def batch_norm_backward(dy, x, gamma, mean, rstd, lengths, batch_stats=True):
    """-> dx (B, T, C), dgamma (C,), dbeta (C,); ``batch_stats``: mean and rstd were the
    batch's own statistics (the gradient flows through them)."""
    on_device = launch.is_device_array(dy)
    dt, B, T, C, lengths_d, n = _bn_args(x, lengths, ("gamma", gamma), ("mean", mean),
                                         ("rstd", rstd))
    launch.check_input("dy", dy, (B, T, C), dt)
    dy_d, x_d = launch.as_device(dy), launch.as_device(x)
    mean_d, rstd_d = launch.as_device(mean), launch.as_device(rstd)
    dgamma = cuda.device_array((C,), dtype=np.float64)
    dbeta = cuda.device_array((C,), dtype=np.float64)
    blocks, tpb = launch.grid_1d(C)
    batch_norm_dparams_kernel[blocks, tpb](dy_d, x_d, mean_d, rstd_d, lengths_d, dgamma, dbeta)
    dx = cuda.device_array((B, T, C), dtype=dt)
    blocks, tpb = launch.grid_1d(dx.size)
    batch_norm_dx_kernel[blocks, tpb](dy_d, x_d, launch.as_device(gamma), mean_d, rstd_d,
                                      lengths_d, dgamma, dbeta, n, bool(batch_stats), dx)
    return (launch.to_output(dx, on_device), _cast_out(dgamma, dt, on_device),
            _cast_out(dbeta, dt, on_device))


def _cast_out(a_d, dt, on_device):
    # a (C,) float64 device array in the op's dtype: through the host, it is C numbers
    h = a_d.copy_to_host().astype(dt)
    return cuda.to_device(h) if on_device else h


def layer_norm_forward(x, gamma, beta, lengths, eps=1e-5):
    """Normalise each valid step of x (B, T, C) over its channels -> y, mean (B, T), rstd (B, T)."""
    on_device = launch.is_device_array(x)
    launch.check_input("x", x, (None, None, None))
    dt = launch.check_float("x", x)
    B, T, C = x.shape
    launch.check_input("gamma", gamma, (C,), dt)
    launch.check_input("beta", beta, (C,), dt)
    lengths_d = launch.lengths_to_device(lengths, B, T)
    y = cuda.device_array((B, T, C), dtype=dt)
    mean = cuda.device_array((B, T), dtype=dt)
    rstd = cuda.device_array((B, T), dtype=dt)
    blocks, tpb = launch.grid_1d(B * T)
    layer_norm_forward_kernel[blocks, tpb](launch.as_device(x), launch.as_device(gamma),
                                           launch.as_device(beta), lengths_d, float(eps),
                                           y, mean, rstd)
    return tuple(launch.to_output(a, on_device) for a in (y, mean, rstd))


def layer_norm_backward(dy, x, gamma, mean, rstd, lengths):
    """-> dx (B, T, C), dgamma (C,), dbeta (C,), from the forward's mean and rstd."""
    on_device = launch.is_device_array(dy)
    launch.check_input("dy", dy, (None, None, None))
    dt = launch.check_float("dy", dy)
    B, T, C = dy.shape
    launch.check_input("x", x, (B, T, C), dt)
    launch.check_input("gamma", gamma, (C,), dt)
    launch.check_input("mean", mean, (B, T), dt)
    launch.check_input("rstd", rstd, (B, T), dt)
    lengths_d = launch.lengths_to_device(lengths, B, T)
    dy_d, x_d = launch.as_device(dy), launch.as_device(x)
    mean_d, rstd_d = launch.as_device(mean), launch.as_device(rstd)
    dx = cuda.device_array((B, T, C), dtype=dt)
    blocks, tpb = launch.grid_1d(B * T)
    layer_norm_dx_kernel[blocks, tpb](dy_d, x_d, launch.as_device(gamma), mean_d, rstd_d,
                                      lengths_d, dx)
    dgamma = cuda.device_array((C,), dtype=dt)
    dbeta = cuda.device_array((C,), dtype=dt)
    blocks, tpb = launch.grid_1d(C)
    layer_norm_dparams_kernel[blocks, tpb](dy_d, x_d, mean_d, rstd_d, lengths_d, dgamma, dbeta)
    return tuple(launch.to_output(a, on_device) for a in (dx, dgamma, dbeta))
