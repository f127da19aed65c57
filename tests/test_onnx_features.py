"""ONNX export of numeric models: the input scaling and the convolutional front end inside the
graph, against the engine (Scaler.transform_arrays + SequenceModel.forward) with onnxruntime as
the independent reference; and a trained checkpoint through `gruengine export` against
`gruengine predict`."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import gruengine
from gruengine.data.dataset import Dataset
from gruengine.data.scaling import Scaler
from gruengine.models import SequenceModel
from gruengine_cli.main import app, _register

_register()


def _lengths(rng, B, T):
    L = rng.integers(1, T + 1, size=B).astype(np.int64)
    L[rng.integers(B)] = T                       # the longest fills the time axis
    return L


def _raw(rng, B, T, F, const_channel=False):
    """Raw series with per-row level and scale, a constant series in row 1 (exactly
    representable, so its standard deviation is exactly 0), padding filled with garbage."""
    x = rng.standard_normal((B, T, F)) * rng.uniform(0.2, 30, (B, 1, F)) \
        + rng.uniform(-50, 50, (B, 1, F))
    x[1] = 2.5
    if const_channel:
        x[:, :, -1] = -3.0
    return x.astype(np.float32)


def _garbage(rng, x, L):
    valid = (np.arange(x.shape[1])[None, :] < L[:, None])[..., None]
    return np.where(valid, x, rng.uniform(-1e3, 1e3, x.shape)).astype(np.float32)


def _trained(config, rng, scaler, F_raw, steps=3):
    """A model after a few AdamW steps on scaled random data: weights and batch-norm running
    statistics away from their init."""
    model = SequenceModel(dict(config, seed=int(rng.integers(2**31))))
    opt = gruengine.AdamW(model.params, lr=0.05)
    c = model.config
    for _ in range(steps):
        B, T = 6, 10
        L = _lengths(rng, B, T)
        x = _raw(rng, B, T, F_raw)
        x = x if scaler is None else scaler.transform_arrays(x, L)
        y = (rng.integers(0, c.num_outputs, size=(B, T) if c.task == "tag" else B)
             if c.task != "regress" else rng.standard_normal((B, c.num_outputs)))
        model.params.zero_grad()
        loss, dout = model.loss_and_grad(model.forward(x, L), y.astype(
            np.float32 if c.task == "regress" else np.int64), L)
        model.backward(dout)
        opt.step()
    return model.eval()


def _fit(rng, F, series, channels, keep_stats, const_channel):
    N, T = 30, 14
    L = _lengths(rng, N, T)
    x = _raw(rng, N, T, F, const_channel)
    x = np.where((np.arange(T)[None, :] < L[:, None])[..., None], x, 0).astype(np.float32)
    ds = Dataset(x, L, np.zeros(N, np.int64), "classify", 2)
    return Scaler(series, channels, keep_stats).fit(ds)


FEAT = dict(input="features", hidden_size=5, conv_kernels=(5, 3))
# name: (model config, raw features, scaling (series, channels, keep_stats) or None,
#        a constant channel)
CASES = {
    "ucr_fcn_gru_batchnorm_stride2_mean": (
        dict(FEAT, task="classify", num_outputs=3, conv_channels=4, conv_stride=2,
             conv_norm="batch", pooling="mean", bidirectional=True), 2, (True, True, True), False),
    "lstm_layernorm_stride3_skip_max": (
        dict(FEAT, task="classify", num_outputs=2, cell="lstm", conv_channels=5,
             conv_kernels=(4,), conv_stride=3, conv_norm="layer", conv_skip=True,
             pooling="max", input_proj=4), 3, (True, False, False), False),
    "gru_reset_before_batchnorm_skip_last_2layers": (
        dict(FEAT, task="regress", num_outputs=2, conv_channels=3, conv_kernels=(2, 3, 4),
             conv_stride=2, conv_skip=True, pooling="last", reset_after=False,
             bidirectional=True, num_layers=2), 2, (False, True, False), True),
    "tagger_layernorm_stride1": (
        dict(FEAT, task="tag", num_outputs=3, conv_channels=4, conv_norm="layer",
             bidirectional=True), 2, (True, True, True), False),
    "scaling_only_keep_stats_no_channels": (
        dict(FEAT, task="classify", num_outputs=2, pooling="last"), 2,
        (True, False, True), False),
    "conv_without_scaling": (
        dict(FEAT, task="classify", num_outputs=2, conv_channels=4, conv_stride=2,
             pooling="mean"), 3, None, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scaled_conv_models_export_like_the_engine(case, ort, rng, tmp_path):
    import onnx
    from gruengine import onnx as gonnx
    config, F, scaling, const_channel = CASES[case]
    scaler = None if scaling is None else _fit(rng, F, *scaling, const_channel)
    F_model = F if scaler is None else scaler.out_features
    model = _trained(dict(config, num_features=F_model), rng, scaler, F)
    path = str(tmp_path / "m.onnx")
    info = gonnx.export(model, path, scaling=scaler)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import] == [gonnx.OPSET]
    assert info["inputs"] == {"features": ["batch", "time", F], "lengths": ["batch"]}
    ops = [n.op_type for n in proto.graph.node]
    c = model.config
    assert ops.count("Conv") == (len(c.conv_kernels) if c.conv_channels else 0)
    norm = {"batch": "BatchNormalization", "layer": "LayerNormalization"}[c.conv_norm]
    assert ops.count(norm) == ops.count("Conv")
    assert ("Log" in ops) == bool(scaler is not None and scaler.keep_stats)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for B, T in ((7, 13), (3, 8), (2, 1)):             # dynamic axes; T not a stride multiple
        L = _lengths(rng, B, T)
        x = _raw(rng, B, T, F, const_channel)
        x = _garbage(rng, x, L) if B > 2 else x[::-1].copy()   # the constant row moves too
        scaled = x if scaler is None else scaler.transform_arrays(x, L)
        want = model.predict_proba(model.forward(scaled, L))
        got = sess.run(None, {"features": x, "lengths": L})[0]
        assert got.shape == want.shape and got.dtype == np.float32 and np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        # the graph never reads padding: NaN there changes nothing
        nan_pad = np.where((np.arange(T)[None, :] < L[:, None])[..., None], x, np.nan)
        np.testing.assert_array_equal(
            sess.run(None, {"features": nan_pad.astype(np.float32), "lengths": L})[0], got)
    assert gonnx.verify(path, model) < 1e-5
    back, meta = gonnx.load(path)
    sd, sd_back = model.state_dict(), back.state_dict()
    assert sorted(sd) == sorted(sd_back)
    for k in sd:
        assert np.array_equal(sd_back[k], sd[k]), k
    assert meta["scaling"] == (None if scaler is None else scaler.to_json())


def test_export_refuses_mismatched_scaling_and_unexported_options(ort, rng, tmp_path,
                                                                  monkeypatch):
    from gruengine import onnx as gonnx
    scaler = _fit(rng, 2, True, True, True, False)                 # 2 raw -> 6 features
    m = SequenceModel(dict(FEAT, num_features=2))
    with pytest.raises(ValueError, match=r"^scaling: it writes 6 features per step, the model "
                                         r"reads 2 features$"):
        gonnx.export(m, tmp_path / "m.onnx", scaling=scaler)
    tok = SequenceModel(dict(input="tokens", vocab_size=10, embed_dim=3, hidden_size=4))
    with pytest.raises(ValueError, match=r"^scaling: .* the model reads token ids$"):
        gonnx.export(tok, tmp_path / "m.onnx", scaling=scaler.to_json())
    with pytest.raises(ValueError, match=r"^scaling: expected a fitted"):
        gonnx.export(m, tmp_path / "m.onnx", scaling=Scaler())
    # an option the graph does not reproduce is named, never exported differently
    monkeypatch.setattr(gonnx, "_EXPORTED", gonnx._EXPORTED - {"conv_skip"})
    skip = SequenceModel(dict(FEAT, num_features=2, conv_channels=3, conv_skip=True))
    with pytest.raises(ValueError, match=r"^model: option conv_skip=True has no ONNX export; "
                                         r"export supports it only at False$"):
        gonnx.export(skip, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_trained_checkpoint_cli_export_matches_cli_predict(ort, rng, tmp_path, monkeypatch):
    from gruengine.data import load_dataset
    from gruengine.train import train
    from tests.test_train_plan import _write_ts
    data = tmp_path / "toy"
    data.mkdir()
    _write_ts(data / "Toy_TRAIN.ts", rng, 24)
    _write_ts(data / "Toy_TEST.ts", rng, 10)
    train({"task": "ucr", "data": str(data), "steps": 4, "batch_size": 8, "hidden_size": 5,
           "conv_channels": 4, "conv_kernels": [5, 3], "conv_stride": 2, "conv_skip": True,
           "series_norm": True, "channel_norm": True, "augment": False, "val_fraction": 0.0,
           "bidirectional": True, "pooling": "mean"}, tmp_path / "run", quiet=True)
    ckpt = str(tmp_path / "run" / "best.npz")
    out = str(tmp_path / "ucr.onnx")
    runner = CliRunner()
    res = runner.invoke(app, ["export", ckpt, out])
    assert res.exit_code == 0, res.output
    assert "inputs features (batch, time, 2), lengths (batch,) -> probabilities (batch, 2)" \
        in res.output and "onnxruntime matches gruengine" in res.output
    res = runner.invoke(app, ["predict", ckpt, "--data", str(data), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    test = load_dataset("ucr", str(data))["test"]
    classes = list(rows[0]["probs"])
    want = np.array([[r["probs"][k] for k in classes] for r in rows])
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    x = _garbage(rng, test.inputs, test.lengths)           # raw, unscaled, noisy padding
    got = sess.run(None, {"features": x, "lengths": test.lengths.astype(np.int64)})[0]
    assert want.shape == got.shape == (10, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the serving page's lines, on this export, give what predict_series does
    from gruengine.inference import predict_series
    from tests.test_docs import python_blocks
    block = python_blocks("serving.md")[1]
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(block, "docs/serving.md block 1", "exec"), ns)
    lengths = np.array([len(s) for s in ns["series"]])
    want = predict_series(ckpt, ns["x"], lengths)
    for p, w in zip(ns["p"], want):
        np.testing.assert_allclose(p, [w["probs"][k] for k in classes], rtol=0, atol=1e-5)
