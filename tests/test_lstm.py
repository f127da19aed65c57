"""LSTM: NumPy reference vs finite differences, Numba CPU kernels vs reference, layer vs torch.

Every comparison is against an independent computation on fresh random inputs: central
differences in float64, the reference ops, or torch.nn.LSTM (skipped when torch is missing).
"""
import numpy as np
import pytest

import gruengine
from gruengine.kernels.cpu import lstm as cpu
from gruengine.reference import lstm as ref
from tests.gradcheck import assert_sampled_fd, numeric_grad

OPS = ("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh")


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def make_op_inputs(rng, B, T, I, H, dtype=np.float64, lengths=None):
    s = 1.0 / np.sqrt(H)
    args = {
        "x": rng.standard_normal((B, T, I)),
        "h0": rng.standard_normal((B, H)) * 0.5,
        "c0": rng.standard_normal((B, H)) * 0.5,
        "W_ih": rng.uniform(-s, s, (4 * H, I)) * 2,
        "W_hh": rng.uniform(-s, s, (4 * H, H)) * 2,
        "b_ih": rng.uniform(-s, s, 4 * H),
        "b_hh": rng.uniform(-s, s, 4 * H),
    }
    args = {k: v.astype(dtype) for k, v in args.items()}
    if lengths is None:
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
    return args, np.asarray(lengths, dtype=np.int64)


def op_loss(mod, args, lengths, reverse, dy, dh, dc):
    y, h_n, c_n, _ = mod.lstm_forward(*(args[k] for k in OPS), lengths, reverse)
    return np.sum(y * dy) + np.sum(h_n * dh) + np.sum(c_n * dc)


@pytest.mark.parametrize("reverse", [False, True])
def test_reference_matches_finite_differences(reverse):
    rng = np.random.default_rng(101 + reverse)
    B, T, I, H = 3, 4, 3, 2
    args, lengths = make_op_inputs(rng, B, T, I, H, lengths=[4, 2, 1])
    dy = rng.standard_normal((B, T, H))
    dh = rng.standard_normal((B, H))
    dc = rng.standard_normal((B, H))
    y, h_n, c_n, cache = ref.lstm_forward(*(args[k] for k in OPS), lengths, reverse)
    grads = ref.lstm_backward(dy, dh, dc, *(args[k] for k in OPS), lengths, cache, reverse)
    analytic = dict(zip(OPS, grads[:3] + grads[3:]))
    eps = 1e-6
    for name in OPS:
        num = numeric_grad(lambda: op_loss(ref, args, lengths, reverse, dy, dh, dc), args[name],
                           eps)
        np.testing.assert_allclose(analytic[name], num, rtol=1e-6, atol=1e-8, err_msg=name)
    # padding: zero output, zero input gradient
    for b, L in enumerate(lengths):
        assert np.all(y[b, L:] == 0)
        assert np.all(analytic["x"][b, L:] == 0)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "prange"])
def test_cpu_kernels_match_reference(dtype, tol, reverse, parallel, monkeypatch):
    # one block of rows runs every recurrence on one thread; one block per row runs them
    # in parallel blocks
    blocks = (lambda pk, mr: np.arange(len(pk.perm) + 1)) if parallel else (lambda pk, mr: np.array([0, len(pk.perm)]))
    monkeypatch.setattr(cpu, "row_blocks", blocks)
    rng = np.random.default_rng(7 + reverse + 10 * (dtype == np.float32))
    B, T, I, H = 3, 6, 5, 17
    args, lengths = make_op_inputs(rng, B, T, I, H, dtype, lengths=[2, 6, 1])
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)
    dc = rng.standard_normal((B, H)).astype(dtype)
    out_r = ref.lstm_forward(*(args[k] for k in OPS), lengths, reverse)
    out_c = cpu.lstm_forward(*(args[k] for k in OPS), lengths, reverse)
    for a, b in zip(out_c[:3], out_r[:3]):
        assert a.dtype == dtype
        assert rel_err(a, b) < tol
    g_r = ref.lstm_backward(dy, dh, dc, *(args[k] for k in OPS), lengths, out_r[3], reverse)
    g_c = cpu.lstm_backward(dy, dh, dc, *(args[k] for k in OPS), lengths, out_c[3], reverse)
    for name, a, b in zip(("dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh"), g_c, g_r):
        assert a.shape == b.shape and a.dtype == dtype, name
        assert rel_err(a, b) < tol, name
    gates_r, gates_c = ref.lstm_gates(out_r[3]), cpu.lstm_gates(out_c[3])
    assert set(gates_c) == set("ifgoch")
    for k in gates_r:
        assert rel_err(gates_c[k], gates_r[k]) < tol, k
    np.testing.assert_allclose(gates_c["h"], out_c[0], rtol=0, atol=0)


