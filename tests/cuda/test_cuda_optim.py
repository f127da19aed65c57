"""CUDA optimizer primitives (Adam(W), SGD, sums of squares on a chunk grid, in-place scale
and clamp) against the NumPy reference, and the optimizers over device arrays."""
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


def _random_grid(rng, n):
    # uneven chunks over [0, n), gaps and empty chunks included
    cuts = np.sort(rng.integers(0, n + 1, size=2 * int(rng.integers(2, 9))))
    return cuts[0::2].astype(np.int64), cuts[1::2].astype(np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_of_squares_partials(rng, launch_config, dtype):
    x = (3 * rng.standard_normal(7 * launch_config + 3)).astype(dtype)
    starts, stops = _random_grid(rng, x.shape[0])
    want = ref.sum_of_squares_partials(x, starts, stops)
    got = kc.sum_of_squares_partials(x, starts, stops)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == starts.shape
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # device data and a device-resident grid (what an optimizer keeps): the same bits again
    again = kc.sum_of_squares_partials(cuda.to_device(x), cuda.to_device(starts), cuda.to_device(stops))
    np.testing.assert_array_equal(again, got)
    assert kc.ordered_sum(got) == ref.ordered_sum(got)
    assert kc.sum_of_squares_partials(x, starts[:0], stops[:0]).shape == (0,)
    with pytest.raises(ValueError, match=r"^stops: expected shape"):
        kc.sum_of_squares_partials(x, starts, stops[:-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scale_and_clamp_inplace(rng, launch_config, dtype):
    base = (2 * rng.standard_normal((3, launch_config + 1))).astype(dtype)
    base.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    scale, limit = float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.2, 1.5))
    for name, value in (("scale_inplace", scale), ("clamp_inplace", limit)):
        want = getattr(ref, name)(base.copy(), value)
        d = cuda.to_device(base)
        assert getattr(kc, name)(d, value) is d                 # in place on the device
        np.testing.assert_array_equal(d.copy_to_host(), want)   # the same bits, NaN included
        h = base.copy()
        getattr(kc, name)(h[:, 1:], value)                      # a strided NumPy view, in place
        np.testing.assert_array_equal(h[:, 1:], want[:, 1:])
        np.testing.assert_array_equal(h[:, 0], base[:, 0])


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
        assert all(arrays.is_device(a) for seg in opt_d._segments for a in seg.state.values())
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


def test_buffer_and_dict_paths_agree_bit_for_bit_on_device(rng, launch_config):
    """A ParamBuffer of device arrays (fused, and with gradients given as a dict) and a dict of
    device arrays are the same segments to the optimizer: the same norms and parameters, bit
    for bit, and the norm is the NumPy one to float64 rounding."""
    import gruengine
    from gruengine import arrays

    class Holder:
        def __init__(self, values):
            self.params = {k: cuda.to_device(v) for k, v in values.items()}
            self.grads = {k: cuda.to_device(np.zeros_like(v)) for k, v in values.items()}

    shapes = {"w": (launch_config + 1, 3), "b": (2 * launch_config + 1,), "u": (5,)}
    values = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    fused_buf = gruengine.ParamBuffer({"m": Holder(values)})
    given_buf = gruengine.ParamBuffer({"m": Holder(values)})
    plain = {f"m.{k}": cuda.to_device(v) for k, v in values.items()}
    opts = [gruengine.AdamW(p, lr=1e-2, weight_decay=0.1) for p in (fused_buf, plain, given_buf)]
    for _ in range(3):
        grads = {f"m.{k}": (3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
        for k, g in grads.items():
            arrays.assign(fused_buf.grads[k], g)
        norms = [opts[0].step(max_norm=1.0)]
        norms += [opt.step({k: cuda.to_device(g) for k, g in grads.items()}, max_norm=1.0)
                  for opt in opts[1:]]
        assert norms[0] == norms[1] == norms[2]
        total = sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())
        np.testing.assert_allclose(norms[0], np.sqrt(total), rtol=1e-12)
        assert norms[0] > 1.0                                  # the clip scale is in play
    for k in plain:
        want = plain[k].copy_to_host()
        np.testing.assert_array_equal(fused_buf.params[k].copy_to_host(), want)
        np.testing.assert_array_equal(given_buf.params[k].copy_to_host(), want)
        assert not np.array_equal(want, values[k.split(".")[1]])
    states = [opt.state_dict()["arrays"] for opt in opts]
    for k in states[0]:
        np.testing.assert_array_equal(states[0][k], states[1][k])
        np.testing.assert_array_equal(states[2][k], states[1][k])
    # the saved state loads into either layout on the device and reads back the same
    for target in (gruengine.ParamBuffer({"m": Holder(values)}),
                   {f"m.{k}": cuda.to_device(v) for k, v in values.items()}):
        fresh = gruengine.AdamW(target, lr=0.5)
        fresh.load_state_dict(opts[1].state_dict())
        assert fresh.num_steps == 3 and fresh.lr == 1e-2
        loaded = fresh.state_dict()["arrays"]
        for k in states[1]:
            np.testing.assert_array_equal(loaded[k], states[1][k])
