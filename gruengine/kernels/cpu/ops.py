"""Numba CPU kernels of the ops around the recurrent core.

Same names and argument order as ``gruengine.reference.ops``. Each public name is a thin
host function (reshapes, ``None`` weights, mode strings) over a module-level
``@njit(parallel=True, cache=True)`` kernel. The Linear products run on the engine's GEMM
(``_gemm``), like the cells', so no BLAS thread pool wakes up during training. Every
``prange`` iteration writes only memory it owns (its batch row, its vocabulary row, its
element), so results are identical on every run.

Loss kernels do their arithmetic in float64 and store gradients in the input dtype.
No validation here: ``gruengine.layers`` and ``gruengine.losses`` validate.
"""
import numpy as np
from numba import njit, prange

from ._gemm import gemm

__all__ = [
    "embedding_forward", "embedding_backward",
    "linear_forward", "linear_backward",
    "pool_forward", "pool_backward",
    "softmax_cross_entropy", "bce_with_logits", "mse",
    "dropout_forward", "dropout_backward",
]

_POOL_CODES = {"last": 0, "mean": 1, "max": 2}


# ---------------------------------------------------------------- embedding

@njit(parallel=True, cache=True)
def _embedding_gather(ids, W):
    # ids: (N,) int64 in [0, V)   W: (V, E)   -> out: (N, E)
    N = ids.shape[0]
    E = W.shape[1]
    out = np.empty((N, E), dtype=W.dtype)
    for i in prange(N):
        v = ids[i]
        for e in range(E):
            out[i, e] = W[v, e]
    return out


@njit(parallel=True, cache=True)
def _embedding_scatter(dy, ids, padding_idx, dW):
    # dy: (N, E)   ids: (N,) int64 in [0, V)   dW: (V, E) <- the gradient (every row written)
    # A counting sort groups the positions of each id (in increasing position order), so
    # the parallel loop runs over vocabulary rows and each iteration owns its row of dW:
    # no atomics, and the summation order is fixed.
    N, E = dy.shape
    V = dW.shape[0]
    start = np.zeros(V + 1, dtype=np.int64)      # row v reads order[start[v]:start[v+1]]
    for i in range(N):
        start[ids[i] + 1] += 1
    for v in range(V):
        start[v + 1] += start[v]
    fill = start[:V].copy()
    order = np.empty(N, dtype=np.int64)
    for i in range(N):
        v = ids[i]
        order[fill[v]] = i
        fill[v] += 1
    for v in prange(V):
        row = dW[v]
        for e in range(E):
            row[e] = 0
        if v != padding_idx:
            for j in range(start[v], start[v + 1]):
                src = dy[order[j]]
                for e in range(E):
                    row[e] += src[e]


def embedding_forward(ids, W):
    # ids: (B, T) int64   W: (V, E)   -> (B, T, E)
    B, T = ids.shape
    return _embedding_gather(ids.ravel(), W).reshape(B, T, W.shape[1])


def embedding_backward(dy, ids, num_embeddings, padding_idx):
    # dy: (B, T, E)   ids: (B, T)   -> dW: (V, E); padding_idx -1 = none, else that row stays 0
    dW = np.empty((int(num_embeddings), dy.shape[-1]), dtype=dy.dtype)
    embedding_backward_into(dy, ids, padding_idx, dW)
    return dW


def embedding_backward_into(dy, ids, padding_idx, dW):
    """``embedding_backward`` writing into ``dW`` (V, E), C-contiguous: the Embedding layer's
    CPU path, straight into its gradient buffer (no (V, E) temporary to allocate and copy)."""
    E = dy.shape[-1]
    _embedding_scatter(np.ascontiguousarray(dy).reshape(-1, E), ids.ravel(), int(padding_idx), dW)


# ---------------------------------------------------------------- linear (the engine's GEMM)

def linear_forward(x, W, b):
    # x: (N, In)   W: (Out, In)   b: (Out,) or None   -> (N, Out)
    N, In = x.shape
    Out = W.shape[0]
    y = np.empty((N, Out), x.dtype)
    gemm(N, Out, In, np.ascontiguousarray(x), 0, In, 1, np.ascontiguousarray(W.T), 0, Out,
         y, 0, Out, False)
    if b is not None:
        y += b
    return y


