"""GRU: the NumPy reference against finite differences, the CPU kernels against the
reference, the layer against finite differences and against torch.nn.GRU (packed)."""
import numpy as np
import pytest

import gruengine
from gruengine import GRU
import gruengine.reference.gru as ref
import gruengine.kernels.cpu.gru as cpu
from tests.gradcheck import central_fd

F64, F32 = np.float64, np.float32


def rel_err(a, b):
    # max abs difference scaled by the reference's magnitude
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


def op_inputs(rng, B, T, I, H, dtype, lengths):
    def u(*shape, scale=1.0):
        return (rng.uniform(-1, 1, shape) * scale).astype(dtype)
    x, h0 = u(B, T, I), u(B, H, scale=0.8)
    W_ih, W_hh = u(3 * H, I, scale=0.6), u(3 * H, H, scale=0.6)
    b_ih, b_hh = u(3 * H, scale=0.4), u(3 * H, scale=0.4)
    return [x, h0, W_ih, W_hh, b_ih, b_hh, np.asarray(lengths, np.int64)]


# ---- reference op -----------------------------------------------------------------------
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_reference_matches_finite_differences(reset_after, reverse):
    rng = np.random.default_rng(10 + 2 * reset_after + reverse)
    B, T, I, H = 3, 5, 3, 4
    args = op_inputs(rng, B, T, I, H, F64, [5, 2, 4])
    dy, dh_n = rng.standard_normal((B, T, H)), rng.standard_normal((B, H))

    def loss():
        y, h_n, _ = ref.gru_forward(*args, reset_after, reverse)
        return float((y * dy).sum() + (h_n * dh_n).sum())

    y, h_n, cache = ref.gru_forward(*args, reset_after, reverse)
    got = ref.gru_backward(dy, dh_n, *args, cache, reset_after, reverse)
    want = central_fd(loss, args[:6])
    for name, g, w in zip(["dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh"], got, want):
        assert rel_err(g, w) < 1e-7, name
    # padding of y is zero, h_n is the state at the last valid step
    assert np.all(y[1, 2:] == 0) and np.all(y[2, 4:] == 0)
    t_last = [0, 0, 0] if reverse else [4, 1, 3]
    np.testing.assert_array_equal(h_n, y[np.arange(B), t_last])


# ---- CPU kernels against the reference --------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 2e-6)])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_cpu_kernels_match_reference(dtype, tol, reset_after, reverse):
    rng = np.random.default_rng([20, reset_after, reverse, dtype == F32])
    B, T, I, H = 3, 7, 5, 17
    for lengths in ([7, 7, 7], rng.integers(1, T + 1, B)):
        args = op_inputs(rng, B, T, I, H, dtype, lengths)
        dy = rng.standard_normal((B, T, H)).astype(dtype)
        dh_n = rng.standard_normal((B, H)).astype(dtype)
        y_r, h_r, c_r = ref.gru_forward(*args, reset_after, reverse)
        y_c, h_c, c_c = cpu.gru_forward(*args, reset_after, reverse)
        g_r = ref.gru_backward(dy, dh_n, *args, c_r, reset_after, reverse)
        g_c = cpu.gru_backward(dy, dh_n, *args, c_c, reset_after, reverse)
        for got, want in zip((y_c, h_c) + g_c, (y_r, h_r) + g_r):
            assert got.dtype == dtype and got.shape == want.shape
            assert rel_err(got, want) < tol


