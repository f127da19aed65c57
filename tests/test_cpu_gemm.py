"""The CPU GEMM on the SIMD micro-kernels (kernels/cpu/_simd.py, _gemm.py) and the packed
layout helpers (_packed.py), against NumPy in float64 on fresh random inputs of odd sizes:
tails of rows and columns, K = 1, transposed operands, blocks of wider arrays, accumulation."""
import numpy as np
import pytest

from gruengine.kernels.cpu import _gemm, _packed
from gruengine.kernels.cpu._simd import VW32, VW64, tile_rows, vector_width

F32, F64 = np.float32, np.float64


def rel_err(a, b):
    return float(np.abs(np.asarray(a, F64) - b).max() / max(np.abs(b).max(), 1e-300))


def tol(dtype, K):
    # a K-term dot product in the dtype, against float64
    return 4 * np.sqrt(K) * np.finfo(dtype).eps


def assert_dot_close(got, A, P, dtype, C0=None):
    # |got - A @ P| <= K eps (|A| @ |P|): the rounding bound of K-term dot products
    # (plus C0's own rounding when accumulating)
    A, P = A.astype(F64), P.astype(F64)
    want = A @ P + (0 if C0 is None else C0.astype(F64))
    bound = A.shape[1] * np.finfo(dtype).eps * (np.abs(A) @ np.abs(P) + (
        0 if C0 is None else np.abs(C0.astype(F64)))) + np.finfo(dtype).tiny
    assert np.all(np.abs(got.astype(F64) - want) <= bound)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (5, 7, 3), (9, 49, 1), (17, 48, 130),
                                   (70, 100, 301), (3, 200, 513)])
def test_gemm_matches_numpy(dtype, M, N, K):
    rng = np.random.default_rng([M, N, K, dtype == F32])
    A = rng.standard_normal((M, K)).astype(dtype)
    P = rng.standard_normal((K, N)).astype(dtype)
    want = A.astype(F64) @ P.astype(F64)
    C = np.full((M, N), np.nan, dtype)
    _gemm.gemm(M, N, K, A, 0, K, 1, P, 0, N, C, 0, N, False)
    assert C.dtype == dtype and rel_err(C, want) < tol(dtype, K)
    # the transposed operand: A stored (K, M), read with sa_i = 1, sa_k = M
    At = np.ascontiguousarray(A.T)
    C2 = np.full((M, N), np.nan, dtype)
    _gemm.gemm(M, N, K, At, 0, 1, M, P, 0, N, C2, 0, N, False)
    assert rel_err(C2, want) < tol(dtype, K)
    # the serial driver computes the same bits as the parallel one
    C3 = np.full((M, N), np.nan, dtype)
    _gemm.gemm_serial(M, N, K, A, 0, K, 1, P, 0, N, C3, 0, N, False)
    np.testing.assert_array_equal(C3, C)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_gemm_blocks_of_wider_arrays_and_accumulate(dtype):
    # C's block [r0:r0+M, c0:c0+N] += A's columns [a0:a0+K] @ P's block; nothing else changes
    rng = np.random.default_rng(11 + (dtype == F32))
    M, N, K = 21, 37, 45
    A = rng.standard_normal((M + 3, K + 10)).astype(dtype)
    P = rng.standard_normal((K + 2, N + 9)).astype(dtype)
    C0 = rng.standard_normal((M + 5, N + 11)).astype(dtype)
    C = C0.copy()
    r0, c0, a0, pr, pc = 2, 5, 7, 1, 4
    ld_a, ld_p, ld_c = A.shape[1], P.shape[1], C.shape[1]
    _gemm.gemm(M, N, K, A, a0, ld_a, 1, P, pr * ld_p + pc, ld_p, C, r0 * ld_c + c0, ld_c, True)
    want = C0.astype(F64)
    want[r0:r0 + M, c0:c0 + N] += (A[:M, a0:a0 + K].astype(F64)
                                   @ P[pr:pr + K, pc:pc + N].astype(F64))
    assert rel_err(C, want) < tol(dtype, K + 1)
    outside = np.ones(C.shape, bool)
    outside[r0:r0 + M, c0:c0 + N] = False
    np.testing.assert_array_equal(C[outside], C0[outside])


def test_vector_width_and_tiles_fit_the_registers():
    assert VW64 * 2 == VW32 and VW32 in (4, 8, 16)
    assert vector_width(np.dtype(F32)) == VW32 and vector_width(np.dtype(F64)) == VW64
    for nv in (1, 2, 3, 4):
        assert 1 <= tile_rows(nv) <= 8


@pytest.mark.parametrize("reverse", [False, True])
def test_gather_and_scatter_follow_the_packed_layout(reverse):
    rng = np.random.default_rng(3 + reverse)
    B, T, F = 5, 7, 3
    lengths = np.array([3, 7, 1, 7, 5])
    x = rng.standard_normal((B, T, F))
    pk = _packed.Packing(lengths, T)
    Xp = _packed.gather(x, pk, reverse)
    assert pk.N == lengths.sum() and Xp.shape == (pk.N, F) and not pk.full
    # step s owns packed rows off[s] .. off[s] + nb[s] - 1, longest rows first
    for s in range(pk.steps):
        for b in range(pk.nb[s]):
            row = pk.perm[b]
            t = lengths[row] - 1 - s if reverse else s
            np.testing.assert_array_equal(Xp[pk.off[s] + b], x[row, t])
    back = _packed.scatter(Xp, pk, reverse, T)
    valid = np.arange(T)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(back[valid], x[valid])
    assert np.all(back[~valid] == 0)


