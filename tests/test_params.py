"""ParamBuffer: flat storage with named views, re-pointed module dicts, zero_grad,
state_dict round trip, validation, and an optimizer running over it.

Uses small dummy modules defined here (no dependence on the real layers).
Run: NUMBA_NUM_THREADS=2 python -m pytest tests/test_params.py -q -x
"""
import numpy as np
import pytest

from gruengine.kernels.cpu import optim as cpu
from gruengine.optim import AdamW
from gruengine.params import ParamBuffer, Segment, array_segments
from gruengine.reference import optim as ref


class Affine:
    """y = x @ W.T + b, reading self.params at every call and writing grads in place."""

    def __init__(self, n_in, n_out, rng, dtype=np.float64):
        self.params = {"weight": rng.standard_normal((n_out, n_in)).astype(dtype),
                       "bias": rng.standard_normal(n_out).astype(dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x):
        self._x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, dy):
        self.grads["weight"][...] = dy.T @ self._x
        self.grads["bias"][...] = dy.sum(axis=0)
        return dy @ self.params["weight"]


class Scale:
    """y = x * s (elementwise, s of shape (F,)); a second kind of module."""

    def __init__(self, n, rng, dtype=np.float64):
        self.params = {"scale": rng.uniform(0.5, 1.5, n).astype(dtype)}
        self.grads = {"scale": np.zeros(n, dtype=dtype)}

    def forward(self, x):
        self._x = x
        return x * self.params["scale"]

    def backward(self, dy):
        self.grads["scale"][...] = (dy * self._x).sum(axis=0)
        return dy * self.params["scale"]


def make_net(rng, dtype=np.float64):
    return {"enc": Affine(5, 4, rng, dtype), "mid": Scale(4, rng, dtype), "head": Affine(4, 3, rng, dtype)}


def run(net, x):
    for m in net.values():
        x = m.forward(x)
    return x


def run_backward(net, dy):
    for m in reversed(list(net.values())):
        dy = m.backward(dy)
    return dy


def test_repoints_views_and_keeps_values():
    rng = np.random.default_rng(1)
    net = make_net(rng)
    x = rng.standard_normal((6, 5))
    originals = {f"{p}.{k}": v.copy() for p, m in net.items() for k, v in m.params.items()}
    y_before = run(net, x)
    buf = ParamBuffer(net)

    assert list(buf.params) == ["enc.weight", "enc.bias", "mid.scale", "head.weight", "head.bias"]
    assert buf.data.shape == buf.grad.shape == (sum(v.size for v in originals.values()),)
    assert buf.size == buf.data.shape[0] and buf.dtype == np.float64
    # slices tile the flat arrays in order, without gaps
    stops = [0] + [sl.stop for sl in buf.slices.values()]
    assert [sl.start for sl in buf.slices.values()] == stops[:-1] and stops[-1] == buf.size
    for name, view in buf.params.items():
        prefix, key = name.split(".", 1)
        assert net[prefix].params[key] is view and net[prefix].grads[key] is buf.grads[name]
        assert np.shares_memory(view, buf.data) and np.shares_memory(buf.grads[name], buf.grad)
        np.testing.assert_array_equal(view, originals[name])
        np.testing.assert_array_equal(buf.data[buf.slices[name]], originals[name].reshape(-1))
    np.testing.assert_array_equal(run(net, x), y_before)


def test_flat_writes_reach_modules_and_backward_reaches_flat_grad():
    rng = np.random.default_rng(2)
    net = make_net(rng)
    buf = ParamBuffer(net)
    x = rng.standard_normal((6, 5))
    # an update of the flat array is what the modules compute with
    buf.data[...] = rng.standard_normal(buf.size)
    W1, b1 = buf.params["enc.weight"].copy(), buf.params["enc.bias"].copy()
    s, W2, b2 = buf.params["mid.scale"].copy(), buf.params["head.weight"].copy(), buf.params["head.bias"].copy()
    h = x @ W1.T + b1
    y = run(net, x)
    np.testing.assert_allclose(y, (h * s) @ W2.T + b2, rtol=1e-13)

    # gradients written by backward land in the flat gradient array
    dy = rng.standard_normal(y.shape)
    run_backward(net, dy)
    dh = (dy @ W2) * s
    expected = {"head.weight": dy.T @ (h * s), "head.bias": dy.sum(0),
                "mid.scale": ((dy @ W2) * h).sum(0), "enc.weight": dh.T @ x, "enc.bias": dh.sum(0)}
    for name, g in expected.items():
        np.testing.assert_allclose(buf.grad[buf.slices[name]].reshape(g.shape), g, rtol=1e-12)
    assert np.count_nonzero(buf.grad) == buf.size

    buf.zero_grad()
    assert not buf.grad.any()
    for m in net.values():
        for g in m.grads.values():
            assert not g.any()