def test_cpu_kernels_flush_subnormals():
    # Tiny values on the recurrent path, forward (h0) and backward (dh_n entering only at the
    # last step): the state, the cached gates and dh flowing back must stay normal floats or
    # exact zeros (the slow path PyTorch falls into). dx and dW come from BLAS GEMMs after the
    # loop and are not part of the recurrence, so they are not checked here.
    rng = np.random.default_rng(30)
    B, T, I, H = 4, 40, 5, 9
    tiny = np.finfo(F32).tiny
    args = op_inputs(rng, B, T, I, H, F32, [40, 33, 40, 12])
    args[1] *= np.float32(1e-30)            # tiny h0 and no input path: the state decays
    args[2][:] = 0                          # through the subnormal range over the 40 steps
    args[4][:] = 0
    args[5][:] = 0
    _, h_n, cache = cpu.gru_forward(*args)
    dh_n = (rng.standard_normal((B, H)) * 1e-30).astype(F32)
    dh0 = cpu.gru_backward(np.zeros((B, T, H), F32), dh_n, *args, cache)[1]

    def subnormal(a):
        # below sqrt(tiny) counts too: such a value times a weight is subnormal in a GEMM
        return np.any((a != 0) & (np.abs(a) < np.sqrt(tiny)))

    assert not subnormal(cache["Hp"][B:]) and not subnormal(cache["G"]) and not subnormal(h_n)
    assert not subnormal(dh0)
    # the flush happened (values reached the subnormal range and became zeros) ...
    assert np.any(cache["Hp"][B:] == 0) and np.any(dh0 == 0)
    # ... while the same computation in float64 keeps them, nonzero and below float32's tiny
    args64 = [a.astype(F64) if a.dtype == F32 else a for a in args]
    _, _, c64 = ref.gru_forward(*args64)
    dh0_64 = ref.gru_backward(np.zeros((B, T, H)), dh_n.astype(F64), *args64, c64)[1]
    assert np.any((dh0_64 != 0) & (np.abs(dh0_64) < tiny))


def per_row_gates(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after, reverse):
    """r, z, n, h (B, T, H) in float64 from a plain loop over each sequence on its own,
    zero past each length: independent of the batched reference."""
    B, T, _ = x.shape
    H = h0.shape[1]
    out = {k: np.zeros((B, T, H)) for k in "rznh"}
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))                            # noqa: E731
    for b in range(B):
        h = h0[b].astype(F64)
        for t in (range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])):
            gx = W_ih @ x[b, t] + b_ih
            r = sig(gx[:H] + W_hh[:H] @ h + b_hh[:H])
            z = sig(gx[H:2 * H] + W_hh[H:2 * H] @ h + b_hh[H:2 * H])
            if reset_after:
                n = np.tanh(gx[2 * H:] + r * (W_hh[2 * H:] @ h + b_hh[2 * H:]))
            else:
                n = np.tanh(gx[2 * H:] + W_hh[2 * H:] @ (r * h) + b_hh[2 * H:])
            h = (1 - z) * n + z * h
            for k, v in zip("rznh", (r, z, n, h)):
                out[k][b, t] = v
    return out


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 2e-6)])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_gru_gates_cpu_and_reference(rng, dtype, tol, reset_after, reverse):
    # each backend's gru_gates(cache): the reference against a per-sequence loop, the CPU
    # kernels' against the reference; zero at padding, "h" is y
    B, T, I, H = 4, 6, 3, 9
    lengths = rng.integers(1, T + 1, B)
    lengths[rng.integers(B)] = T
    args = op_inputs(rng, B, T, I, H, dtype, lengths)
    want = per_row_gates(*(a.astype(F64) for a in args[:6]), args[6], reset_after, reverse)
    pad = np.arange(T)[None, :] >= lengths[:, None]
    got = {}
    for name, mod in (("reference", ref), ("cpu", cpu)):
        y, _, cache = mod.gru_forward(*args, reset_after, reverse)
        gates = mod.gru_gates(cache)
        assert list(gates) == ["r", "z", "n", "h"], name
        for k, v in gates.items():
            assert v.shape == (B, T, H) and v.dtype == dtype, (name, k)
            assert np.all(v[pad] == 0), (name, k)
        np.testing.assert_array_equal(gates["h"], y)
        got[name] = gates
    for k in "rznh":
        assert rel_err(got["reference"][k], want[k]) < (1e-12 if dtype == F64 else 1e-5), k
        assert rel_err(got["cpu"][k], got["reference"][k]) < tol, k