def linear_backward(dy, x, W):
    # dy: (N, Out)   x: (N, In)   W: (Out, In)   -> dx (N, In), dW (Out, In), db (Out,)
    N, In = x.shape
    Out = W.shape[0]
    dy = np.ascontiguousarray(dy)
    dx = np.empty((N, In), x.dtype)
    gemm(N, In, Out, dy, 0, Out, 1, np.ascontiguousarray(W), 0, In, dx, 0, In, False)
    dW = np.empty((Out, In), x.dtype)
    gemm(Out, In, N, dy, 0, 1, Out, np.ascontiguousarray(x), 0, In, dW, 0, In, False)
    return dx, dW, dy.sum(axis=0)


# ---------------------------------------------------------------- pooling over time

@njit(parallel=True, cache=True)
def _pool_forward(y, lengths, mode):
    # y: (B, T, H)   lengths: (B,) int64 in [1, T]   mode: 0 last, 1 mean, 2 max
    # -> p (B, H), idx (B, H) int64 (source time step; -1 for mean)
    B, T, H = y.shape
    p = np.empty((B, H), dtype=y.dtype)
    idx = np.empty((B, H), dtype=np.int64)
    for b in prange(B):
        n = lengths[b]
        if mode == 0:
            for h in range(H):
                p[b, h] = y[b, n - 1, h]
                idx[b, h] = n - 1
        elif mode == 1:
            for h in range(H):
                p[b, h] = y[b, 0, h]
                idx[b, h] = -1
            for t in range(1, n):
                for h in range(H):
                    p[b, h] += y[b, t, h]
            for h in range(H):
                p[b, h] /= n
        else:
            for h in range(H):
                p[b, h] = y[b, 0, h]
                idx[b, h] = 0
            for t in range(1, n):
                for h in range(H):
                    if y[b, t, h] > p[b, h]:       # strict: the first maximum wins, as np.argmax
                        p[b, h] = y[b, t, h]
                        idx[b, h] = t
    return p, idx


@njit(parallel=True, cache=True)
def _pool_backward(dp, lengths, mode, idx, T):
    # dp: (B, H)   lengths: (B,)   idx: (B, H)   -> dy: (B, T, H), zero at t >= lengths[b]
    B, H = dp.shape
    dy = np.zeros((B, T, H), dtype=dp.dtype)
    for b in prange(B):
        n = lengths[b]
        if mode == 0:
            for h in range(H):
                dy[b, n - 1, h] = dp[b, h]
        elif mode == 1:
            for t in range(n):
                for h in range(H):
                    dy[b, t, h] = dp[b, h] / n
        else:
            for h in range(H):
                dy[b, idx[b, h], h] = dp[b, h]
    return dy


def _pool_code(mode):
    try:
        return _POOL_CODES[mode]
    except (KeyError, TypeError):
        raise ValueError(f"mode: expected one of 'last', 'mean', 'max', got {mode!r}") from None


def pool_forward(y, lengths, mode):
    # y: (B, T, H)   lengths: (B,) int64   -> p (B, H), idx (B, H) int64
    return _pool_forward(y, lengths, _pool_code(mode))


def pool_backward(dp, lengths, mode, idx, T):
    # dp: (B, H)   idx: (B, H)   -> dy (B, T, H)
    return _pool_backward(dp, lengths, _pool_code(mode), idx, int(T))


# ---------------------------------------------------------------- losses (weighted means)

@njit(parallel=True, cache=True)
def _softmax_cross_entropy(logits, targets, w, wsum):
    # logits: (N, C)   targets: (N,) int64   w: (N,)   -> loss, dlogits (N, C)
    N, C = logits.shape
    per = np.empty(N, dtype=np.float64)
    d = np.empty((N, C), dtype=logits.dtype)
    for i in prange(N):
        m = np.float64(logits[i, 0])
        for c in range(1, C):
            if logits[i, c] > m:
                m = np.float64(logits[i, c])
        s = 0.0
        for c in range(C):
            e = np.exp(np.float64(logits[i, c]) - m)       # exponent <= 0: no overflow
            d[i, c] = e                                     # one exp per logit, rescaled below
            s += e
        lse = m + np.log(s)
        ti = targets[i]
        wi = np.float64(w[i])
        per[i] = wi * (lse - np.float64(logits[i, ti]))
        scale = wi / wsum
        r = scale / s                                       # softmax * scale = e * r
        for c in range(C):
            d[i, c] = np.float64(d[i, c]) * r
        d[i, ti] = np.float64(d[i, ti]) - scale
    return per.sum() / wsum, d