def test_backward_gradient_matches_finite_differences_through_buffer():
    # the flat gradient is the gradient of the loss w.r.t. the flat data
    rng = np.random.default_rng(3)
    net = make_net(rng)
    buf = ParamBuffer(net)
    x = rng.standard_normal((3, 5))
    w = rng.standard_normal((3, 3))

    def loss():
        return float(np.sum(run(net, x) * w))

    run(net, x)
    run_backward(net, w)
    analytic = buf.grad.copy()
    eps = 1e-6
    idx = rng.choice(buf.size, size=8, replace=False)
    for i in idx:
        old = buf.data[i]
        buf.data[i] = old + eps
        up = loss()
        buf.data[i] = old - eps
        down = loss()
        buf.data[i] = old
        np.testing.assert_allclose(analytic[i], (up - down) / (2 * eps), rtol=1e-6, atol=1e-8)


def test_state_dict_round_trip_and_validation():
    rng = np.random.default_rng(4)
    net = make_net(rng, np.float32)
    buf = ParamBuffer(net)
    sd = buf.state_dict()
    assert sd.keys() == buf.params.keys()
    for k, v in sd.items():
        assert not np.shares_memory(v, buf.data)
        np.testing.assert_array_equal(v, buf.params[k])
    saved = {k: v.copy() for k, v in sd.items()}
    sd["enc.bias"][...] = 99.0  # a copy: the buffer is unchanged
    assert not np.any(buf.params["enc.bias"] == 99.0)

    buf.data[...] = rng.standard_normal(buf.size).astype(np.float32)
    buf.load_state_dict(saved)
    for k, v in saved.items():
        np.testing.assert_array_equal(buf.params[k], v)
        np.testing.assert_array_equal(net[k.split(".")[0]].params[k.split(".", 1)[1]], v)

    current = buf.data.copy()
    bad_cases = [
        ({k: v for k, v in saved.items() if k != "mid.scale"}, "keys"),
        (dict(saved, **{"enc.weight": saved["enc.weight"].T.copy()}), "enc.weight"),
        (dict(saved, **{"head.bias": saved["head.bias"].astype(np.float64)}), "head.bias"),
        (dict(saved, **{"mid.scale": np.full(4, np.nan, np.float32)}), "NaN"),
        ([1, 2], "dict"),
    ]
    for bad, pattern in bad_cases:
        with pytest.raises(ValueError, match=pattern):
            buf.load_state_dict(bad)
    np.testing.assert_array_equal(buf.data, current)


class Holder:
    def __init__(self, params, grads=None):
        self.params = params
        self.grads = grads if grads is not None else {k: np.zeros_like(v) for k, v in params.items()}


class Fresh:
    """params/grads as properties returning new dicts: cannot be re-pointed."""

    def __init__(self):
        self._p = {"w": np.ones(3)}

    @property
    def params(self):
        return dict(self._p)

    @property
    def grads(self):
        return {"w": np.zeros(3)}


def test_validation():
    rng = np.random.default_rng(5)
    a = Holder({"w": rng.standard_normal((2, 3))})
    with pytest.raises(ValueError, match="^modules"):
        ParamBuffer([a])
    with pytest.raises(ValueError, match="^modules"):
        ParamBuffer({})
    with pytest.raises(ValueError, match=r"^modules\['x'\]"):
        ParamBuffer({"x": object()})
    with pytest.raises(ValueError, match=r"^modules\['b'\]"):
        ParamBuffer({"a": a, "b": a})
    with pytest.raises(ValueError, match=r"^modules\['f'\]"):
        ParamBuffer({"f": Fresh()})
    f32 = Holder({"v": rng.standard_normal(4).astype(np.float32)})
    with pytest.raises(ValueError, match=r"^params\['f32.v'\]: expected dtype float64"):
        ParamBuffer({"a": a, "f32": f32})
    with pytest.raises(ValueError, match=r"grads: keys"):
        ParamBuffer({"g": Holder({"w": np.ones(2)}, {"u": np.ones(2)})})
    with pytest.raises(ValueError, match=r"^grads\['g.w'\]"):
        ParamBuffer({"g": Holder({"w": np.ones(2)}, {"w": np.ones(3)})})
    with pytest.raises(ValueError, match=r"^params\['i.w'\]"):
        ParamBuffer({"i": Holder({"w": np.ones(2, dtype=np.int64)})})
    shared = np.ones(3)
    with pytest.raises(ValueError, match="tied"):
        ParamBuffer({"p": Holder({"w": shared}), "q": Holder({"w": shared})})
    # a failed build leaves the modules as they were
    w_before = a.params["w"]
    with pytest.raises(ValueError):
        ParamBuffer({"a": a, "f32": f32})
    assert a.params["w"] is w_before


