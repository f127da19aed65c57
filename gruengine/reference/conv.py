"""Plain NumPy forward/backward of the convolutional front end's ops: a length-aware 1-D
convolution over time, batch normalisation and layer normalisation, and ReLU.

The executable specification that ``gruengine.kernels.cpu.conv`` and
``gruengine.kernels.cuda.conv`` are tested against. No input validation (the modules in
``gruengine.conv`` validate).

Padding semantics (docs/architecture.md, "Convolutional front end"): a row's steps at and
past its length are outside the sequence. The convolution reads them as zeros (whatever the
array holds there) and writes zeros there, so a row's outputs are those of its unpadded
sequence convolved alone with zero padding: they do not depend on the rest of the batch.
"""
import numpy as np

__all__ = [
    "conv1d_forward", "conv1d_backward",
    "batch_norm_stats", "batch_norm_forward", "batch_norm_backward",
    "layer_norm_forward", "layer_norm_backward",
    "relu_forward", "relu_backward",
]


# ---------------------------------------------------------------- conv1d over time

def conv1d_forward(x, W, b, lengths, stride=1):
    # x: (B, T, Cin)   W: (Cout, Cin, K)   b: (Cout,) or None   lengths: (B,) int64 in [1, T]
    # -> y: (B, ceil(T/stride), Cout);  with pad = (K-1)//2 and L_out = ceil(L/stride),
    # y[b, t, o] = b[o] + sum_{i,k} W[o, i, k] * x[b, t*stride + k - pad, i] for t < L_out[b]
    # (source steps outside [0, L[b]) read as 0); y[b, t >= L_out[b]] = 0
    B, T, Cin = x.shape
    Cout, _, K = W.shape
    pad = (K - 1) // 2
    T_out = -(-T // stride)
    y = np.zeros((B, T_out, Cout), dtype=x.dtype)
    for bi in range(B):
        L = int(lengths[bi])
        xp = np.zeros((T_out * stride + K, Cin), dtype=x.dtype)   # row j holds step j - pad
        xp[pad:pad + L] = x[bi, :L]
        for t in range(-(-L // stride)):
            window = xp[t * stride:t * stride + K]                # (K, Cin)
            y[bi, t] = np.einsum("oik,ki->o", W, window)
            if b is not None:
                y[bi, t] += b
    return y


def conv1d_backward(dy, x, W, lengths, stride=1):
    # dy: (B, T_out, Cout) (read only at t < L_out[b])   x: (B, T, Cin)   W: (Cout, Cin, K)
    # -> dx (B, T, Cin) (zero at t >= L[b]), dW (Cout, Cin, K), db (Cout,)
    B, T, Cin = x.shape
    Cout, _, K = W.shape
    pad = (K - 1) // 2
    dx = np.zeros_like(x)
    dW = np.zeros_like(W)
    db = np.zeros(Cout, dtype=x.dtype)
    for bi in range(B):
        L = int(lengths[bi])
        T_out = -(-T // stride)
        xp = np.zeros((T_out * stride + K, Cin), dtype=x.dtype)
        xp[pad:pad + L] = x[bi, :L]
        dxp = np.zeros_like(xp)
        for t in range(-(-L // stride)):
            g = dy[bi, t]                                          # (Cout,)
            window = xp[t * stride:t * stride + K]
            dW += np.einsum("o,ki->oik", g, window)
            db += g
            dxp[t * stride:t * stride + K] += np.einsum("o,oik->ki", g, W)
        dx[bi, :L] = dxp[pad:pad + L]
    return dx, dW, db


# ---------------------------------------------------------------- batch norm over valid steps

def batch_norm_stats(x, lengths):
    # x: (B, T, C)   -> mean (C,), var (C,): over every valid step of the batch (biased
    # variance, as torch.nn.functional.batch_norm normalises with); padding never counts
    B, T, C = x.shape
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    rows = x[valid].astype(np.float64)                                    # (N valid, C)
    mean = rows.mean(axis=0)
    var = ((rows - mean) ** 2).mean(axis=0)
    return mean.astype(x.dtype), var.astype(x.dtype)


def batch_norm_forward(x, gamma, beta, mean, rstd, lengths):
    # x: (B, T, C)   gamma, beta, mean, rstd: (C,)   -> y = (x - mean) * rstd * gamma + beta
    # at valid steps, 0 at padding (mean/rstd: the batch's statistics, or the running ones)
    B, T, C = x.shape
    valid = (np.arange(T)[None, :] < np.asarray(lengths)[:, None])[..., None]
    y = (x - mean) * rstd * gamma + beta
    return np.where(valid, y, 0).astype(x.dtype)


def batch_norm_backward(dy, x, gamma, mean, rstd, lengths, batch_stats=True):
    # dy, x: (B, T, C)   -> dx (B, T, C) (zero at padding), dgamma (C,), dbeta (C,)
    # batch_stats: mean and rstd were this batch's statistics (training), so the gradient
    # also flows through them: dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)) over the
    # N valid steps; else they were constants: dx = gamma rstd dy
    B, T, C = x.shape
    valid = (np.arange(T)[None, :] < np.asarray(lengths)[:, None])[..., None]
    dy = np.where(valid, dy, 0).astype(np.float64)
    xhat = np.where(valid, (x - mean) * rstd, 0).astype(np.float64)
    dbeta = dy.sum(axis=(0, 1))
    dgamma = (dy * xhat).sum(axis=(0, 1))
    if batch_stats:
        n = float(np.sum(lengths))
        dx = gamma * rstd * (dy - dbeta / n - xhat * dgamma / n)
    else:
        dx = gamma * rstd * dy
    dx = np.where(valid, dx, 0)
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


# ---------------------------------------------------------------- layer norm over channels

def layer_norm_forward(x, gamma, beta, lengths, eps=1e-5):
    # x: (B, T, C)   gamma, beta: (C,)   lengths: (B,)
    # -> y (B, T, C), mean (B, T), rstd (B, T); each valid step normalised over its C channels
    # (biased variance, eps inside the root, as torch.nn.functional.layer_norm); zero at padding
    B, T, C = x.shape
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]          # (B, T)
    mean = x.mean(axis=2)
    var = ((x - mean[..., None]) ** 2).mean(axis=2)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean[..., None]) * rstd[..., None] * gamma + beta
    y = np.where(valid[..., None], y, 0).astype(x.dtype)
    mean = np.where(valid, mean, 0).astype(x.dtype)
    rstd = np.where(valid, rstd, 0).astype(x.dtype)
    return y, mean, rstd


def layer_norm_backward(dy, x, gamma, mean, rstd, lengths):
    # dy, x: (B, T, C)   gamma: (C,)   mean, rstd: (B, T) from layer_norm_forward
    # -> dx (B, T, C) (zero at padding), dgamma (C,), dbeta (C,) (valid steps only)
    B, T, C = x.shape
    valid = (np.arange(T)[None, :] < np.asarray(lengths)[:, None])[..., None]
    dy = np.where(valid, dy, 0)
    xhat = (x - mean[..., None]) * rstd[..., None]
    xhat = np.where(valid, xhat, 0)
    dgamma = (dy * xhat).sum(axis=(0, 1))
    dbeta = dy.sum(axis=(0, 1))
    g = dy * gamma                                                        # dL/dxhat
    dx = rstd[..., None] * (g - g.mean(axis=2, keepdims=True)
                            - xhat * (g * xhat).mean(axis=2, keepdims=True))
    dx = np.where(valid, dx, 0)
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


# ---------------------------------------------------------------- relu

def relu_forward(x):
    # x: any shape -> max(x, 0)
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def relu_backward(dy, y):
    # dy, y: same shape (y from relu_forward) -> dy where y > 0, else 0
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)
