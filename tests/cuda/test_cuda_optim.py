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


def test_optimizers_and_clipping_on_device_parameters(rng, launch_config):
    """gruengine.Adam/SGD over a dict of device arrays and clip_grad_norm/clip_grad_value on
    device gradients: same results as on NumPy arrays, state on the device, state_dict NumPy."""
    import gruengine
    from gruengine import arrays
    n = 3 * launch_config + 1
    host = {"a": rng.standard_normal((n, 2)).astype(np.float32),
            "b": rng.standard_normal(n).astype(np.float32)}
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) * 3 for k, v in host.items()}
    for cls, kw in ((gruengine.AdamW, dict(lr=1e-2)), (gruengine.SGD, dict(lr=0.1, momentum=0.9))):
        p_h = {k: v.copy() for k, v in host.items()}
        p_d = {k: cuda.to_device(v) for k, v in host.items()}
        g_d = {k: cuda.to_device(v) for k, v in grads.items()}
        opt_h, opt_d = cls(p_h, **kw), cls(p_d, **kw)
        for _ in range(3):
            norm_h = opt_h.step(grads, max_norm=1.0)
            norm_d = opt_d.step(g_d, max_norm=1.0)
            np.testing.assert_allclose(norm_d, norm_h, rtol=1e-6)
        for k in host:
            assert_close(p_d[k].copy_to_host(), p_h[k], np.float32, k)
        state = opt_d.state_dict()["arrays"]
        for k, v in opt_h.state_dict()["arrays"].items():
            assert isinstance(state[k], np.ndarray)
            assert_close(state[k], v, np.float32, k)
        assert all(arrays.is_device(a) for per in opt_d._state.values() for a in per.values())
        with pytest.raises(ValueError, match=r"^grads\['a'\]: expected a CUDA device array"):
            opt_d.step(grads)
    # clipping in place on the device
    g_h = {k: v.copy() for k, v in grads.items()}
    g_d = {k: cuda.to_device(v) for k, v in grads.items()}
    norm_h = gruengine.clip_grad_norm(g_h, 0.5)
    norm_d = gruengine.clip_grad_norm(g_d, 0.5)
    assert norm_h > 0.5
    np.testing.assert_allclose(norm_d, norm_h, rtol=1e-6)
    for k in grads:
        assert_close(g_d[k].copy_to_host(), g_h[k], np.float32, k)
    gruengine.clip_grad_value(g_h, 0.01)
    gruengine.clip_grad_value(g_d, 0.01)
    for k in grads:
        np.testing.assert_array_equal(g_d[k].copy_to_host(), g_h[k])
