"""The LSTM's forget_bias option: initial values, parity with torch.nn.LSTM, the model and run
configuration key, the command-line option, and old checkpoints without the key.

Each check compares against an independent computation: the seed's draws without the
option, torch.nn.LSTM given the same state_dict (skipped without torch), or the NumPy
reference ops on fresh random inputs.
"""
import json

import numpy as np
import pytest

import gruengine
from gruengine.config import model_config, resolve_config
from gruengine.models import ModelConfig, SequenceModel
from gruengine.reference import lstm as ref


@pytest.mark.parametrize("fb", [1.0, -0.5, 2])
def test_forget_bias_moves_only_the_forget_block_of_bias_ih(fb):
    I, H = 5, 7
    plain = gruengine.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    biased = gruengine.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=3,
                            forget_bias=fb)
    assert biased.forget_bias == float(fb) and plain.forget_bias == 0.0
    assert set(plain.params) == set(biased.params) and len(plain.params) == 16
    bound = 1 / np.sqrt(H)
    for k, v in biased.params.items():
        diff = v - plain.params[k]
        if k.startswith("bias_ih_"):
            # gate order i, f, g, o: rows H:2H are the forget gate's
            np.testing.assert_allclose(diff[H:2 * H], fb, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(diff[:H], 0)
            np.testing.assert_array_equal(diff[2 * H:], 0)
            assert np.all(np.abs(v[H:2 * H] - fb) <= bound)
        else:
            np.testing.assert_array_equal(diff, 0)     # every other draw of the seed is kept
    # the state_dict is what torch names and holds: loading it into a fresh LSTM reproduces it
    fresh = gruengine.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=9)
    fresh.load_state_dict(biased.state_dict())
    for k, v in biased.state_dict().items():
        np.testing.assert_array_equal(fresh.params[k], v)


def test_forget_bias_forward_matches_the_reference_ops():
    # the forget gate at t = 0 with zero input and state is sigmoid(b_ih_f + b_hh_f)
    rng = np.random.default_rng(41)
    B, T, I, H = 3, 6, 4, 5
    lstm = gruengine.LSTM(I, H, dtype=np.float64, seed=int(rng.integers(1000)), forget_bias=1.0)
    p = lstm.params
    x = rng.standard_normal((B, T, I))
    lengths = np.array([6, 2, 4])
    y, (h_n, c_n), gates = lstm.forward(x, lengths=lengths, return_gates=True)
    z = np.zeros((B, H))
    y_ref, h_ref, c_ref, _ = ref.lstm_forward(x, z, z, p["weight_ih_l0"], p["weight_hh_l0"],
                                              p["bias_ih_l0"], p["bias_hh_l0"], lengths, False)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c_n, c_ref[None], rtol=1e-12, atol=1e-14)
    f0 = gruengine.LSTM(I, H, dtype=np.float64, seed=0, forget_bias=1.0).forward(
        np.zeros((1, 1, I)), return_gates=True)[2]["l0"]["f"][0, 0]
    b = gruengine.LSTM(I, H, dtype=np.float64, seed=0, forget_bias=1.0).params
    np.testing.assert_allclose(f0, 1 / (1 + np.exp(-(b["bias_ih_l0"] + b["bias_hh_l0"])[H:2 * H])),
                               rtol=1e-12)
    assert f0.min() > 1 / (1 + np.exp(-(1 - 2 / np.sqrt(H))))      # near sigmoid(1) = 0.73


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forget_bias_forward_and_backward_match_torch(dtype):
    torch = pytest.importorskip("torch")
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    tol = 2e-5 if dtype == np.float32 else 1e-10
    rng = np.random.default_rng(7 + (dtype == np.float64))
    B, T, I, H = 4, 7, 3, 6
    ours = gruengine.LSTM(I, H, num_layers=2, dtype=dtype, seed=5, forget_bias=1.0)
    tl = torch.nn.LSTM(I, H, num_layers=2, batch_first=True).to(tdtype)
    tl.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    # the +1 sits in bias_ih: torch's effective forget bias is b_ih + b_hh, as ours
    assert float(tl.bias_ih_l0.detach()[H:2 * H].mean()) > 0.5
    x = rng.standard_normal((B, T, I)).astype(dtype)
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt, _ = tl(xt)
    (yt * torch.tensor(dy)).sum().backward()
    y, _ = ours.forward(x)
    dx, _ = ours.backward(dy)
    for name, mine, theirs in [("y", y, yt), ("dx", dx, xt.grad)] + \
            [(k, ours.grads[k], p.grad) for k, p in tl.named_parameters()]:
        theirs = theirs.detach().numpy()
        err = np.max(np.abs(mine - theirs)) / max(np.max(np.abs(theirs)), 1e-30)
        assert err < tol, (name, err)


