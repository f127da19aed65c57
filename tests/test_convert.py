"""Weight converters: round trips PyTorch <-> gruengine <-> Keras <-> ONNX, and small independent
NumPy implementations of the Keras and ONNX equations, run on the converted weights, reproduce
the gruengine GRU/LSTM outputs. No keras/onnx packages needed."""
import numpy as np
import pytest

from gruengine.convert import describe, from_keras, from_onnx, to_keras, to_onnx
from gruengine.lstm import LSTM


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def random_state_dict(rng, cell, I, H, L, bidir, dtype=np.float64):
    G = {"gru": 3, "lstm": 4}[cell]
    sd = {}
    for k in range(L):
        for sfx in ("", "_reverse")[:1 + bidir]:
            n_in = I if k == 0 else (1 + bidir) * H
            sd[f"weight_ih_l{k}{sfx}"] = rng.uniform(-0.6, 0.6, (G * H, n_in)).astype(dtype)
            sd[f"weight_hh_l{k}{sfx}"] = rng.uniform(-0.6, 0.6, (G * H, H)).astype(dtype)
            sd[f"bias_ih_l{k}{sfx}"] = rng.uniform(-0.6, 0.6, G * H).astype(dtype)
            sd[f"bias_hh_l{k}{sfx}"] = rng.uniform(-0.6, 0.6, G * H).astype(dtype)
    return sd


