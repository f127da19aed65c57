"""Plain NumPy forward/backward of the ops around the recurrent core.

Embedding, Linear, pooling over time, the three losses and dropout: the executable
specification that ``gruengine.kernels.cpu.ops`` (and the CUDA launchers) are tested
against. Slow and obvious on purpose; no input validation (the modules and
``gruengine.losses`` validate).

Conventions (docs/architecture.md, "Other ops"): arrays are C-contiguous float32 or
float64, one dtype per call, which every result keeps; integer arrays are int64.
Losses are weighted means and return ``(loss, dgrad)`` with ``loss`` a Python float.
"""
import numpy as np

__all__ = [
    "embedding_forward", "embedding_backward",
    "linear_forward", "linear_backward",
    "pool_forward", "pool_backward",
    "softmax_cross_entropy", "bce_with_logits", "mse",
    "dropout_forward", "dropout_backward",
]

POOL_MODES = ("last", "mean", "max")


# ---------------------------------------------------------------- embedding

def embedding_forward(ids, W):
    # ids: (B, T) int64 in [0, V)   W: (V, E)   -> (B, T, E)
    return W[ids]


def embedding_backward(dy, ids, num_embeddings, padding_idx):
    # dy: (B, T, E)   ids: (B, T)   -> dW: (V, E); padding_idx -1 = none, else that row stays 0
    E = dy.shape[-1]
    dW = np.zeros((num_embeddings, E), dtype=dy.dtype)
    np.add.at(dW, ids.reshape(-1), dy.reshape(-1, E))
    if padding_idx >= 0:
        dW[padding_idx] = 0
    return dW


# ---------------------------------------------------------------- linear

def linear_forward(x, W, b):
    # x: (N, In)   W: (Out, In)   b: (Out,) or None   -> (N, Out)
    y = x @ W.T
    if b is not None:
        y = y + b
    return y


def linear_backward(dy, x, W):
    # dy: (N, Out)   x: (N, In)   W: (Out, In)   -> dx (N, In), dW (Out, In), db (Out,)
    return dy @ W, dy.T @ x, dy.sum(axis=0)


# ---------------------------------------------------------------- pooling over time

def pool_forward(y, lengths, mode):
    # y: (B, T, H)   lengths: (B,) int64 in [1, T]   -> p (B, H), idx (B, H) int64
    # idx holds the time index each output came from: lengths-1 for 'last', the first
    # argmax over the valid steps for 'max', and -1 for 'mean' (every valid step).
    B, T, H = y.shape
    p = np.empty((B, H), dtype=y.dtype)
    idx = np.full((B, H), -1, dtype=np.int64)
    for b in range(B):
        n = int(lengths[b])
        valid = y[b, :n]                        # (n, H)
        if mode == "last":
            p[b] = valid[n - 1]
            idx[b] = n - 1
        elif mode == "mean":
            p[b] = valid.sum(axis=0) / y.dtype.type(n)
        elif mode == "max":
            idx[b] = valid.argmax(axis=0)
            p[b] = valid[idx[b], np.arange(H)]
        else:
            raise ValueError(f"mode: expected one of {POOL_MODES}, got {mode!r}")
    return p, idx


def pool_backward(dp, lengths, mode, idx, T):
    # dp: (B, H)   idx: (B, H) from pool_forward   -> dy (B, T, H), zero at t >= lengths[b]
    B, H = dp.shape
    dy = np.zeros((B, T, H), dtype=dp.dtype)
    for b in range(B):
        n = int(lengths[b])
        if mode == "last":
            dy[b, n - 1] = dp[b]
        elif mode == "mean":
            dy[b, :n] = dp[b] / dp.dtype.type(n)
        elif mode == "max":
            dy[b, idx[b], np.arange(H)] = dp[b]
        else:
            raise ValueError(f"mode: expected one of {POOL_MODES}, got {mode!r}")
    return dy


# ---------------------------------------------------------------- losses (weighted means)

def _weights(weight, n, dtype):
    return np.ones(n, dtype=dtype) if weight is None else weight


def softmax_cross_entropy(logits, targets, weight):
    # logits: (N, C)   targets: (N,) int64 in [0, C)   weight: (N,) or None
    # loss = sum_i w_i * (logsumexp(logits_i) - logits_i[t_i]) / sum_i w_i
    N, C = logits.shape
    w = _weights(weight, N, logits.dtype)
    m = logits.max(axis=1, keepdims=True)
    shifted = logits - m                                           # <= 0: exp cannot overflow
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - lse                                           # log softmax, (N, C)
    rows = np.arange(N)
    wsum = w.sum()
    loss = float(-(w * logp[rows, targets]).sum() / wsum)
    dlogits = np.exp(logp)
    dlogits[rows, targets] -= 1
    dlogits *= (w / wsum)[:, None]
    return loss, dlogits.astype(logits.dtype, copy=False)


def bce_with_logits(logits, targets, weight):
    # logits: (N,)   targets: (N,) float in [0, 1]   weight: (N,) or None
    # l_i = max(x, 0) - x t + log(1 + exp(-|x|))  (= -t log s(x) - (1-t) log(1 - s(x)), no overflow)
    N = logits.shape[0]
    w = _weights(weight, N, logits.dtype)
    x, t = logits, targets
    e = np.exp(-np.abs(x))                                         # in (0, 1]
    per = np.maximum(x, 0) - x * t + np.log1p(e)
    wsum = w.sum()
    loss = float((w * per).sum() / wsum)
    sig = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    dlogits = (sig - t) * (w / wsum)
    return loss, dlogits.astype(logits.dtype, copy=False)


def mse(pred, target, weight):
    # pred, target: (N, K)   weight: (N,) or None
    # loss = sum_i w_i sum_k (pred - target)^2 / (K sum_i w_i)   (the plain mean when weight is None)
    N, K = pred.shape
    w = _weights(weight, N, pred.dtype)
    diff = pred - target
    denom = K * w.sum()
    loss = float((w[:, None] * diff * diff).sum() / denom)
    dpred = 2 * diff * (w / denom)[:, None]
    return loss, dpred.astype(pred.dtype, copy=False)


# ---------------------------------------------------------------- dropout

def dropout_forward(x, mask):
    # x, mask: same shape; mask holds 0 or 1/(1-p)
    return x * mask


def dropout_backward(dy, mask):
    # dy, mask: same shape
    return dy * mask
