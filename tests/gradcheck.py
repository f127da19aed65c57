"""Helpers shared by the tests: central finite differences and random lengths."""
import numpy as np


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of x (float64, in place)."""
    g = np.empty_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def central_fd(f, arrays, eps=1e-6):
    """Gradient of scalar f() w.r.t. every entry of every array (float64, in place)."""
    return [numeric_grad(f, a, eps) for a in arrays]


def random_lengths(rng, B, T):
    lengths = rng.integers(1, T + 1, B)
    lengths[0], lengths[-1] = T, 1         # both ends of [1, T] every time
    return lengths.astype(np.int64)


def assert_fd(analytic, numeric):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
