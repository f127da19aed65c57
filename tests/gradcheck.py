"""Helpers shared by the tests: central finite differences and random inputs."""
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


def assert_sampled_fd(loss, checks, eps=1e-6, k=6, seed=0):
    """For each (name, array, analytic gradient) in ``checks``, compare the analytic
    gradient with central differences of loss() at k entries picked with ``seed``."""
    pick = np.random.default_rng(seed)
    for name, a, g in checks:
        flat = a.reshape(-1)
        for i in pick.choice(flat.size, min(flat.size, k), replace=False):
            old = flat[i]
            flat[i] = old + eps
            lp = loss()
            flat[i] = old - eps
            lm = loss()
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            assert abs(g.reshape(-1)[i] - num) <= 1e-6 * max(1.0, abs(num)), (name, i)


def normal(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)
