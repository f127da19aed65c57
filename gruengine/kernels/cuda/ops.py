"""The ops around the recurrent core on CUDA: embedding, linear, pooling, losses, dropout.

Same names, argument order and results as ``gruengine.reference.ops``. NumPy inputs give
NumPy outputs; device-array inputs (the first array argument decides) give device arrays.
Losses return ``(loss, dgrad)`` with ``loss`` a Python float (accumulated in float64 by a
block reduction, then a fixed-order host sum of the per-block partials).
"""
import math

import numpy as np
from numba import cuda, float64

from . import blas, launch

__all__ = [
    "embedding_forward", "embedding_backward",
    "linear_forward", "linear_backward",
    "pool_forward", "pool_backward",
    "softmax_cross_entropy", "bce_with_logits", "mse",
    "dropout_forward", "dropout_backward",
]

POOL_MODES = ("last", "mean", "max")


# ----------------------------------------------------------------------------- kernels

@cuda.jit(cache=True)
def embedding_forward_kernel(ids, W, out):
    # ids: (N,) int64   W: (V, E)   out: (N, E)
    E = W.shape[1]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, ids.shape[0] * E, stride):
        n = i // E
        e = i - n * E
        out[n, e] = W[ids[n], e]


@cuda.jit(cache=True)
def embedding_backward_kernel(dy, order, starts, rows, padding_idx, dW):
    # dy: (N, E)   order: (N,) token positions sorted by id (stable)
    # starts: (U+1,) segment bounds in order   rows: (U,) the id of each segment   dW: (V, E)
    # one thread owns one (row, e): no atomics, a fixed summation order
    E = dy.shape[1]
    U = rows.shape[0]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, U * E, stride):
        u = i // E
        e = i - u * E
        if rows[u] == padding_idx:
            continue
        acc = dW.dtype.type(0)
        for k in range(starts[u], starts[u + 1]):
            acc += dy[order[k], e]
        dW[rows[u], e] = acc


@cuda.jit(cache=True)
def pool_forward_kernel(y, lengths, mode, p, idx):
    # y: (B, T, H)  lengths: (B,)  mode: 0 last, 1 mean, 2 max  -> p: (B, H), idx: (B, H) int64
    B = y.shape[0]
    H = y.shape[2]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, B * H, stride):
        b = i // H
        h = i - b * H
        n = lengths[b]
        if mode == 0:
            p[b, h] = y[b, n - 1, h]
            idx[b, h] = n - 1
        elif mode == 1:
            acc = y.dtype.type(0)
            for t in range(n):
                acc += y[b, t, h]
            p[b, h] = acc / y.dtype.type(n)
            idx[b, h] = -1
        else:
            best = y[b, 0, h]
            arg = 0
            for t in range(1, n):
                if y[b, t, h] > best:    # strict: the first maximum wins, as numpy.argmax
                    best = y[b, t, h]
                    arg = t
            p[b, h] = best
            idx[b, h] = arg


@cuda.jit(cache=True)
def pool_backward_kernel(dp, lengths, mode, idx, dy):
    # dp: (B, H)  lengths: (B,)  idx: (B, H) from pool_forward  -> dy: (B, T, H), zero at padding
    B = dy.shape[0]
    T = dy.shape[1]
    H = dy.shape[2]
    zero = dy.dtype.type(0)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, B * T * H, stride):
        b = i // (T * H)
        rem = i - b * T * H
        t = rem // H
        h = rem - t * H
        n = lengths[b]
        v = zero
        if mode == 0:
            if t == n - 1:
                v = dp[b, h]
        elif mode == 1:
            if t < n:
                v = dp[b, h] / dy.dtype.type(n)
        elif t == idx[b, h]:
            v = dp[b, h]
        dy[b, t, h] = v