@njit(parallel=True, cache=True)
def _bce_with_logits(logits, targets, w, wsum):
    # logits, targets, w: (N,)   -> loss, dlogits (N,)
    N = logits.shape[0]
    per = np.empty(N, dtype=np.float64)
    d = np.empty(N, dtype=logits.dtype)
    for i in prange(N):
        x = np.float64(logits[i])
        t = np.float64(targets[i])
        wi = np.float64(w[i])
        e = np.exp(-abs(x))                                 # in (0, 1]
        per[i] = wi * (max(x, 0.0) - x * t + np.log1p(e))
        sig = 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)
        d[i] = (sig - t) * (wi / wsum)
    return per.sum() / wsum, d


@njit(parallel=True, cache=True)
def _mse(pred, target, w, denom):
    # pred, target: (N, K)   w: (N,)   denom = K * sum(w)   -> loss, dpred (N, K)
    N, K = pred.shape
    per = np.empty(N, dtype=np.float64)
    d = np.empty((N, K), dtype=pred.dtype)
    for i in prange(N):
        wi = np.float64(w[i])
        scale = 2.0 * wi / denom
        acc = 0.0
        for k in range(K):
            diff = np.float64(pred[i, k]) - np.float64(target[i, k])
            acc += diff * diff
            d[i, k] = diff * scale
        per[i] = wi * acc
    return per.sum() / denom, d


def _weights(weight, n, dtype):
    w = np.ones(n, dtype=dtype) if weight is None else weight
    return w, float(w.sum(dtype=np.float64))


def softmax_cross_entropy(logits, targets, weight):
    # logits: (N, C)   targets: (N,) int64   weight: (N,) or None   -> loss (float), dlogits (N, C)
    w, wsum = _weights(weight, logits.shape[0], logits.dtype)
    loss, d = _softmax_cross_entropy(logits, targets, w, wsum)
    return float(loss), d


def bce_with_logits(logits, targets, weight):
    # logits, targets: (N,)   weight: (N,) or None   -> loss (float), dlogits (N,)
    w, wsum = _weights(weight, logits.shape[0], logits.dtype)
    loss, d = _bce_with_logits(logits, targets, w, wsum)
    return float(loss), d


def mse(pred, target, weight):
    # pred, target: (N, K)   weight: (N,) or None   -> loss (float), dpred (N, K)
    w, wsum = _weights(weight, pred.shape[0], pred.dtype)
    loss, d = _mse(pred, target, w, pred.shape[1] * wsum)
    return float(loss), d


# ---------------------------------------------------------------- dropout

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(parallel=True, cache=True)
def dropout_keep_mask(seed, threshold, scale, out):
    # out (n,) <- scale where the 53-bit hash of (seed, i) is >= threshold, else 0.
    # The hash is splitmix64 (Steele et al. 2014) of seed + i * golden: a counter-based
    # stream, so the elements are drawn in parallel and the mask is a function of the seed
    # alone. threshold = p * 2**53 makes an entry 0 with probability p.
    s = np.uint64(seed)
    for i in prange(out.shape[0]):
        z = s + np.uint64(i) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        out[i] = scale if (z >> np.uint64(11)) >= threshold else 0

@njit(parallel=True, cache=True)
def _mul_mask(x, mask):
    # x, mask: (N,) flat   -> x * mask
    out = np.empty_like(x)
    for i in prange(x.shape[0]):
        out[i] = x[i] * mask[i]
    return out


def dropout_forward(x, mask):
    # x, mask: same shape; mask holds 0 or 1/(1-p)
    return _mul_mask(x.ravel(), mask.ravel()).reshape(x.shape)


def dropout_backward(dy, mask):
    # dy, mask: same shape
    return _mul_mask(dy.ravel(), mask.ravel()).reshape(dy.shape)
