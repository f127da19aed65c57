"""CUDA Adam(W), SGD and the sum of squares against the NumPy reference (in-place updates)."""
import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from gruengine import reference as ref  # noqa: E402
from gruengine.kernels import cuda as kc  # noqa: E402

from .helpers import assert_close  # noqa: E402


def _buffers(rng, n, dtype, k):
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoupled, weight_decay", [(False, 0.0), (False, 0.1), (True, 0.1)],
                         ids=["adam", "adam-l2", "adamw"])
def test_adam_step(rng, launch_config, dtype, decoupled, weight_decay):
    n = 3 * launch_config + 1
    p, g, m = _buffers(rng, n, dtype, 3)
    v = rng.random(n).astype(dtype)
    mine = [a.copy() for a in (p, g, m, v)]
    theirs = [a.copy() for a in (p, g, m, v)]
    for step in (1, 2, 7):
        hyper = (step, 3e-3, 0.9, 0.999, 1e-8, weight_decay, decoupled, 0.37)
        kc.adam_step(*mine, *hyper)
        ref.adam_step(*theirs, *hyper)
    for name, a, b in zip(("param", "grad", "m", "v"), mine, theirs):
        assert_close(a, b, dtype, name)
    assert not np.allclose(mine[0], p)                    # it did move


@pytest.mark.parametrize("nesterov, dampening", [(False, 0.1), (True, 0.0)])
@pytest.mark.parametrize("first_step", [True, False])
def test_sgd_step(rng, launch_config, nesterov, dampening, first_step):
    n = 3 * launch_config + 1
    p, g, buf = _buffers(rng, n, np.float32, 3)
    mine, theirs = [p.copy(), g, buf.copy()], [p.copy(), g, buf.copy()]
    hyper = (0.05, 0.9, dampening, nesterov, 1e-2, 0.8, first_step)
    kc.sgd_step(*mine, *hyper)
    ref.sgd_step(*theirs, *hyper)
    assert_close(mine[0], theirs[0], np.float32, "param")
    assert_close(mine[2], theirs[2], np.float32, "buf")
    q, q_r = p.copy(), p.copy()                           # momentum 0: no buffer needed
    kc.sgd_step(q, g, None, 0.05, 0.0, 0.0, False, 0.0, 1.0, True)
    ref.sgd_step(q_r, g, None, 0.05, 0.0, 0.0, False, 0.0, 1.0, True)
    assert_close(q, q_r, np.float32, "param, no momentum")


def test_sum_of_squares(rng, launch_config):
    g = rng.standard_normal(3 * launch_config * 5 + 1).astype(np.float32)
    got = kc.sum_of_squares(g)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, ref.sum_of_squares(g), rtol=1e-12)
    np.testing.assert_allclose(kc.sum_of_squares(cuda.to_device(g)), ref.sum_of_squares(g),
                               rtol=1e-12)


def test_optimizer_state_stays_on_device(rng):
    p, g, m = _buffers(rng, 9, np.float32, 3)
    v = rng.random(9).astype(np.float32)
    dev = [cuda.to_device(a) for a in (p, g, m, v)]
    theirs = [a.copy() for a in (p, g, m, v)]
    kc.adam_step(*dev, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0, False, 1.0)
    ref.adam_step(*theirs, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0, False, 1.0)
    assert_close(dev[0].copy_to_host(), theirs[0], np.float32, "param")
    assert_close(dev[3].copy_to_host(), theirs[3], np.float32, "v")
    assert not np.allclose(dev[0].copy_to_host(), p)      # updated on the device, not on a copy
    with pytest.raises(ValueError, match=r"^step: expected an integer >= 1"):
        kc.adam_step(*dev, 0, 1e-2, 0.9, 0.999, 1e-8, 0.0, False, 1.0)