@cuda.jit(cache=True)
def softmax_xent_kernel(logits, targets, weight, use_weight, inv_wsum, dlogits, partial):
    # logits: (N, C)  targets: (N,) int64  weight: (N,) (ignored unless use_weight)
    # -> dlogits: (N, C) ; partial: (blocks,) float64 sums of w_i * (lse_i - logit_i[t_i])
    # one thread owns one row
    N = logits.shape[0]
    C = logits.shape[1]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    acc = 0.0
    for i in range(start, N, stride):
        m = logits[i, 0]
        for c in range(1, C):
            m = max(m, logits[i, c])
        s = logits.dtype.type(0)
        for c in range(C):
            s += math.exp(logits[i, c] - m)
        lse = math.log(s)
        w = weight[i] if use_weight else logits.dtype.type(1)
        ti = targets[i]
        acc += float64(w) * (float64(lse) - float64(logits[i, ti] - m))
        scale = w * inv_wsum
        for c in range(C):
            g = math.exp(logits[i, c] - m - lse)
            if c == ti:
                g -= 1
            dlogits[i, c] = g * scale
    launch.block_reduce_store(acc, partial)


@cuda.jit(cache=True)
def bce_kernel(logits, targets, weight, use_weight, inv_wsum, dlogits, partial):
    # logits, targets: (N,)  weight: (N,)  -> dlogits: (N,) ; partial: (blocks,) float64
    one = logits.dtype.type(1)
    zero = logits.dtype.type(0)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    acc = 0.0
    for i in range(start, logits.shape[0], stride):
        x = logits[i]
        t = targets[i]
        w = weight[i] if use_weight else one
        e = math.exp(-abs(x))                    # in (0, 1]: no overflow
        per = max(x, zero) - x * t + math.log1p(e)
        acc += float64(w) * float64(per)
        sig = one / (one + e) if x >= zero else e / (one + e)
        dlogits[i] = (sig - t) * (w * inv_wsum)
    launch.block_reduce_store(acc, partial)


@cuda.jit(cache=True)
def mse_kernel(pred, target, weight, use_weight, inv_denom, dpred, partial):
    # pred, target: (N, K)  weight: (N,)  -> dpred: (N, K) ; partial: (blocks,) float64
    K = pred.shape[1]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    acc = 0.0
    for i in range(start, pred.shape[0] * K, stride):
        n = i // K
        k = i - n * K
        d = pred[n, k] - target[n, k]
        w = weight[n] if use_weight else pred.dtype.type(1)
        acc += float64(w) * float64(d) * float64(d)
        dpred[n, k] = 2 * d * (w * inv_denom)
    launch.block_reduce_store(acc, partial)


@cuda.jit(cache=True)
def multiply_kernel(a, b, out):
    # a, b, out: (n,) flat
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        out[i] = a[i] * b[i]


# ----------------------------------------------------------------------------- launchers

def embedding_forward(ids, W):
    """Rows of ``W`` (V, E) picked by ``ids`` (B, T) int64 in [0, V) -> (B, T, E)."""
    on_device = launch.is_device_array(W)
    launch.check_input("W", W, (None, None))
    dt = launch.check_float("W", W)
    V, E = W.shape
    launch.check_input("ids", ids, (None, None), np.int64)
    if isinstance(ids, np.ndarray) and ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"ids: expected values in [0, {V}), got min {int(ids.min())}, "
                         f"max {int(ids.max())}")
    B, T = ids.shape
    ids_d = launch.as_device(ids)
    out = cuda.device_array((B, T, E), dtype=dt)
    blocks, tpb = launch.grid_1d(B * T * E)
    embedding_forward_kernel[blocks, tpb](ids_d.reshape(B * T), launch.as_device(W),
                                          out.reshape(B * T, E))
    return launch.to_output(out, on_device)


def embedding_backward(dy, ids, num_embeddings, padding_idx):
    """dW (V, E): the rows of ``dy`` (B, T, E) summed by id; row ``padding_idx`` stays 0.

    The ids are sorted on the host (they are small) so that each thread owns one output
    row element: deterministic, no atomics.
    """
    on_device = launch.is_device_array(dy)
    launch.check_input("dy", dy, (None, None, None))
    dt = launch.check_float("dy", dy)
    B, T, E = dy.shape
    launch.check_input("ids", ids, (B, T), np.int64)
    V = int(num_embeddings)
    ids_h = ids if isinstance(ids, np.ndarray) else ids.copy_to_host()
    flat = ids_h.reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= V):
        raise ValueError(f"ids: expected values in [0, {V}), got min {int(flat.min())}, "
                         f"max {int(flat.max())}")
    order = np.argsort(flat, kind="stable").astype(np.int64)
    rows, starts = np.unique(flat[order], return_index=True)
    starts = np.append(starts, flat.size).astype(np.int64)
    dW = blas.zeros((V, E), dt)
    if rows.size:
        blocks, tpb = launch.grid_1d(rows.size * E)
        embedding_backward_kernel[blocks, tpb](
            launch.as_device(dy).reshape(B * T, E), cuda.to_device(order), cuda.to_device(starts),
            cuda.to_device(rows.astype(np.int64)), int(padding_idx), dW)
    return launch.to_output(dW, on_device)