def test_forget_bias_rejects_bad_values_with_one_line_messages():
    for bad in (float("nan"), float("inf"), "1", True, None):
        with pytest.raises(ValueError, match=r"^forget_bias: expected a finite number, got"):
            gruengine.LSTM(3, 4, forget_bias=bad)
    with pytest.raises(ValueError, match=r"^forget_bias: expected a finite number, got 'x'"):
        resolve_config({"cell": "lstm", "forget_bias": "x"})
    with pytest.raises(ValueError, match=r"^forget_bias: only the LSTM has a forget gate; "
                                         r"expected 0 with cell 'gru', got 1"):
        resolve_config({"cell": "gru", "forget_bias": 1})
    with pytest.raises(ValueError, match=r"^forget_bias: only the LSTM has a forget gate; "
                                         r"expected 0 with cell 'mingru', got 0.5"):
        SequenceModel({"cell": "mingru", "forget_bias": 0.5, "vocab_size": 10, "embed_dim": 4,
                       "hidden_size": 4})


def test_forget_bias_reaches_the_model_from_the_run_config():
    from gruengine.data import load_dataset
    c = resolve_config({"task": "adding", "cell": "lstm", "forget_bias": 1.0, "hidden_size": 6,
                        "n_train": 20, "n_test": 10, "seq_len": 5})
    assert resolve_config({"task": "adding"})["forget_bias"] == 0.0      # today's behaviour
    ds = load_dataset("adding", None, n_train=20, n_test=10, seq_len=5)
    m = model_config(c, ds["train"], ds["test"])
    assert m["forget_bias"] == 1.0
    biased = SequenceModel(m)
    plain = SequenceModel(dict(m, forget_bias=0.0))
    sd_b, sd_p = biased.state_dict(), plain.state_dict()
    keys = [k for k in sd_b if np.any(sd_b[k] != sd_p[k])]
    assert keys == [k for k in sd_b if k.endswith("bias_ih_l0")] and len(keys) == 1
    np.testing.assert_allclose((sd_b[keys[0]] - sd_p[keys[0]])[6:12], 1.0, rtol=0, atol=1e-6)
    # a model configuration saved before the key existed loads with the old initialisation
    old = {k: v for k, v in m.items() if k != "forget_bias"}
    assert ModelConfig.from_dict(old).validate().forget_bias == 0.0


def test_forget_bias_command_line_option(tmp_path):
    from click.testing import CliRunner
    from gruengine_cli.main import app as cli, _register
    _register()
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--cell", "lstm", "--forget-bias", "1", "--seq-len", "6",
                                 "--n-train", "64", "--n-test", "16", "--hidden-size", "4",
                                 "--epochs", "1", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["forget_bias"] == 1.0 and config["cell"] == "lstm"
    r = CliRunner().invoke(cli, ["train", "--cell", "gru", "--forget-bias", "1", "--quiet",
                                 "--out", str(tmp_path / "bad")])
    # the one-line ValueError that ``gruengine`` prints as an error with exit status 2
    assert isinstance(r.exception, ValueError) and not (tmp_path / "bad").exists()
    assert str(r.exception).startswith("forget_bias: only the LSTM has a forget gate")
