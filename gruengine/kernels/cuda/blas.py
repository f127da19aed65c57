"""Dense building blocks on device arrays: a tiled shared-memory GEMM, column sums, transpose.

These take and return device arrays only; the public ops wrap them.
"""
import numpy as np
from numba import cuda, float64

from . import launch

# Two GEMM kernels; shared-array shapes must be compile-time literals, so these are
# constants, not launch settings (launch.GEMM_BLOCKED_MIN picks the kernel per call).
# gemm_kernel: (TILE, TILE) threads, one output each: for skinny products (a few batch rows)
TILE = 16
TILE_PAD = 17          # padded rows: no bank conflicts on the transposed loads
# gemm_blocked_kernel: (16, 16) threads, each a (4, 4) register block of a (64, 64) tile
BM = 64
BM_PAD = 65
BK = 16
BK_PAD = 17
RT = 4                 # register tile edge: BM = 16 * RT
# colsum_partial_kernel: blocks of (CS_COLS columns, CS_ROWS row-strided threads)
CS_COLS = 32
CS_ROWS = 8


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
def gemm_blocked_kernel(A, B, C, bias, M, N, K, trans_a, trans_b, accumulate, use_bias):
    # C: (M, N) = [C +] op(A) @ op(B) [+ bias]; arguments as gemm_kernel
    # block (16, 16) threads computes a (BM, BM) tile of C; thread (tx, ty) owns the
    # outputs (m0 + ty + 16 i, n0 + tx + 16 j), i, j < RT: stores along n are coalesced
    As = cuda.shared.array((BK, BM_PAD), dtype=C.dtype)      # As[k][m]
    Bs = cuda.shared.array((BK, BM_PAD), dtype=C.dtype)      # Bs[k][n]
    acc = cuda.local.array((RT, RT), dtype=C.dtype)
    a_reg = cuda.local.array(RT, dtype=C.dtype)
    b_reg = cuda.local.array(RT, dtype=C.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * 16 + tx
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BM
    zero = C.dtype.type(0)
    for i in range(RT):
        for j in range(RT):
            acc[i, j] = zero
    for k0 in range(0, K, BK):
        # each tile is BK * BM = 1024 elements, 4 per thread, read along the contiguous axis
        for e in range(RT):
            idx = tid + e * 256
            if trans_a:                       # A (K, M): m fastest
                kk = idx // BM
                mm = idx - kk * BM
            else:                             # A (M, K): k fastest
                mm = idx // BK
                kk = idx - mm * BK
            m = m0 + mm
            k = k0 + kk
            if m < M and k < K:
                As[kk, mm] = A[k, m] if trans_a else A[m, k]
            else:
                As[kk, mm] = zero
            if trans_b:                       # B (N, K): k fastest
                nn = idx // BK
                kk = idx - nn * BK
            else:                             # B (K, N): n fastest
                kk = idx // BM
                nn = idx - kk * BM
            n = n0 + nn
            k = k0 + kk
            if n < N and k < K:
                Bs[kk, nn] = B[n, k] if trans_b else B[k, n]
            else:
                Bs[kk, nn] = zero
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(RT):
                a_reg[i] = As[kk, ty + 16 * i]
                b_reg[i] = Bs[kk, tx + 16 * i]
            for i in range(RT):
                for j in range(RT):
                    acc[i, j] += a_reg[i] * b_reg[j]
        cuda.syncthreads()
    for i in range(RT):
        m = m0 + ty + 16 * i
        if m < M:
            for j in range(RT):
                n = n0 + tx + 16 * j
                if n < N:
                    v = acc[i, j]
                    if use_bias:
                        v += bias[n]
                    if accumulate:
                        C[m, n] += v
                    else:
                        C[m, n] = v


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
def colsum_partial_kernel(A, partial, M, N, chunk):
    # A: (M, N) -> partial: (chunks, N), partial[c, n] = sum of A[c*chunk : (c+1)*chunk, n]
    # block (CS_COLS, CS_ROWS): threads of one column stride the chunk's rows, then thread
    # row 0 adds the CS_ROWS partial sums in a fixed order
    sh = cuda.shared.array((CS_ROWS, CS_COLS), dtype=partial.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n = cuda.blockIdx.x * CS_COLS + tx
    c = cuda.blockIdx.y
    stop = min(M, (c + 1) * chunk)
    acc = partial.dtype.type(0)
    if n < N:
        for m in range(c * chunk + ty, stop, CS_ROWS):
            acc += A[m, n]
    sh[ty, tx] = acc
    cuda.syncthreads()
    if ty == 0 and n < N:
        total = sh[0, tx]
        for r in range(1, CS_ROWS):
            total += sh[r, tx]
        partial[c, n] = total


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
    b = bias if bias is not None else _dummy(C.dtype)
    flags = (bool(trans_a), bool(trans_b), bool(accumulate), bias is not None)
    if min(M, N) >= launch.GEMM_BLOCKED_MIN:
        grid = ((N + BM - 1) // BM, (M + BM - 1) // BM)
        gemm_blocked_kernel[grid, (16, 16)](A, B, C, b, M, N, K, *flags)
    else:
        grid = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE)
        gemm_kernel[grid, (TILE, TILE)](A, B, C, b, M, N, K, *flags)
    return C


def colsum(A, out, accumulate=False):
    """out = [out +] A.sum(axis=0) on device arrays.

    Tall inputs (B*T rows) are summed in two passes: row chunks in parallel into a
    (chunks, N) partial array, then the partials; both in a fixed order (deterministic).
    """
    M, N = A.shape
    if M > launch.COLSUM_CHUNK:
        chunks = (M + launch.COLSUM_CHUNK - 1) // launch.COLSUM_CHUNK
        partial = cuda.device_array((chunks, N), dtype=out.dtype)
        grid = ((N + CS_COLS - 1) // CS_COLS, chunks)
        colsum_partial_kernel[grid, (CS_COLS, CS_ROWS)](A, partial, M, N, int(launch.COLSUM_CHUNK))
        A, M = partial, chunks
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


# ----------------------------------------------------------------------------- copies and sums

@cuda.jit(cache=True)
def copy2d_kernel(src, dst, M, N):
    # src: (M, N) -> dst: (M, N); either may be a strided view (a column slice)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, M * N, stride):
        m = i // N
        n = i - m * N
        dst[m, n] = src[m, n]


@cuda.jit(cache=True)
def add_kernel(a, out, n):
    # a, out: (n,) flat ; out += a
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        out[i] += a[i]


def copy2d(src, dst):
    """dst[...] = src for 2-D device arrays of one shape (views with any strides)."""
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"copy2d: expected equal shapes, got {tuple(src.shape)} and "
                         f"{tuple(dst.shape)}")
    M, N = dst.shape
    if M * N:
        blocks, tpb = launch.grid_1d(M * N)
        copy2d_kernel[blocks, tpb](src, dst, M, N)
    return dst


def add_into(out, a):
    """out += a for contiguous device arrays of one shape."""
    if tuple(a.shape) != tuple(out.shape):
        raise ValueError(f"add_into: expected equal shapes, got {tuple(a.shape)} and "
                         f"{tuple(out.shape)}")
    n = out.size
    if n:
        blocks, tpb = launch.grid_1d(n)
        add_kernel[blocks, tpb](a.reshape(n), out.reshape(n), n)
    return out
