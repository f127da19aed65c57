"""minGRU: log-space scan vs the sequential loop vs finite differences; CPU kernels vs reference;
the layer vs finite differences and across devices. Fresh random inputs everywhere."""
import numpy as np
import pytest

from gruengine.kernels.cpu import mingru as cpu
from gruengine.mingru import MinGRU
from gruengine.reference import mingru as ref
from tests.gradcheck import assert_sampled_fd, numeric_grad

OPS = ("x", "h0", "W_z", "W_h", "b_z", "b_h")
GRADS = ("dx", "dh0", "dW_z", "dW_h", "db_z", "db_h")


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def make_inputs(rng, B, T, I, H, dtype=np.float64, lengths=None, scale=1.0):
    args = {"x": rng.standard_normal((B, T, I)), "h0": rng.standard_normal((B, H)),
            "W_z": rng.standard_normal((H, I)) * scale, "W_h": rng.standard_normal((H, I)) * scale,
            "b_z": rng.standard_normal(H) * scale, "b_h": rng.standard_normal(H) * scale}
    args = {k: v.astype(dtype) for k, v in args.items()}
    if lengths is None:
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
    return args, np.asarray(lengths, dtype=np.int64)


def run(fwd, bwd, args, lengths, reverse, dy, dh):
    y, h_n, cache = fwd(*(args[k] for k in OPS), lengths, reverse)
    grads = bwd(dy, dh, *(args[k] for k in OPS), lengths, cache, reverse)
    return (y, h_n), dict(zip(GRADS, grads))


@pytest.mark.parametrize("reverse", [False, True])
def test_log_space_scan_matches_sequential_loop(reverse):
    rng = np.random.default_rng(1 + reverse)
    B, T, I, H = 4, 7, 3, 5
    args, lengths = make_inputs(rng, B, T, I, H, lengths=[7, 3, 1, 5])
    dy = rng.standard_normal((B, T, H))
    dh = rng.standard_normal((B, H))
    (y, hn), g = run(ref.mingru_forward, ref.mingru_backward, args, lengths, reverse, dy, dh)
    (ys, hns), gs = run(ref.mingru_forward_sequential, ref.mingru_backward_sequential,
                        args, lengths, reverse, dy, dh)
    assert rel_err(y, ys) < 1e-13 and rel_err(hn, hns) < 1e-13
    for k in GRADS:
        assert rel_err(g[k], gs[k]) < 1e-12, k
    for b, L in enumerate(lengths):
        assert np.all(y[b, L:] == 0) and np.all(g["dx"][b, L:] == 0)


def test_log_space_scan_is_stable_on_long_saturated_sequences(monkeypatch):
    # z near 0 and near 1, T = 600: the cumulative products A_t underflow far below float64's
    # range, yet the log-space scan agrees with the loop (which never forms A_t).
    rng = np.random.default_rng(3)
    B, T, I, H = 2, 600, 3, 4
    args, lengths = make_inputs(rng, B, T, I, H, lengths=[600, 417], scale=4.0)
    dy = rng.standard_normal((B, T, H))
    dh = rng.standard_normal((B, H))
    (y, hn), g = run(ref.mingru_forward, ref.mingru_backward, args, lengths, False, dy, dh)
    (ys, hns), gs = run(ref.mingru_forward_sequential, ref.mingru_backward_sequential,
                        args, lengths, False, dy, dh)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(g["dW_z"]))
    assert rel_err(y, ys) < 1e-10
    for k in GRADS:
        assert rel_err(g[k], gs[k]) < 1e-9, k
    for scan in ("log", "linear"):
        monkeypatch.setattr(cpu, "SCAN", scan)
        (yc, hnc), gc = run(cpu.mingru_forward, cpu.mingru_backward, args, lengths, False, dy, dh)
        assert rel_err(yc, ys) < 1e-12
        for k in GRADS:
            assert rel_err(gc[k], gs[k]) < 1e-11, k