def linear_forward(x, W, b):
    """x (N, In) @ W.T (In, Out) + b (Out,) or None -> (N, Out)."""
    on_device = launch.is_device_array(x)
    launch.check_input("x", x, (None, None))
    dt = launch.check_float("x", x)
    N, In = x.shape
    launch.check_input("W", W, (None, In), dt)
    Out = W.shape[0]
    if b is not None:
        launch.check_input("b", b, (Out,), dt)
    y = cuda.device_array((N, Out), dtype=dt)
    blas.gemm(launch.as_device(x), launch.as_device(W), y,
              bias=None if b is None else launch.as_device(b), trans_b=True)
    return launch.to_output(y, on_device)


def linear_backward(dy, x, W):
    """-> dx (N, In) = dy @ W, dW (Out, In) = dy.T @ x, db (Out,) = dy summed over rows."""
    on_device = launch.is_device_array(dy)
    launch.check_input("dy", dy, (None, None))
    dt = launch.check_float("dy", dy)
    N, Out = dy.shape
    launch.check_input("x", x, (N, None), dt)
    In = x.shape[1]
    launch.check_input("W", W, (Out, In), dt)
    dy_d, x_d, W_d = launch.as_device(dy), launch.as_device(x), launch.as_device(W)
    dx = cuda.device_array((N, In), dtype=dt)
    blas.gemm(dy_d, W_d, dx)
    dW = cuda.device_array((Out, In), dtype=dt)
    blas.gemm(dy_d, x_d, dW, trans_a=True)
    db = cuda.device_array((Out,), dtype=dt)
    blas.colsum(dy_d, db)
    return tuple(launch.to_output(a, on_device) for a in (dx, dW, db))


def _pool_mode(mode):
    if mode not in POOL_MODES:
        raise ValueError(f"mode: expected one of {POOL_MODES}, got {mode!r}")
    return POOL_MODES.index(mode)


def pool_forward(y, lengths, mode):
    """Pool (B, T, H) over the valid steps: 'last' | 'mean' | 'max' -> p (B, H), idx (B, H)."""
    on_device = launch.is_device_array(y)
    launch.check_input("y", y, (None, None, None))
    dt = launch.check_float("y", y)
    B, T, H = y.shape
    m = _pool_mode(mode)
    p = cuda.device_array((B, H), dtype=dt)
    idx = cuda.device_array((B, H), dtype=np.int64)
    blocks, tpb = launch.grid_1d(B * H)
    pool_forward_kernel[blocks, tpb](launch.as_device(y), launch.lengths_to_device(lengths, B, T), m, p, idx)
    return launch.to_output(p, on_device), launch.to_output(idx, on_device)


def pool_backward(dp, lengths, mode, idx, T):
    """dy (B, T, H) from dp (B, H): zero at padding and at steps the pooling did not use."""
    on_device = launch.is_device_array(dp)
    launch.check_input("dp", dp, (None, None))
    dt = launch.check_float("dp", dp)
    B, H = dp.shape
    m = _pool_mode(mode)
    launch.check_input("idx", idx, (B, H), np.int64)
    dy = cuda.device_array((B, int(T), H), dtype=dt)
    blocks, tpb = launch.grid_1d(B * int(T) * H)
    pool_backward_kernel[blocks, tpb](launch.as_device(dp), launch.lengths_to_device(lengths, B, int(T)), m,
                                      launch.as_device(idx), dy)
    return launch.to_output(dy, on_device)