# ---- the layer ------------------------------------------------------------------------------
def layer_case(rng, gru, B, T, dtype):
    L, D, H = gru.num_layers, gru.num_directions, gru.hidden_size
    x = rng.standard_normal((B, T, gru.input_size)).astype(dtype)
    lengths = np.concatenate([[T], rng.integers(1, T + 1, B - 1)])
    rng.shuffle(lengths)
    h0 = (rng.standard_normal((L * D, B, H)) * 0.5).astype(dtype)
    dy = rng.standard_normal((B, T, D * H)).astype(dtype)
    dh_n = rng.standard_normal((L * D, B, H)).astype(dtype)
    return x, lengths, h0, dy, dh_n


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_layer_matches_finite_differences(reset_after, device):
    rng = np.random.default_rng([40, reset_after])
    gru = GRU(3, 4, num_layers=2, bidirectional=True, reset_after=reset_after,
              dtype=F64, device=device, seed=3)
    x, lengths, h0, dy, dh_n = layer_case(rng, gru, 3, 4, F64)
    valid = (np.arange(4)[None, :] < lengths[:, None])[:, :, None]

    def loss():
        y, h_n = gru.forward(x, h0, lengths)
        return float((y * dy).sum() + (h_n * dh_n).sum())

    gru.forward(x, h0, lengths)
    dx, dh0 = gru.backward(dy, dh_n)
    names = list(gru.params)
    want = central_fd(loss, [x, h0] + [gru.params[k] for k in names])
    assert rel_err(dx, want[0] * valid) < 1e-7
    assert np.all(dx[~np.broadcast_to(valid, dx.shape)] == 0)
    assert rel_err(dh0, want[1]) < 1e-7
    for k, w in zip(names, want[2:]):
        assert rel_err(gru.grads[k], w) < 1e-7, k


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (F32, 2e-6)])
def test_layer_cpu_matches_reference_device(dtype, tol):
    rng = np.random.default_rng(50)
    a = GRU(5, 17, num_layers=2, bidirectional=True, dtype=dtype, seed=1)
    b = GRU(5, 17, num_layers=2, bidirectional=True, dtype=dtype, seed=1, device="reference")
    x, lengths, h0, dy, dh_n = layer_case(rng, a, 3, 7, dtype)
    ya, ha = a.forward(x, h0, lengths)
    yb, hb = b.forward(x, h0, lengths)
    dxa, dha = a.backward(dy, dh_n)
    dxb, dhb = b.backward(dy, dh_n)
    for got, want in [(ya, yb), (ha, hb), (dxa, dxb), (dha, dhb)] + \
            [(a.grads[k], b.grads[k]) for k in a.grads]:
        assert rel_err(got, want) < tol


def test_padding_never_reaches_outputs_or_gradients():
    rng = np.random.default_rng(60)
    gru = GRU(5, 6, num_layers=2, bidirectional=True, seed=2)
    x, lengths, h0, dy, dh_n = layer_case(rng, gru, 4, 7, F32)
    lengths[:] = [7, 3, 5, 1]
    pad = (np.arange(7)[None, :] >= lengths[:, None])
    y1, h1 = gru.forward(x, h0, lengths)
    dx1, dh1 = gru.backward(dy, dh_n)
    g1 = {k: v.copy() for k, v in gru.grads.items()}
    x2, dy2 = x.copy(), dy.copy()
    x2[pad] = rng.standard_normal((pad.sum(), 5)) * 100
    dy2[pad] = rng.standard_normal((pad.sum(), 12))
    y2, h2 = gru.forward(x2, h0, lengths)
    dx2, dh2 = gru.backward(dy2, dh_n)
    for a, b in [(y1, y2), (h1, h2), (dx1, dx2), (dh1, dh2)] + [(g1[k], gru.grads[k]) for k in g1]:
        np.testing.assert_array_equal(a, b)
    assert np.all(y1[pad] == 0) and np.all(dx1[pad] == 0)
    assert np.any(y1[~pad] != 0)