@pytest.mark.parametrize("impl", ["scan", "sequential"])
@pytest.mark.parametrize("reverse", [False, True])
def test_reference_matches_finite_differences(impl, reverse):
    fwd, bwd = {"scan": (ref.mingru_forward, ref.mingru_backward),
                "sequential": (ref.mingru_forward_sequential, ref.mingru_backward_sequential)}[impl]
    rng = np.random.default_rng(20 + reverse)
    B, T, I, H = 3, 4, 3, 2
    args, lengths = make_inputs(rng, B, T, I, H, lengths=[4, 1, 3])
    dy = rng.standard_normal((B, T, H))
    dh = rng.standard_normal((B, H))
    _, g = run(fwd, bwd, args, lengths, reverse, dy, dh)

    def loss():
        y, h_n, _ = fwd(*(args[k] for k in OPS), lengths, reverse)
        return np.sum(y * dy) + np.sum(h_n * dh)

    eps = 1e-6
    for name, gname in zip(OPS, ("dx", "dh0", "dW_z", "dW_h", "db_z", "db_h")):
        num = numeric_grad(loss, args[name], eps)
        np.testing.assert_allclose(g[gname], num, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("H", [17, 40])      # 40: two hidden chunks per row, the last partial
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("scan", ["log", "linear"])
def test_cpu_kernels_match_reference(dtype, tol, H, reverse, scan, monkeypatch):
    monkeypatch.setattr(cpu, "SCAN", scan)
    rng = np.random.default_rng(H + 3 * reverse + (dtype == np.float32))
    B, T, I = 3, 6, 5
    args, lengths = make_inputs(rng, B, T, I, H, dtype, lengths=[2, 6, 1])
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)
    (yr, hr), gr = run(ref.mingru_forward, ref.mingru_backward, args, lengths, reverse, dy, dh)
    y, h_n, cache = cpu.mingru_forward(*(args[k] for k in OPS), lengths, reverse)
    gc = dict(zip(GRADS, cpu.mingru_backward(dy, dh, *(args[k] for k in OPS), lengths, cache,
                                             reverse)))
    assert y.dtype == dtype and rel_err(y, yr) < tol and rel_err(h_n, hr) < tol
    for k in GRADS:
        assert gc[k].dtype == dtype and gc[k].shape == gr[k].shape, k
        assert rel_err(gc[k], gr[k]) < tol, k
    _, _, cache_r = ref.mingru_forward(*(args[k] for k in OPS), lengths, reverse)
    gates_r, gates_c = ref.mingru_gates(cache_r), cpu.mingru_gates(cache)
    for k in ("z", "h", "h_tilde"):
        assert rel_err(gates_c[k], gates_r[k]) < tol, k


@pytest.mark.parametrize("fwd,bwd", [(ref.mingru_forward, ref.mingru_backward),
                                     (cpu.mingru_forward, cpu.mingru_backward)],
                         ids=["reference", "cpu"])
def test_padding_never_reaches_anything(fwd, bwd):
    rng = np.random.default_rng(9)
    B, T, I, H = 3, 5, 4, 6
    args, lengths = make_inputs(rng, B, T, I, H, lengths=[5, 2, 3])
    dy = rng.standard_normal((B, T, H))
    dh = rng.standard_normal((B, H))
    x2, dy2 = args["x"].copy(), dy.copy()
    for b, L in enumerate(lengths):
        x2[b, L:] = rng.standard_normal(x2[b, L:].shape) * 50
        dy2[b, L:] = rng.standard_normal(dy2[b, L:].shape) * 50
    for reverse in (False, True):
        out1, g1 = run(fwd, bwd, args, lengths, reverse, dy, dh)
        out2, g2 = run(fwd, bwd, dict(args, x=x2), lengths, reverse, dy2, dh)
        for a, b in zip(out1, out2):
            np.testing.assert_array_equal(a, b)
        for k in GRADS:
            np.testing.assert_array_equal(g1[k], g2[k])


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_layer_bidirectional_two_layers_matches_finite_differences(dropout):
    rng = np.random.default_rng(31)
    B, T, I, H, L = 3, 4, 2, 3, 2
    m = MinGRU(I, H, num_layers=L, bidirectional=True, dtype=np.float64, seed=5,
               dropout=dropout)
    x = rng.standard_normal((B, T, I))
    h0 = rng.standard_normal((L * 2, B, H))
    lengths = np.array([2, 4, 1])
    dy = rng.standard_normal((B, T, 2 * H))
    dh = rng.standard_normal((L * 2, B, H))
    rng_state = m._dropout_rng.bit_generator.state    # same dropout masks every forward

    def loss():
        m._dropout_rng.bit_generator.state = rng_state
        y, h_n = m.forward(x, h0, lengths)
        return np.sum(y * dy) + np.sum(h_n * dh)

    loss()
    dx, dh0 = m.backward(dy, dh)
    eps = 1e-6
    checks = [("x", x, dx), ("h0", h0, dh0)]
    checks += [(k, m.params[k], m.grads[k].copy()) for k in m.params]
    assert len(checks) == 2 + 4 * L * 2
    assert_sampled_fd(loss, checks, eps)