def _weight_sum(weight, N, dt):
    """(device weight or dummy, use_weight, sum of weights)."""
    if weight is None:
        return blas._dummy(dt), False, float(N)
    launch.check_input("weight", weight, (N,), dt)
    if isinstance(weight, np.ndarray):
        s = float(weight.astype(np.float64).sum())
        w_d = cuda.to_device(weight)
    else:
        w_d = launch.as_device(weight)
        s = blas.device_sum(w_d)
    if not s > 0:
        raise ValueError(f"weight: expected a positive sum, got {s}")
    return w_d, True, s


def _reduce_launch(n):
    tpb = launch.reduce_threads()
    blocks = max(1, min(int(launch.MAX_BLOCKS), (n + tpb - 1) // tpb))
    return blocks, tpb, cuda.device_array(blocks, dtype=np.float64)


def softmax_cross_entropy(logits, targets, weight):
    """Weighted mean of -log softmax(logits)[target] -> (loss, dlogits (N, C))."""
    on_device = launch.is_device_array(logits)
    launch.check_input("logits", logits, (None, None))
    dt = launch.check_float("logits", logits)
    N, C = logits.shape
    launch.check_input("targets", targets, (N,), np.int64)
    if isinstance(targets, np.ndarray) and N and (targets.min() < 0 or targets.max() >= C):
        raise ValueError(f"targets: expected class indices in [0, {C}), got min "
                         f"{int(targets.min())}, max {int(targets.max())}")
    w_d, use_w, wsum = _weight_sum(weight, N, dt)
    dlogits = cuda.device_array((N, C), dtype=dt)
    blocks, tpb, partial = _reduce_launch(N)
    softmax_xent_kernel[blocks, tpb](launch.as_device(logits), launch.as_device(targets), w_d,
                                     use_w, dt.type(1.0 / wsum), dlogits, partial)
    return launch.finish_sum(partial) / wsum, launch.to_output(dlogits, on_device)


def bce_with_logits(logits, targets, weight):
    """Weighted mean binary cross-entropy on logits (N,) -> (loss, dlogits (N,))."""
    on_device = launch.is_device_array(logits)
    launch.check_input("logits", logits, (None,))
    dt = launch.check_float("logits", logits)
    N = logits.shape[0]
    launch.check_input("targets", targets, (N,), dt)
    w_d, use_w, wsum = _weight_sum(weight, N, dt)
    dlogits = cuda.device_array((N,), dtype=dt)
    blocks, tpb, partial = _reduce_launch(N)
    bce_kernel[blocks, tpb](launch.as_device(logits), launch.as_device(targets), w_d, use_w,
                            dt.type(1.0 / wsum), dlogits, partial)
    return launch.finish_sum(partial) / wsum, launch.to_output(dlogits, on_device)


def mse(pred, target, weight):
    """Weighted mean squared error over (N, K) -> (loss, dpred (N, K))."""
    on_device = launch.is_device_array(pred)
    launch.check_input("pred", pred, (None, None))
    dt = launch.check_float("pred", pred)
    N, K = pred.shape
    launch.check_input("target", target, (N, K), dt)
    w_d, use_w, wsum = _weight_sum(weight, N, dt)
    denom = K * wsum
    dpred = cuda.device_array((N, K), dtype=dt)
    blocks, tpb, partial = _reduce_launch(N * K)
    mse_kernel[blocks, tpb](launch.as_device(pred), launch.as_device(target), w_d, use_w,
                            dt.type(1.0 / denom), dpred, partial)
    return launch.finish_sum(partial) / denom, launch.to_output(dpred, on_device)


def _multiply(name, a, mask):
    on_device = launch.is_device_array(a)
    launch.check_input(name, a, (None,) * len(a.shape))
    dt = launch.check_float(name, a)
    launch.check_input("mask", mask, tuple(a.shape), dt)
    out = cuda.device_array(tuple(a.shape), dtype=dt)
    n = out.size
    if n:
        blocks, tpb = launch.grid_1d(n)
        multiply_kernel[blocks, tpb](launch.as_device(a).reshape(n),
                                     launch.as_device(mask).reshape(n), out.reshape(n))
    return launch.to_output(out, on_device)


def dropout_forward(x, mask):
    """x * mask (the mask already holds 0 or 1/(1-p))."""
    return _multiply("x", x, mask)


def dropout_backward(dy, mask):
    """dy * mask."""
    return _multiply("dy", dy, mask)
