"""GEMMs of the CPU cells on the ``_simd`` micro-kernels: tiles, blocked drivers, packing.

    gemm(M, N, K, A, a0, sa_i, sa_k, P, p0, sp_k, C, c0, ldc, accumulate)
        C[i, j] (+)= sum_k A[a0 + i*sa_i + k*sa_k] * P[p0 + k*sp_k + j],  i < M, j < N, k < K

Operands are addressed by flat offsets and strides into C-contiguous arrays, so a transposed
operand (sa_i = 1) or a block of columns of a wider array needs no copy; only P's columns
must be contiguous. ``gemm`` splits the rows of C into blocks across Numba's threads (each
block owns its rows: no reduction, the same bits for any thread count) and blocks K by
``KC`` so the micro-kernel's slivers of A and P stay in L1/L2.
``tile(...)`` is one micro-kernel call that picks the masked variant for a tail of columns.
"""
from numba import njit, prange

from ._simd import lanes, microkernel

__all__ = ["NV", "MR", "tile", "gemm", "gemm_serial"]

NV = 3                          # vectors per tile row (the GRU's three gates)
_mk = microkernel(NV)
_mk_tail = microkernel(NV, masked=True)
MR = _mk.MR
KC = 256                        # K block: a 256 x 48 float32 sliver of P is 48 KiB
_ROWS_PER_TASK = 64             # rows of C per parallel task (a multiple of every MR)


@njit(inline="always")
def tile(mr, A, a0, sa_i, sa_k, P, p0, sp_k, K, C, c0, ldc, nc, accumulate):
    # one mr x nc tile of C; nc < NV * lanes masks the loads of P and the stores of C
    if nc == NV * lanes(C):
        _mk(A, a0, sa_i, sa_k, mr, P, p0, sp_k, K, C, c0, ldc, lanes(C), nc, accumulate)
    else:
        _mk_tail(A, a0, sa_i, sa_k, mr, P, p0, sp_k, K, C, c0, ldc, lanes(C), nc,
                 accumulate)


@njit(inline="always")
def _rows(i_lo, i_hi, N, K, A, a0, sa_i, sa_k, P, p0, sp_k, C, c0, ldc, accumulate):
    # rows [i_lo, i_hi) of C, all its columns, K in blocks of KC
    NR = NV * lanes(C)
    for k0 in range(0, K, KC):
        kc = min(KC, K - k0)
        acc = accumulate or k0 > 0
        for j0 in range(0, N, NR):
            nc = min(NR, N - j0)
            for i0 in range(i_lo, i_hi, MR):
                tile(min(MR, i_hi - i0), A, a0 + i0 * sa_i + k0 * sa_k, sa_i, sa_k,
                     P, p0 + k0 * sp_k + j0, sp_k, kc, C, c0 + i0 * ldc + j0, ldc, nc, acc)


@njit(parallel=True, cache=True)
def gemm(M, N, K, A, a0, sa_i, sa_k, P, p0, sp_k, C, c0, ldc, accumulate):
    # C (M x N, row stride ldc) (+)= op(A) (M x K) @ P (K x N); see the module docstring
    ntask = (M + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in prange(ntask):
        i_lo = task * _ROWS_PER_TASK
        _rows(i_lo, min(M, i_lo + _ROWS_PER_TASK), N, K, A, a0, sa_i, sa_k, P, p0, sp_k,
              C, c0, ldc, accumulate)


@njit(cache=True)
def gemm_serial(M, N, K, A, a0, sa_i, sa_k, P, p0, sp_k, C, c0, ldc, accumulate):
    # gemm on the calling thread (inside a parallel region, or for small products)
    _rows(0, M, N, K, A, a0, sa_i, sa_k, P, p0, sp_k, C, c0, ldc, accumulate)