def test_adamw_over_buffer_equals_adamw_over_module_copies():
    # The fused flat step and per-array steps on independent copies give the same bits,
    # and the modules of the buffer compute with the updated values.
    rng = np.random.default_rng(6)
    net = make_net(np.random.default_rng(60), np.float32)
    twin = make_net(np.random.default_rng(60), np.float32)
    buf = ParamBuffer(net)
    plain = {f"{p}.{k}": v for p, m in twin.items() for k, v in m.params.items()}
    opt_flat = AdamW(buf, lr=0.05, weight_decay=0.1)
    opt_dict = AdamW(plain, lr=0.05, weight_decay=0.1)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    target = rng.standard_normal((8, 3)).astype(np.float32)
    losses = []
    for _ in range(5):
        for model in (net, twin):
            y = run(model, x)
            run_backward(model, (2.0 / y.size) * (y - target))
        grads = {f"{p}.{k}": g for p, m in twin.items() for k, g in m.grads.items()}
        n1 = opt_flat.step(max_norm=0.5)
        n2 = opt_dict.step(grads, max_norm=0.5)
        assert n1 == n2
        losses.append(float(np.mean((run(net, x) - target) ** 2)))
    for name, v in plain.items():
        np.testing.assert_array_equal(buf.params[name], v)
    np.testing.assert_array_equal(run(net, x), run(twin, x))
    assert losses[-1] < losses[0]


def test_segment_of_a_buffer_reduces_like_its_parameters_alone():
    # the buffer's chunk grid restarts at every parameter, so the partial sums of squares of
    # the flat gradient are those of each gradient alone, in order: the same bits
    rng = np.random.default_rng(7)
    shapes = {"w": (3, 5), "big": (2 * ref.CHUNK + 7,), "b": (4,)}
    values = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    buf = ParamBuffer({"m": Holder({k: v.copy() for k, v in values.items()})})
    buf.grad[...] = rng.standard_normal(buf.size).astype(np.float32)
    seg = buf.segment()
    assert seg.data is buf.data and seg.grad is buf.grad and seg.size == buf.size
    starts, stops = seg.grid
    assert starts.shape == (1 + 3 + 1,)
    alone = [array_segments({k: g.copy()})[0] for k, g in buf.grads.items()]
    want = np.concatenate([cpu.sum_of_squares_partials(a.data, *a.grid) for a in alone])
    np.testing.assert_array_equal(cpu.sum_of_squares_partials(buf.grad, starts, stops), want)
    np.testing.assert_allclose(ref.sum_of_squares_partials(buf.grad, starts, stops), want, rtol=1e-13)
    np.testing.assert_allclose(cpu.ordered_sum(want), np.sum(buf.grad.astype(np.float64) ** 2),
                               rtol=1e-12)


def test_segment_parts_and_named_copies_share_the_flat_memory():
    rng = np.random.default_rng(8)
    net = make_net(rng)
    buf = ParamBuffer(net)
    seg = buf.segment()
    seg.state = {"exp_avg": np.zeros(buf.size)}
    parts = seg.parts()
    assert list(parts) == list(buf.params)
    for name, part in parts.items():
        assert part.size == buf.params[name].size and list(part.views) == [name]
        part.data[...] = rng.standard_normal(part.size)              # writes reach the modules
        part.state["exp_avg"][...] = rng.standard_normal(part.size)
        np.testing.assert_array_equal(buf.params[name].reshape(-1), part.data)
        np.testing.assert_array_equal(seg.state["exp_avg"][buf.slices[name]], part.state["exp_avg"])
    copies = seg.named_copies(seg.state["exp_avg"])
    for name, a in copies.items():
        assert a.shape == buf.params[name].shape and not np.shares_memory(a, seg.state["exp_avg"])
        np.testing.assert_array_equal(a.reshape(-1), seg.state["exp_avg"][buf.slices[name]])
    target = np.zeros(buf.size)
    seg.assign_named(target, copies)
    np.testing.assert_array_equal(target, seg.state["exp_avg"])
    single = Segment(np.ones(4), {"v": (slice(0, 4), (2, 2))})
    assert single.parts() == {"v": single}                       # one parameter: itself