@pytest.mark.parametrize("mod", [ref, cpu], ids=["reference", "cpu"])
def test_padding_never_reaches_anything(mod):
    rng = np.random.default_rng(5)
    B, T, I, H = 3, 5, 4, 3
    args, lengths = make_op_inputs(rng, B, T, I, H, lengths=[5, 2, 3])
    dy = rng.standard_normal((B, T, H))
    dh, dc = rng.standard_normal((2, B, H))
    results = []
    for trial in range(2):
        a = dict(args, x=args["x"].copy())
        d = dy.copy()
        if trial:
            for b, L in enumerate(lengths):
                a["x"][b, L:] = rng.standard_normal(a["x"][b, L:].shape) * 100
                d[b, L:] = rng.standard_normal(d[b, L:].shape) * 100
        for reverse in (False, True):
            y, hn, cn, cache = mod.lstm_forward(*(a[k] for k in OPS), lengths, reverse)
            g = mod.lstm_backward(d, dh, dc, *(a[k] for k in OPS), lengths, cache, reverse)
            results.append((y, hn, cn) + tuple(g))
    for r0, r1 in zip(results[:2], results[2:]):
        for a, b in zip(r0, r1):
            np.testing.assert_array_equal(a, b)
    # h_n is the state at the last valid step: a shorter run on the cut sequence agrees
    y, hn, cn, _ = mod.lstm_forward(*(args[k] for k in OPS), lengths, False)
    b = 1
    one = {k: (v[b:b + 1, :lengths[b]].copy() if k == "x" else
               v[b:b + 1].copy() if k in ("h0", "c0") else v) for k, v in args.items()}
    y1, hn1, cn1, _ = mod.lstm_forward(*(one[k] for k in OPS), lengths[b:b + 1], False)
    np.testing.assert_allclose(hn1[0], hn[b], rtol=1e-12)
    np.testing.assert_allclose(cn1[0], cn[b], rtol=1e-12)
    np.testing.assert_allclose(y1[0], y[b, :lengths[b]], rtol=1e-12)


def layer_loss(lstm, x, h0, c0, lengths, dy, dh, dc):
    y, (h_n, c_n) = lstm.forward(x, (h0, c0), lengths)
    return np.sum(y * dy) + np.sum(h_n * dh) + np.sum(c_n * dc)


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_layer_bidirectional_two_layers_matches_finite_differences(dropout):
    rng = np.random.default_rng(11)
    B, T, I, H, L = 3, 4, 2, 3, 2
    lstm = gruengine.LSTM(I, H, num_layers=L, bidirectional=True, dtype=np.float64,
                          device="cpu", seed=3, dropout=dropout)
    x = rng.standard_normal((B, T, I))
    h0, c0 = rng.standard_normal((2, L * 2, B, H)) * 0.5
    lengths = np.array([4, 1, 3])
    dy = rng.standard_normal((B, T, 2 * H))
    dh, dc = rng.standard_normal((2, L * 2, B, H))
    rng_state = lstm._dropout_rng.bit_generator.state   # same dropout masks every forward

    def loss():
        lstm._dropout_rng.bit_generator.state = rng_state
        return layer_loss(lstm, x, h0, c0, lengths, dy, dh, dc)

    loss()
    dx, (dh0, dc0) = lstm.backward(dy, (dh, dc))
    eps = 1e-6
    checks = [("x", x, dx), ("h0", h0, dh0), ("c0", c0, dc0)]
    checks += [(k, lstm.params[k], lstm.grads[k].copy()) for k in lstm.params]
    assert_sampled_fd(loss, checks, eps)
    if dropout:
        lstm._dropout_rng.bit_generator.state = rng_state
        y_train, _ = lstm.forward(x, (h0, c0), lengths)
        y_eval, _ = lstm.eval().forward(x, (h0, c0), lengths)
        assert not np.allclose(y_train, y_eval)