def test_row_blocks_cover_the_rows_in_whole_tiles(monkeypatch):
    rng = np.random.default_rng(4)
    for threads in (1, 2, 3):
        monkeypatch.setattr(_packed.numba, "get_num_threads", lambda: threads)
        for B in (1, 5, 8, 64, 100):
            for mr in (4, 6, 8):
                for lengths in (np.full(B, 9), rng.integers(1, 50, B)):
                    pk = _packed.Packing(lengths, 50)
                    cuts = _packed.row_blocks(pk, mr)
                    assert cuts[0] == 0 and cuts[-1] == B and np.all(np.diff(cuts) > 0)
                    assert np.all(cuts[1:-1] % mr == 0)
                    assert len(cuts) - 1 == min(threads, -(-B // mr))
    # ragged rows: the blocks share the (step, row) pairs, not the rows
    monkeypatch.setattr(_packed.numba, "get_num_threads", lambda: 2)
    lengths = np.array([100] * 8 + [10] * 56)
    pk = _packed.Packing(lengths, 100)
    cuts = _packed.row_blocks(pk, 8)
    work = [pk.lengths[pk.perm][a:b].sum() for a, b in zip(cuts[:-1], cuts[1:])]
    assert max(work) < 0.7 * sum(work)


def test_gate_panels_lay_out_the_gates_of_each_tile():
    rng = np.random.default_rng(5)
    H, K = 19, 6
    W = rng.standard_normal((3 * H, K)).astype(F32)
    VW = vector_width(W.dtype)
    P = _packed.gate_panels(W, (2, 0), H)
    HT = -(-H // VW)
    assert P.shape == (HT, K, 2 * VW)
    for jt in range(HT):
        for g, gate in enumerate((2, 0)):
            for u in range(VW):
                unit = jt * VW + u
                want = W[gate * H + unit] if unit < H else np.zeros(K, F32)
                np.testing.assert_array_equal(P[jt, :, g * VW + u], want)


@pytest.mark.parametrize("vw32,registers", [(8, 16), (4, 16)], ids=["avx2", "sse-neon"])
@pytest.mark.parametrize("nv", [1, 3, 4])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_microkernel_of_other_cpus(vw32, registers, nv, dtype):
    # the kernels another CPU would build (narrower vectors, 16 registers), run here: every
    # row count up to MR, full and masked column tails, transposed A, accumulation
    from numba import njit
    from gruengine.kernels.cpu._simd import microkernel
    full = microkernel(nv, vw32=vw32, registers=registers)
    tail = microkernel(nv, masked=True, vw32=vw32, registers=registers)
    MR = full.MR
    assert MR == tile_rows(nv, registers)
    vw = vw32 if dtype == F32 else vw32 // 2
    NR = nv * vw

    @njit
    def run(A, lda, P, C, mr, nc, acc):
        if nc == NR:
            full(A, 0, lda, 1, mr, P, 0, P.shape[1], A.shape[1], C, 0, C.shape[1], vw, nc, acc)
        else:
            tail(A, 0, lda, 1, mr, P, 0, P.shape[1], A.shape[1], C, 0, C.shape[1], vw, nc, acc)

    rng = np.random.default_rng([vw32, nv, dtype == F32])
    K = 37
    for mr in range(1, MR + 1):
        for nc in (NR, 1, NR - 1):
            if nc < 1:
                continue
            A = rng.standard_normal((mr, K)).astype(dtype)
            P = rng.standard_normal((K, NR)).astype(dtype)
            C0 = rng.standard_normal((mr, NR)).astype(dtype)
            C = C0.copy()
            run(A, K, P, C, mr, nc, False)
            assert_dot_close(C[:, :nc], A, P[:, :nc], dtype)
            np.testing.assert_array_equal(C[:, nc:], C0[:, nc:])
            C = C0.copy()
            run(A, K, P, C, mr, nc, True)
            assert_dot_close(C[:, :nc], A, P[:, :nc], dtype, C0[:, :nc])


def test_float64_activations_match_numpy():
    # exp64 / tanh64 / sigmoid64 (vectorizable, kernels/cpu/_math.py) against NumPy's libm
    from numba import njit
    from gruengine.kernels.cpu._math import exp64, sigmoid64, tanh64

    @njit
    def run(x, e, t, s):
        for i in range(x.shape[0]):
            e[i] = exp64(-abs(x[i]))
            t[i] = tanh64(x[i])
            s[i] = sigmoid64(x[i])

    rng = np.random.default_rng(8)
    x = np.concatenate([rng.standard_normal(20000) * 6, rng.uniform(-800, 800, 5000),
                        np.logspace(-300, 1, 300), -np.logspace(-300, 1, 300), [0.0, -0.0]])
    e, t, s = (np.empty_like(x) for _ in range(3))
    run(x, e, t, s)
    want_e = np.exp(-np.abs(x))
    normal = want_e > np.finfo(F64).tiny
    assert np.all(np.abs(e - want_e)[normal] <= 2 * np.spacing(want_e[normal]))
    # absolute error: tanh64 = (1 - t) / (1 + t) rounds |x| < 1e-16 to 0
    assert np.max(np.abs(t - np.tanh(x))) <= 4 * np.finfo(F64).eps
    want_s = np.where(x >= 0, 1 / (1 + want_e), want_e / (1 + want_e))
    big = want_s > 1e-300
    assert np.max(np.abs(s - want_s)[big] / want_s[big]) <= 8 * np.finfo(F64).eps