def test_same_seed_same_bits():
    runs = []
    for _ in range(2):
        gru = GRU(5, 8, num_layers=2, bidirectional=True, seed=123, dropout=0.3)
        x, lengths, h0, dy, dh_n = layer_case(np.random.default_rng(71), gru, 3, 6, F32)
        y, h_n = gru.forward(x, h0, lengths)
        dx, dh0 = gru.backward(dy, dh_n)
        runs.append([y, h_n, dx, dh0] + [gru.params[k] for k in gru.params]
                    + [gru.grads[k] for k in gru.grads])
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()
    other = GRU(5, 8, num_layers=2, bidirectional=True, seed=124)
    assert not np.array_equal(other.params["weight_ih_l0"], runs[0][4])


def test_init_is_uniform_in_pytorch_bound():
    gru = GRU(7, 25, num_layers=2, bidirectional=True, dtype=F64, seed=0)
    names = [f"{w}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
             for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert list(gru.params) == names
    assert gru.params["weight_ih_l1"].shape == (75, 50) and gru.params["bias_hh_l0"].shape == (75,)
    allv = np.concatenate([v.ravel() for v in gru.params.values()])
    assert np.abs(allv).max() <= 1 / 5 and np.abs(allv).max() > 0.19
    assert abs(allv.mean()) < 0.01 and abs(allv.std() - 0.2 / np.sqrt(3)) < 0.005


def test_dropout_train_vs_eval():
    rng = np.random.default_rng(80)
    gru = GRU(4, 6, num_layers=2, dtype=F64, seed=5, dropout=0.5)
    plain = GRU(4, 6, num_layers=2, dtype=F64, seed=5)
    x, lengths, h0, dy, dh_n = layer_case(rng, gru, 3, 5, F64)
    y_eval, _ = gru.eval().forward(x, h0, lengths)
    y_plain, _ = plain.forward(x, h0, lengths)
    np.testing.assert_array_equal(y_eval, y_plain)
    y_train, _ = gru.train().forward(x, h0, lengths)
    assert not np.allclose(y_train, y_plain)
    # gradient through a fixed mask: replay the same dropout stream for every evaluation
    state = gru._dropout_rng.bit_generator.state

    def loss():
        gru._dropout_rng.bit_generator.state = state
        y, h_n = gru.forward(x, h0, lengths)
        return float((y * dy).sum() + (h_n * dh_n).sum())

    loss()
    dx, _ = gru.backward(dy, dh_n)
    want = central_fd(loss, [x, gru.params["weight_ih_l0"]])
    valid = (np.arange(5)[None, :] < lengths[:, None])[:, :, None]
    assert rel_err(dx, want[0] * valid) < 1e-7
    loss()
    gru.backward(dy, dh_n)
    assert rel_err(gru.grads["weight_ih_l0"], want[1]) < 1e-7


def test_backward_with_only_dh_n():
    rng = np.random.default_rng(90)
    gru = GRU(3, 5, num_layers=2, dtype=F64, seed=6)
    x, lengths, h0, dy, dh_n = layer_case(rng, gru, 2, 4, F64)
    gru.forward(x, h0, lengths)
    dx1, dh1 = gru.backward(None, dh_n)
    dx2, dh2 = gru.backward(np.zeros_like(dy), dh_n)
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(dh1, dh2)
    assert np.any(dx1 != 0)


def test_return_gates_match_reference_cache():
    rng = np.random.default_rng(95)
    gru = GRU(4, 5, bidirectional=True, dtype=F64, seed=7)
    x, lengths, h0, _, _ = layer_case(rng, gru, 3, 6, F64)
    y, _, gates = gru.forward(x, h0, lengths, return_gates=True)
    assert set(gates) == {"l0", "l0_reverse"}
    for d, key in enumerate(["l0", "l0_reverse"]):
        sfx = "_l0" + ("_reverse" if d else "")
        W = [gru.params[w + sfx] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        _, _, cache = ref.gru_forward(x, h0[d], *W, lengths, True, bool(d))
        np.testing.assert_array_equal(gates[key]["h"], y[:, :, 5 * d:5 * (d + 1)])
        for s, st in enumerate(cache["steps"]):
            rows = np.flatnonzero(st["active"])
            for g in "rzn":
                np.testing.assert_allclose(gates[key][g][rows, st["t"][rows]], st[g][rows],
                                           rtol=1e-12, atol=1e-14)
        pad = np.arange(6)[None, :] >= lengths[:, None]
        assert all(np.all(gates[key][g][pad] == 0) for g in "rznh")


@pytest.mark.parametrize("reset_after", [True, False])
def test_return_gates_cpu_matches_reference_device(rng, reset_after):
    # the layer's gates come from each backend's gru_gates: the same on 'cpu' and 'reference',
    # for every layer and direction, with the output of the top layer as "h"
    layers = [GRU(3, 5, num_layers=2, bidirectional=True, reset_after=reset_after, dtype=F64,
                  seed=4, device=d) for d in ("cpu", "reference")]
    x, lengths, h0, _, _ = layer_case(rng, layers[0], 3, 6, F64)
    (ya, _, ga), (yb, _, gb) = (g.forward(x, h0, lengths, return_gates=True) for g in layers)
    assert list(ga) == ["l0", "l0_reverse", "l1", "l1_reverse"] and list(gb) == list(ga)
    for key in ga:
        assert list(ga[key]) == ["r", "z", "n", "h"]
        for g in "rznh":
            assert rel_err(ga[key][g], gb[key][g]) < 1e-12, (key, g)
    np.testing.assert_array_equal(ga["l1"]["h"], ya[:, :, :5])
    np.testing.assert_array_equal(ga["l1_reverse"]["h"], ya[:, :, 5:])
    # layer 0's gates follow from its input alone: the per-sequence loop agrees
    sd = layers[0].state_dict()
    for d, key in enumerate(("l0", "l0_reverse")):
        W = [sd[w + "_" + key] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        want = per_row_gates(x, h0[d], *W, lengths, reset_after, bool(d))
        for g in "rznh":
            assert rel_err(ga[key][g], want[g]) < 1e-12, (key, g)


def test_state_dict_roundtrip_and_validation():
    a = GRU(3, 4, num_layers=2, bidirectional=True, seed=1)
    b = GRU(3, 4, num_layers=2, bidirectional=True, seed=2)
    sd = a.state_dict()
    sd["weight_hh_l1"][0, 0] += 1.0          # a copy: the layer does not change
    assert sd["weight_hh_l1"][0, 0] != a.params["weight_hh_l1"][0, 0]
    views = {k: v for k, v in b.params.items()}
    b.load_state_dict(sd)
    for k in sd:
        np.testing.assert_array_equal(b.params[k], sd[k])
        assert b.params[k] is views[k]       # copied in place
    bad = dict(sd)
    del bad["bias_ih_l0"]
    with pytest.raises(ValueError, match="state_dict.*bias_ih_l0"):
        b.load_state_dict(bad)
    for key, value, word in [("weight_ih_l0", np.zeros((12, 4), F32), "shape"),
                             ("weight_ih_l0", np.zeros((12, 3), F64), "dtype"),
                             ("bias_hh_l1_reverse", np.full(12, np.nan, F32), "NaN")]:
        bad = dict(sd)
        bad[key] = value
        with pytest.raises(ValueError, match=f"state_dict\\['{key}'\\].*{word}"):
            b.load_state_dict(bad)


def test_validation_errors_name_the_argument():
    gru = GRU(3, 4, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(F32)
    with pytest.raises(ValueError, match="^backward:"):
        gru.backward(np.zeros((2, 5, 8), F32))
    cases = [
        (dict(x=x[0]), "^x: expected 3-D"),
        (dict(x=x.astype(F64)), "^x: expected dtype float32"),
        (dict(x=np.zeros((2, 5, 4), F32)), "^x: expected shape"),
        (dict(x=np.where(x > 1, np.nan, x).astype(F32)), "^x: contains NaN"),
        (dict(x=x, lengths=np.array([0, 5])), "^lengths: .*>= 1"),
        (dict(x=x, lengths=np.array([-1, 5])), "^lengths: .*>= 1"),
        (dict(x=x, lengths=np.array([6, 5])), "^lengths: .*<= T=5"),
        (dict(x=x, lengths=np.array([2.0, 5.0])), "^lengths: expected an integer"),
        (dict(x=x, lengths=np.array([2, 5, 5])), "^lengths: expected shape"),
        (dict(x=x, h0=np.zeros((2, 2, 4), F32)), "^h0: expected shape"),
        (dict(x=x, h0=np.full((4, 2, 4), np.inf, F32)), "^h0: contains Inf"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            gru.forward(**kwargs)
    gru.forward(x)
    for args, msg in [((np.zeros((2, 5, 4), F32),), "^dy: expected shape"),
                      ((np.zeros((2, 5, 8), F64),), "^dy: expected dtype"),
                      ((None, np.zeros((4, 2, 3), F32)), "^dh_n: expected shape"),
                      ((None, None), "^dy: ")]:
        with pytest.raises(ValueError, match=msg):
            gru.backward(*args)
    for kwargs, msg in [(dict(input_size=0, hidden_size=4), "^input_size:"),
                        (dict(input_size=3, hidden_size=4, dtype=np.int32), "^dtype:"),
                        (dict(input_size=3, hidden_size=4, dropout=1.0), "^dropout:"),
                        (dict(input_size=3, hidden_size=4, device="tpu"), "^device:")]:
        with pytest.raises(ValueError, match=msg):
            GRU(**kwargs)


# ---- PyTorch parity ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (F32, 2e-5)])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False),
                                                      (2, True), (3, True)])
def test_matches_torch_packed_sequences(dtype, tol, num_layers, bidirectional):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    tdtype = {F64: torch.float64, F32: torch.float32}[dtype]
    rng = np.random.default_rng([100, num_layers, bidirectional])
    B, T, I, H = 4, 7, 5, 6
    gru = GRU(I, H, num_layers, bidirectional, dtype=dtype, seed=num_layers)
    ref_gru = torch.nn.GRU(I, H, num_layers, batch_first=True,
                           bidirectional=bidirectional).to(tdtype)
    with torch.no_grad():
        for k, v in gru.params.items():
            getattr(ref_gru, k).copy_(torch.from_numpy(v))
    x, lengths, h0, dy, dh_n = layer_case(rng, gru, B, T, dtype)
    y, h_n = gru.forward(x, h0, lengths)
    dx, dh0 = gru.backward(dy, dh_n)

    xt = torch.from_numpy(x.copy()).requires_grad_()
    h0t = torch.from_numpy(h0.copy()).requires_grad_()
    packed = pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=True,
                                  enforce_sorted=False)
    yp, h_nt = ref_gru(packed, h0t)
    yt, _ = pad_packed_sequence(yp, batch_first=True, total_length=T)
    ((yt * torch.from_numpy(dy)).sum() + (h_nt * torch.from_numpy(dh_n)).sum()).backward()
    pairs = [(y, yt), (h_n, h_nt), (dx, xt.grad), (dh0, h0t.grad)]
    pairs += [(gru.grads[k], getattr(ref_gru, k).grad) for k in gru.grads]
    for got, want in pairs:
        assert rel_err(got, want.detach().numpy()) < tol


def test_gru_exported_from_package():
    assert gruengine.GRU is GRU


def test_reads_params_and_writes_grads_through_a_flat_buffer():
    from gruengine.params import ParamBuffer
    rng = np.random.default_rng(110)
    gru = GRU(3, 4, num_layers=2, bidirectional=True, seed=8)
    x, lengths, h0, dy, dh_n = layer_case(rng, gru, 2, 5, F32)
    y0, _ = gru.forward(x, h0, lengths)
    gru.backward(dy, dh_n)
    g0 = {k: v.copy() for k, v in gru.grads.items()}
    p0 = gru.state_dict()
    buf = ParamBuffer({"gru": gru})
    y1, _ = gru.forward(x, h0, lengths)
    gru.backward(dy, dh_n)
    np.testing.assert_array_equal(y0, y1)
    for k in g0:                                  # gradients land in the flat buffer
        np.testing.assert_array_equal(buf.grads["gru." + k], g0[k])
    buf.data *= 2                                 # the layer sees updates made to the buffer
    y2, _ = gru.forward(x, h0, lengths)
    other = GRU(3, 4, num_layers=2, bidirectional=True, seed=0)
    other.load_state_dict({k: v * 2 for k, v in p0.items()})
    np.testing.assert_array_equal(other.forward(x, h0, lengths)[0], y2)
    assert not np.allclose(y2, y1)


# ---- the CPU op's row blocks and its lean inference path ------------------------------------
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_cpu_results_do_not_depend_on_the_row_blocks(reset_after, reverse, monkeypatch):
    # one block runs every row on one thread; one block per row is the most parallel split:
    # the same bits either way (so the same for every thread count), and the reference agrees
    rng = np.random.default_rng([60, reset_after, reverse])
    B, T, I, H = 11, 9, 7, 21
    args = op_inputs(rng, B, T, I, H, F32, rng.integers(1, T + 1, B))
    dy = rng.standard_normal((B, T, H)).astype(F32)
    dh_n = rng.standard_normal((B, H)).astype(F32)
    out = {}
    for name, blocks in (("one", lambda pk, mr: np.array([0, len(pk.perm)])),
                         ("per row", lambda pk, mr: np.arange(len(pk.perm) + 1))):
        monkeypatch.setattr(cpu, "row_blocks", blocks)
        y, h_n, cache = cpu.gru_forward(*args, reset_after, reverse)
        out[name] = (y, h_n) + cpu.gru_backward(dy, dh_n, *args, cache, reset_after, reverse)
    for a, b in zip(out["one"], out["per row"]):
        np.testing.assert_array_equal(a, b)
    y_r, h_r, c_r = ref.gru_forward(*args, reset_after, reverse)
    want = (y_r, h_r) + ref.gru_backward(dy, dh_n, *args, c_r, reset_after, reverse)
    for got, w in zip(out["one"], want):
        assert rel_err(got, w) < 2e-6


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("reset_after", [True, False])
def test_cpu_infer_is_the_forward_without_a_cache(dtype, reset_after):
    rng = np.random.default_rng([61, reset_after, dtype == F32])
    B, T, I, H = 6, 8, 5, 33
    for lengths in ([T] * B, rng.integers(1, T + 1, B)):
        args = op_inputs(rng, B, T, I, H, dtype, lengths)
        for reverse in (False, True):
            y, h_n, _ = cpu.gru_forward(*args, reset_after, reverse)
            yi, hi = cpu.gru_infer(*args, reset_after, reverse)
            np.testing.assert_array_equal(yi, y)
            np.testing.assert_array_equal(hi, h_n)
            y_r, h_r, _ = ref.gru_forward(*args, reset_after, reverse)
            assert rel_err(yi, y_r) < (1e-12 if dtype == F64 else 2e-6)


def test_layer_eval_forward_then_backward_matches_training_mode():
    # eval mode takes the lean path (no cache); a backward after it recomputes the forward
    rng = np.random.default_rng(62)
    a = GRU(4, 10, num_layers=2, bidirectional=True, seed=2)
    b = GRU(4, 10, num_layers=2, bidirectional=True, seed=2)
    b.eval()
    x, lengths, h0, dy, dh_n = layer_case(rng, a, 5, 6, F32)
    ya, ha = a.forward(x, h0, lengths)
    yb, hb = b.forward(x, h0, lengths)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ha, hb)
    dxa, dha = a.backward(dy, dh_n)
    dxb, dhb = b.backward(dy, dh_n)
    np.testing.assert_array_equal(dxa, dxb)
    np.testing.assert_array_equal(dha, dhb)
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], b.grads[k])
    # and the gradients are right: the reference device in training mode
    c = GRU(4, 10, num_layers=2, bidirectional=True, seed=2, device="reference")
    c.forward(x, h0, lengths)
    dxc, _ = c.backward(dy, dh_n)
    assert rel_err(dxb, dxc) < 2e-6
    for k in a.grads:
        assert rel_err(b.grads[k], c.grads[k]) < 2e-6, k