def assert_same_dict(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- the engine's outputs -------------------------------------------------------------------

def engine_gru(sd, x, lengths, reset_after):
    """y (B,T,D*H), h_n (L*D,B,H) of the gruengine GRU: the GRU layer when it is importable,
    else its NumPy reference op stacked by hand."""
    _, L, bidir, I, H = describe(sd)
    try:
        from gruengine.gru import GRU
    except ImportError:
        GRU = None
    if GRU is not None:
        gru = GRU(I, H, num_layers=L, bidirectional=bidir, reset_after=reset_after,
                  dtype=x.dtype, seed=0)
        gru.load_state_dict(sd)
        return gru.forward(x, lengths=lengths)
    from gruengine.reference.gru import gru_forward
    B = x.shape[0]
    inp, h_n = x, []
    for k in range(L):
        outs = []
        for d, sfx in enumerate(("", "_reverse")[:1 + bidir]):
            y, hn, _ = gru_forward(inp, np.zeros((B, H)), sd[f"weight_ih_l{k}{sfx}"],
                                   sd[f"weight_hh_l{k}{sfx}"], sd[f"bias_ih_l{k}{sfx}"],
                                   sd[f"bias_hh_l{k}{sfx}"], lengths, reset_after, bool(d))
            outs.append(y)
            h_n.append(hn)
        inp = np.concatenate(outs, axis=2)
    return inp, np.stack(h_n)


def engine_lstm(sd, x, lengths):
    _, L, bidir, I, H = describe(sd)
    lstm = LSTM(I, H, num_layers=L, bidirectional=bidir, dtype=x.dtype, seed=0)
    lstm.load_state_dict(sd)
    y, (h_n, c_n) = lstm.forward(x, lengths=lengths)
    return y, h_n


# ---- independent implementations of the foreign equations -----------------------------------

def keras_cell_step(cell, x_t, state, kernel, recurrent, bias, reset_after):
    """One step of keras.layers.GRU / LSTM (default activations), written from Keras' docs."""
    if cell == "lstm":
        h, c = state
        zf = x_t @ kernel + h @ recurrent + bias
        i, f, cc, o = np.split(zf, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
        return sigmoid(o) * np.tanh(c), (sigmoid(o) * np.tanh(c), c)
    h = state[0]
    H = h.shape[1]
    if reset_after:
        mx = x_t @ kernel + bias[0]
        mi = h @ recurrent + bias[1]
        z = sigmoid(mx[:, :H] + mi[:, :H])
        r = sigmoid(mx[:, H:2 * H] + mi[:, H:2 * H])
        hh = np.tanh(mx[:, 2 * H:] + r * mi[:, 2 * H:])
    else:
        mx = x_t @ kernel + bias
        z = sigmoid(mx[:, :H] + h @ recurrent[:, :H])
        r = sigmoid(mx[:, H:2 * H] + h @ recurrent[:, H:2 * H])
        hh = np.tanh(mx[:, 2 * H:] + (r * h) @ recurrent[:, 2 * H:])
    h = z * h + (1 - z) * hh
    return h, (h,)


def keras_stack(cell, layers, x, reset_after=True):
    """Stacked keras layers (Bidirectional merge_mode='concat' where 6 arrays): full sequences."""
    B, T, _ = x.shape
    inp, finals = x, []
    for weights in layers:
        outs = []
        for d in range(len(weights) // 3):
            kernel, recurrent, bias = weights[3 * d:3 * d + 3]
            H = recurrent.shape[0]
            state = (np.zeros((B, H)),) * (2 if cell == "lstm" else 1)
            ys = np.zeros((B, T, H))
            for t in (range(T) if d == 0 else range(T - 1, -1, -1)):   # go_backwards
                ys[:, t], state = keras_cell_step(cell, inp[:, t], state, kernel, recurrent,
                                                  bias, reset_after)
            outs.append(ys)
            finals.append(state[0])
        inp = np.concatenate(outs, axis=2)
    return inp, np.stack(finals)


def onnx_stack(cell, layers, x, lengths):
    """Stacked ONNX GRU/LSTM operators with sequence_lens, written from the ONNX operator spec.

    Returns Y as (B, T, D*H) (ONNX's Y is (T, D, B, H)) and Y_h stacked over layers."""
    B, T, _ = x.shape
    inp, finals = x, []
    for layer in layers:
        W, R, Bias = layer["W"], layer["R"], layer["B"]
        D, GH, H = R.shape
        Y = np.zeros((B, T, D, H))
        for d in range(D):
            Wb, Rb = Bias[d, :GH], Bias[d, GH:]
            for b in range(B):
                h = np.zeros(H)
                c = np.zeros(H)
                L = lengths[b]
                for t in (range(L) if d == 0 else range(L - 1, -1, -1)):
                    xw = W[d] @ inp[b, t] + Wb
                    if cell == "gru":
                        zt = sigmoid(xw[:H] + R[d, :H] @ h + Rb[:H])
                        rt = sigmoid(xw[H:2 * H] + R[d, H:2 * H] @ h + Rb[H:2 * H])
                        if layer["linear_before_reset"]:
                            ht = np.tanh(xw[2 * H:] + rt * (R[d, 2 * H:] @ h + Rb[2 * H:]))
                        else:
                            ht = np.tanh(xw[2 * H:] + R[d, 2 * H:] @ (rt * h) + Rb[2 * H:])
                        h = (1 - zt) * ht + zt * h
                    else:
                        g = xw + R[d] @ h + Rb                     # i, o, f, c
                        it, ot = sigmoid(g[:H]), sigmoid(g[H:2 * H])
                        ft, ct = sigmoid(g[2 * H:3 * H]), np.tanh(g[3 * H:])
                        c = ft * c + it * ct
                        h = ot * np.tanh(c)
                    Y[b, t, d] = h
                finals.append(h)
        inp = Y.reshape(B, T, D * H)
    Lyr, D = len(layers), layers[0]["R"].shape[0]
    Y_h = np.array(finals).reshape(Lyr, D, B, -1).reshape(Lyr * D, B, -1)
    return inp, Y_h


# ---- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("L,bidir", [(1, False), (2, True)])
def test_round_trips_are_exact(cell, L, bidir):
    rng = np.random.default_rng(L + 10 * bidir)
    sd = random_state_dict(rng, cell, 3, 5, L, bidir)
    assert describe(sd) == (cell, L, bidir, 3, 5)
    assert_same_dict(from_onnx(to_onnx(sd)), sd)
    if cell == "gru":
        assert_same_dict(from_keras(to_keras(sd)), sd)
        # ONNX <-> Keras through gruengine
        assert_same_dict(from_keras(to_keras(from_onnx(to_onnx(sd)))), sd)
    k = to_keras(sd)
    assert len(k) == L and len(k[0]) == 3 * (1 + bidir)
    G = 3 if cell == "gru" else 4
    assert k[0][0].shape == (3, G * 5) and k[0][1].shape == (5, G * 5)
    o = to_onnx(sd)
    assert o[-1]["W"].shape == (1 + bidir, G * 5, (1 + bidir) * 5 if L > 1 else 3)
    assert o[0]["B"].shape == (1 + bidir, 2 * G * 5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_equations_on_converted_gru_weights_match_engine(reset_after):
    rng = np.random.default_rng(3 + reset_after)
    B, T, I, H = 3, 5, 4, 6
    sd = random_state_dict(rng, "gru", I, H, 2, True)
    x = rng.standard_normal((B, T, I))
    full = np.full(B, T)
    y, h_n = engine_gru(sd, x, full, reset_after)
    kw = to_keras(sd, reset_after=reset_after)
    assert kw[0][2].shape == ((2, 3 * H) if reset_after else (3 * H,))
    yk, hk = keras_stack("gru", kw, x, reset_after)
    np.testing.assert_allclose(yk, y, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hk, h_n, rtol=1e-12, atol=1e-13)
    # back from Keras: the same function (for reset_after=False the biases come back merged)
    y2, h2 = engine_gru(from_keras(kw, reset_after=reset_after), x, full, reset_after)
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reset_after", [True, False])
def test_onnx_equations_on_converted_gru_weights_match_engine(reset_after):
    rng = np.random.default_rng(13 + reset_after)
    B, T, I, H = 4, 6, 3, 5
    sd = random_state_dict(rng, "gru", I, H, 2, True)
    x = rng.standard_normal((B, T, I))
    lengths = np.array([6, 2, 4, 1])
    y, h_n = engine_gru(sd, x, lengths, reset_after)
    ow = to_onnx(sd, reset_after=reset_after)
    assert ow[0]["linear_before_reset"] == int(reset_after)
    yo, ho = onnx_stack("gru", ow, x, lengths)
    np.testing.assert_allclose(yo, y, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ho, h_n, rtol=1e-12, atol=1e-13)
    assert_same_dict(from_onnx(ow, reset_after=reset_after), sd)


def test_lstm_keras_and_onnx_equations_match_engine_lstm():
    rng = np.random.default_rng(23)
    B, T, I, H = 3, 5, 4, 7
    sd = random_state_dict(rng, "lstm", I, H, 2, True)
    x = rng.standard_normal((B, T, I))
    full = np.full(B, T)
    y, h_n = engine_lstm(sd, x, full)
    kw = to_keras(sd)
    assert kw[0][2].shape == (4 * H,)
    yk, hk = keras_stack("lstm", kw, x)
    np.testing.assert_allclose(yk, y, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hk, h_n, rtol=1e-12, atol=1e-13)
    yb, _ = engine_lstm(from_keras(kw), x, full)     # merged biases: same function
    np.testing.assert_allclose(yb, y, rtol=1e-12, atol=1e-13)
    lengths = np.array([5, 1, 3])
    y, h_n = engine_lstm(sd, x, lengths)
    yo, ho = onnx_stack("lstm", to_onnx(sd), x, lengths)
    np.testing.assert_allclose(yo, y, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ho, h_n, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_state_dict_through_keras_and_onnx(cell):
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    B, T, I, H = 3, 5, 4, 6
    mod = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](
        I, H, num_layers=2, bidirectional=True, batch_first=True).double()
    sd = {k: v.detach().numpy().copy() for k, v in mod.state_dict().items()}
    x = np.random.default_rng(6).standard_normal((B, T, I))
    with torch.no_grad():
        yt, ht = mod(torch.tensor(x))
    ht = ht[0] if cell == "lstm" else ht
    back = from_onnx(to_onnx(from_keras(to_keras(sd))))
    if cell == "gru":
        assert_same_dict(back, sd)
    # the torch weights through Keras and ONNX still compute torch's outputs
    yk, hk = keras_stack(cell, to_keras(sd), x)
    yo, ho = onnx_stack(cell, to_onnx(back), x, np.full(B, T))
    for y, h in ((yk, hk), (yo, ho)):
        np.testing.assert_allclose(y, yt.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h, ht.numpy(), rtol=1e-10, atol=1e-12)
    y_engine, h_engine = (engine_gru(back, x, np.full(B, T), True) if cell == "gru"
                          else engine_lstm(back, x, np.full(B, T)))
    np.testing.assert_allclose(y_engine, yt.numpy(), rtol=1e-10, atol=1e-12)


def test_converters_reject_bad_input():
    rng = np.random.default_rng(0)
    sd = random_state_dict(rng, "gru", 3, 4, 1, False)
    with pytest.raises(ValueError, match=r"unexpected key 'weight_xx_l0'"):
        to_keras(dict(sd, weight_xx_l0=sd["bias_ih_l0"]))
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\]: expected shape \(3H, H\)"):
        to_onnx(dict(sd, weight_hh_l0=np.zeros((10, 4))))
    with pytest.raises(ValueError, match=r"state_dict\['bias_hh_l0'\]: expected shape \(12,\)"):
        to_onnx(dict(sd, bias_hh_l0=np.zeros(11)))
    kw = to_keras(sd, reset_after=False)
    with pytest.raises(ValueError, match=r"layers\[0\]\[2\]: expected 2-D array of shape \(2, 12"):
        from_keras(kw, reset_after=True)
    ow = to_onnx(sd, reset_after=True)
    with pytest.raises(ValueError, match="linear_before_reset'\\]: expected 0 for reset_after"):
        from_onnx(ow, reset_after=False)
    with pytest.raises(ValueError, match=r"layers\[0\]: expected 3 arrays .* got 2 arrays"):
        from_keras([kw[0][:2]])
    lw = to_onnx(random_state_dict(rng, "lstm", 3, 4, 1, False))[0]
    with pytest.raises(ValueError, match=r"\['P'\]: peephole weights are not supported"):
        from_onnx(dict(lw, P=np.ones((1, 12))))
    with pytest.raises(ValueError, match="reset_after: only applies to a GRU"):
        to_keras(random_state_dict(rng, "lstm", 3, 4, 1, False), reset_after=False)
