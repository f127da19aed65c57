"""Dense building blocks on device arrays: a tiled shared-memory GEMM, column sums, transpose.

These take and return device arrays only; the public ops wrap them.
"""
import numpy as np
from numba import cuda, float64

from . import launch

# edge of the square GEMM tile: blocks are (TILE, TILE) threads, one output each.
# A compile-time constant (it sizes shared arrays), not a launch setting.
TILE = 16
# padded row of the shared tiles (no bank conflicts on the transposed loads); a literal,
# since shared-array shapes must be compile-time constants
TILE_PAD = 17


@cuda.jit(cache=True)
def gemm_kernel(A, B, C, bias, M, N, K, trans_a, trans_b, accumulate, use_bias):
    # C: (M, N) = [C +] op(A) @ op(B) [+ bias]
    # op(A): (M, K), A is (M, K), or (K, M) when trans_a
    # op(B): (K, N), B is (K, N), or (N, K) when trans_b
    # bias: (N,) (ignored unless use_bias)
    As = cuda.shared.array((TILE, TILE_PAD), dtype=C.dtype)   # As[m][k]
    Bs = cuda.shared.array((TILE, TILE_PAD), dtype=C.dtype)   # Bs[k][n]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    m0 = cuda.blockIdx.y * TILE
    n0 = cuda.blockIdx.x * TILE
    acc = C.dtype.type(0)
    for k0 in range(0, K, TILE):
        # loads run along the contiguous axis of each operand (coalesced)
        if trans_a:
            k = k0 + ty
            m = m0 + tx
            As[tx, ty] = A[k, m] if (k < K and m < M) else 0
        else:
            m = m0 + ty
            k = k0 + tx
            As[ty, tx] = A[m, k] if (m < M and k < K) else 0
        if trans_b:
            n = n0 + ty
            k = k0 + tx
            Bs[tx, ty] = B[n, k] if (n < N and k < K) else 0
        else:
            k = k0 + ty
            n = n0 + tx
            Bs[ty, tx] = B[k, n] if (k < K and n < N) else 0
        cuda.syncthreads()
        for kk in range(TILE):
            acc += As[ty, kk] * Bs[kk, tx]
        cuda.syncthreads()
    m = m0 + ty
    n = n0 + tx
    if m < M and n < N:
        if use_bias:
            acc += bias[n]
        if accumulate:
            C[m, n] += acc
        else:
            C[m, n] = acc


@cuda.jit(cache=True)
def colsum_kernel(A, out, M, N, accumulate):
    # A: (M, N) -> out: (N,) = [out +] sum over rows; one thread owns one column
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for n in range(start, N, stride):
        s = out.dtype.type(0)
        for m in range(M):
            s += A[m, n]
        if accumulate:
            out[n] += s
        else:
            out[n] = s


@cuda.jit(cache=True)
def transpose_kernel(A, out, M, N):
    # A: (M, N) -> out: (N, M)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, M * N, stride):
        m = i // N
        n = i - m * N
        out[n, m] = A[m, n]


@cuda.jit(cache=True)
def fill_kernel(out, value, n):
    # out: (n,) flat
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        out[i] = value


_dummies = {}


def _dummy(dtype):
    dt = np.dtype(dtype)
    if dt not in _dummies:
        _dummies[dt] = cuda.to_device(np.zeros(1, dtype=dt))
    return _dummies[dt]


def gemm(A, B, C, bias=None, trans_a=False, trans_b=False, accumulate=False):
    """C = [C +] op(A) @ op(B) [+ bias] on device arrays; shapes are checked here."""
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    a_m = A.shape[1] if trans_a else A.shape[0]
    b_k, b_n = (B.shape[1], B.shape[0]) if trans_b else (B.shape[0], B.shape[1])
    if a_m != M or b_k != K or b_n != N:
        raise ValueError(f"gemm: shapes do not chain: op(A) ({a_m}, {K}) @ op(B) ({b_k}, {b_n}) "
                         f"-> C {tuple(C.shape)}")
    if M == 0 or N == 0:
        return C
    if K == 0 and not accumulate:
        fill(C.reshape(M * N) if _is_contiguous(C) else C, 0.0)
    grid = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE)
    b = bias if bias is not None else _dummy(C.dtype)
    gemm_kernel[grid, (TILE, TILE)](A, B, C, b, M, N, K, bool(trans_a), bool(trans_b),
                                    bool(accumulate), bias is not None)
    return C


def colsum(A, out, accumulate=False):
    """out = [out +] A.sum(axis=0) on device arrays."""
    M, N = A.shape
    blocks, tpb = launch.grid_1d(N)
    colsum_kernel[blocks, tpb](A, out, M, N, bool(accumulate))
    return out


def transpose(A):
    """A new device array holding A.T (C-contiguous)."""
    M, N = A.shape
    out = cuda.device_array((N, M), dtype=A.dtype)
    blocks, tpb = launch.grid_1d(M * N)
    transpose_kernel[blocks, tpb](A, out, M, N)
    return out


def fill(out, value):
    """Set every element of a contiguous device array to ``value``."""
    flat = out.reshape(out.size) if out.ndim != 1 else out
    blocks, tpb = launch.grid_1d(flat.shape[0])
    fill_kernel[blocks, tpb](flat, value, flat.shape[0])
    return out


def zeros(shape, dtype):
    """A device array of zeros (``cuda.device_array`` does not initialise memory)."""
    out = cuda.device_array(shape, dtype=dtype)
    if out.size:
        fill(out, 0.0)
    return out


def _is_contiguous(a):
    return bool(a.flags["C_CONTIGUOUS"]) if hasattr(a, "flags") else True


# ----------------------------------------------------------------------------- sums

@cuda.jit(cache=True)
def sum_kernel(a, partial, square):
    # a: (n,) flat  -> partial: (blocks,) float64 per-block sums of a (or of a*a)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    acc = 0.0
    for i in range(start, a.shape[0], stride):
        v = float64(a[i])
        acc += v * v if square else v
    launch.block_reduce_store(acc, partial)


def device_sum(a, square=False):
    """float(sum(a)) (or of a*a) for a device array, accumulated in float64."""
    flat = a.reshape(a.size) if a.ndim != 1 else a
    n = flat.shape[0]
    tpb = launch.reduce_threads()
    blocks = max(1, min(int(launch.MAX_BLOCKS), (n + tpb - 1) // tpb))
    partial = cuda.device_array(blocks, dtype=np.float64)
    sum_kernel[blocks, tpb](flat, partial, bool(square))
    return launch.finish_sum(partial)