def test_layer_devices_gates_names_and_state_dict():
    rng = np.random.default_rng(41)
    B, T, I, H = 3, 5, 4, 17
    a = MinGRU(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    b = MinGRU(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=2,
               device="reference")
    assert sorted(a.params) == sorted(
        f"{w}_l{k}{s}" for w in ("weight_z", "bias_z", "weight_h", "bias_h")
        for k in range(2) for s in ("", "_reverse"))
    assert a.params["weight_z_l1"].shape == (H, 2 * H) and a.params["bias_h_l0"].shape == (H,)
    assert all(np.abs(v).max() <= 1 / np.sqrt(H) for v in a.params.values())
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((B, T, I))
    lengths = np.array([5, 3, 1])
    ya, ha, ga = a.forward(x, lengths=lengths, return_gates=True)
    yb, hb, gb = b.forward(x, lengths=lengths, return_gates=True)
    assert rel_err(ya, yb) < 1e-12 and rel_err(ha, hb) < 1e-12
    for k in ga:
        for n in ("z", "h", "h_tilde"):
            assert rel_err(ga[k][n], gb[k][n]) < 1e-12
    # the gates reproduce the recurrence h_t = (1 - z_t) h_{t-1} + z_t h̃_t (forward, layer 0)
    g = ga["l0"]
    for bi, L in enumerate(lengths):
        h_prev = np.zeros(H)
        for t in range(L):
            h_t = (1 - g["z"][bi, t]) * h_prev + g["z"][bi, t] * g["h_tilde"][bi, t]
            np.testing.assert_allclose(g["h"][bi, t], h_t, rtol=1e-12)
            h_prev = h_t
    np.testing.assert_array_equal(ga["l1_reverse"]["h"], ya[:, :, H:])
    dy = rng.standard_normal(ya.shape)
    dxa, dha = a.backward(dy)
    dxb, dhb = b.backward(dy)
    assert rel_err(dxa, dxb) < 1e-12 and rel_err(dha, dhb) < 1e-12
    for k in a.grads:
        assert rel_err(a.grads[k], b.grads[k]) < 1e-11, k
    dh = rng.standard_normal(ha.shape)
    dx_none, dh0_none = a.backward(None, dh)
    dx_zero, dh0_zero = a.backward(np.zeros_like(ya), dh)
    assert np.abs(dx_none).max() > 0
    np.testing.assert_array_equal(dx_none, dx_zero)
    np.testing.assert_array_equal(dh0_none, dh0_zero)


def test_layer_rejects_bad_input():
    m = MinGRU(3, 4, seed=0)
    x = np.ones((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"^h0: expected shape \(1, 2, 4\)"):
        m.forward(x, np.zeros((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match="lengths: every length must be >= 1, got 0"):
        m.forward(x, lengths=np.array([0, 5]))
    with pytest.raises(ValueError, match="x: contains NaN"):
        m.forward(np.full((2, 5, 3), np.nan, np.float32))
    y, _ = m.forward(x)
    with pytest.raises(ValueError, match=r"^dy: expected shape \(2, 5, 4\)"):
        m.backward(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match="device: expected one of"):
        MinGRU(3, 4, device="tpu")
