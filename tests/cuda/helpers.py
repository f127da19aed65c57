"""Comparison helpers of the CUDA tests."""
import numpy as np


def tol(dtype):
    # float32: sums over a few dozen products in another order than NumPy's, each term rounded
    # at ~6e-8, differ by ~1e-6 of the terms' scale; 1e-5 leaves a margin and still catches any
    # wrong index or gate (errors of order 1). float64 likewise at ~1e-16.
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-11


def assert_close(got, want, dtype, what=""):
    """Elementwise |got - want| <= tol * (|want| + max|want|): relative, and relative to the
    array's scale for elements near zero (cancellation leaves them only absolute accuracy)."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    r = tol(dtype)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=r, atol=r * scale, err_msg=what)