def test_layer_gates_state_dict_and_devices_agree():
    rng = np.random.default_rng(21)
    B, T, I, H = 3, 5, 4, 17
    a = gruengine.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    b = gruengine.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=2,
                       device="reference")
    assert not np.allclose(a.params["weight_ih_l0"], b.params["weight_ih_l0"])
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((B, T, I))
    lengths = np.array([5, 3, 1])
    ya, (ha, ca), ga = a.forward(x, lengths=lengths, return_gates=True)
    yb, (hb, cb), gb = b.forward(x, lengths=lengths, return_gates=True)
    assert set(ga) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    for k in ga:
        for n in "ifgoch":
            assert ga[k][n].shape == (B, T, H)
            assert rel_err(ga[k][n], gb[k][n]) < 1e-12
        np.testing.assert_allclose(ga[k]["h"], ga[k]["o"] * np.tanh(ga[k]["c"]), atol=1e-15)
    np.testing.assert_array_equal(ga["l1"]["h"], ya[:, :, :H])
    np.testing.assert_array_equal(ga["l1_reverse"]["h"], ya[:, :, H:])
    for u, v in ((ya, yb), (ha, hb), (ca, cb)):
        assert rel_err(u, v) < 1e-12
    dy = rng.standard_normal(ya.shape)
    dxa, _ = a.backward(dy)
    dxb, _ = b.backward(dy)
    assert rel_err(dxa, dxb) < 1e-12
    for k in a.grads:
        assert rel_err(a.grads[k], b.grads[k]) < 1e-11, k
    # dy may be None when only a state gradient flows back; it then equals dy = 0
    dh = rng.standard_normal(ha.shape)
    dx_none, (dh0_none, _) = a.backward(None, (dh, None))
    dx_zero, (dh0_zero, _) = a.backward(np.zeros_like(ya), (dh, np.zeros_like(ca)))
    assert np.abs(dx_none).max() > 0
    np.testing.assert_array_equal(dx_none, dx_zero)
    np.testing.assert_array_equal(dh0_none, dh0_zero)
    # init: uniform in ±1/sqrt(H), reproducible from the seed
    c = gruengine.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    for k, v in c.params.items():
        np.testing.assert_array_equal(v, a.params[k])
        assert np.abs(v).max() <= 1 / np.sqrt(H)


def test_layer_rejects_bad_input_with_one_line_messages():
    lstm = gruengine.LSTM(4, 3, seed=0)
    x = np.zeros((2, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"^x: expected shape \(\?, \?, 4\)"):
        lstm.forward(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match="x: expected dtype float32, got float64"):
        lstm.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="lengths: every length must be <= T=5"):
        lstm.forward(x, lengths=np.array([5, 6]))
    with pytest.raises(ValueError, match=r"h0_c0\[1\]: expected shape \(1, 2, 3\)"):
        lstm.forward(x, (None, np.zeros((1, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="backward: no forward pass to differentiate"):
        lstm.backward(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l0'\]"):
        sd = lstm.state_dict()
        del sd["bias_hh_l0"]
        lstm.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"dropout: expected a float in \[0, 1\)"):
        gruengine.LSTM(4, 3, dropout=1.0)
    with pytest.raises(ValueError, match="hidden_size: expected an integer >= 1"):
        gruengine.LSTM(4, 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_layer_matches_torch(dtype, num_layers, bidirectional):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    tdtype = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    tol = 1e-9 if dtype == np.float64 else 2e-5
    seed = 100 * num_layers + bidirectional + (dtype == np.float32)
    rng = np.random.default_rng(seed)
    B, T, I, H = 4, 6, 5, 17
    D = 2 if bidirectional else 1
    torch.manual_seed(seed)
    tl = torch.nn.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional,
                       batch_first=True).to(tdtype)
    ours = gruengine.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional,
                          dtype=dtype, seed=seed)
    ours.load_state_dict({k: v.detach().numpy().copy() for k, v in tl.state_dict().items()})
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0, c0 = rng.standard_normal((2, num_layers * D, B, H)).astype(dtype)
    lengths = np.array([3, 6, 1, 4])                       # unsorted on purpose
    dy = rng.standard_normal((B, T, D * H)).astype(dtype)
    dh, dc = rng.standard_normal((2, num_layers * D, B, H)).astype(dtype)

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    yp, (hnt, cnt) = tl(packed, (h0t, c0t))
    yt, _ = pad_packed_sequence(yp, batch_first=True, total_length=T)
    loss = (yt * torch.tensor(dy)).sum() + (hnt * torch.tensor(dh)).sum() \
        + (cnt * torch.tensor(dc)).sum()
    loss.backward()

    y, (h_n, c_n) = ours.forward(x, (h0, c0), lengths)
    dx, (dh0, dc0) = ours.backward(dy, (dh, dc))
    pairs = [("y", y, yt), ("h_n", h_n, hnt), ("c_n", c_n, cnt), ("dx", dx, xt.grad),
             ("dh0", dh0, h0t.grad), ("dc0", dc0, c0t.grad)]
    pairs += [(k, ours.grads[k], p.grad) for k, p in tl.named_parameters()]
    assert len(pairs) == 6 + 4 * num_layers * D
    for name, mine, theirs in pairs:
        theirs = theirs.detach().numpy()
        assert mine.shape == theirs.shape and mine.dtype == dtype, name
        assert rel_err(mine, theirs) < tol, (name, rel_err(mine, theirs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_infer_and_row_blocks(dtype, monkeypatch):
    # lstm_infer is lstm_forward without its cache (same bits); the results do not depend on
    # how the rows are cut into parallel blocks; the reference agrees
    rng = np.random.default_rng(70 + (dtype == np.float32))
    B, T, I, H = 7, 6, 5, 19
    args, lengths = make_op_inputs(rng, B, T, I, H, dtype, lengths=rng.integers(1, T + 1, B))
    a = [args[k] for k in OPS]
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)
    dc = rng.standard_normal((B, H)).astype(dtype)
    out = {}
    for name, blocks in (("one", lambda pk, mr: np.array([0, len(pk.perm)])),
                         ("per row", lambda pk, mr: np.arange(len(pk.perm) + 1))):
        monkeypatch.setattr(cpu, "row_blocks", blocks)
        y, h_n, c_n, cache = cpu.lstm_forward(*a, lengths, True)
        yi, hi, ci = cpu.lstm_infer(*a, lengths, True)
        for u, v in zip((yi, hi, ci), (y, h_n, c_n)):
            np.testing.assert_array_equal(u, v)
        out[name] = (y, h_n, c_n) + cpu.lstm_backward(dy, dh, dc, *a, lengths, cache, True)
    for u, v in zip(out["one"], out["per row"]):
        np.testing.assert_array_equal(u, v)
    y_r, h_r, c_r, cache_r = ref.lstm_forward(*a, lengths, True)
    want = (y_r, h_r, c_r) + ref.lstm_backward(dy, dh, dc, *a, lengths, cache_r, True)
    for u, v in zip(out["one"], want):
        assert rel_err(u, v) < (1e-12 if dtype == np.float64 else 2e-5)
