"""gruengine.neighbours: the nearest training sequence in a classifier's feature space, mixed
into its predictions; against a brute-force loop, through the model, the checkpoint, a fresh
process, the plan and ONNX."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gruengine.models import SequenceModel
from gruengine.neighbours import Neighbours, fit_neighbours
from tests.test_train_plan import _write_ts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = dict(input="features", num_features=2, hidden_size=4, num_outputs=3, task="classify",
           pooling="mean", bidirectional=True, conv_channels=3, conv_kernels=(3,),
           conv_skip=True, seed=2, dtype="float64")


def _brute(logits, feats, stored, labels):
    # (softmax + one-hot of the label of the stored row with the largest cosine) / 2, by loops
    out = []
    for z, f in zip(logits, feats):
        p = np.exp(z - z.max())
        p /= p.sum()
        cos = [float(f @ s) / (np.linalg.norm(f) * np.linalg.norm(s)) for s in stored]
        p[labels[int(np.argmax(cos))]] += 1
        out.append(p / 2)
    return np.array(out)


def _data(rng, n, T=9):
    L = rng.integers(3, T + 1, size=n)
    x = rng.standard_normal((n, T, 2))
    x[np.arange(T)[None, :] >= L[:, None]] = 0
    return x, L.astype(np.int64), rng.integers(0, 3, size=n).astype(np.int64)


class _DS:
    # a float64 stand-in for a Dataset (which holds float32 features), for float64 models
    task = "classify"

    def __init__(self, x, L, y):
        self.inputs, self.lengths, self.targets = x, L, y


def test_mix_is_half_softmax_half_the_nearest_label():
    rng = np.random.default_rng(3)
    stored, labels = rng.standard_normal((7, 5)) * 3, rng.integers(0, 4, size=7)
    nb = Neighbours(stored, labels, 4)
    logits, feats = rng.standard_normal((6, 4)) * 2, rng.standard_normal((6, 5))
    mixed = nb.mix(logits, feats)
    np.testing.assert_allclose(np.exp(mixed), _brute(logits, feats, stored, labels), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(nb.features, axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (lambda f, y: (f, y[:-1]), "labels"), (lambda f, y: (f, y + 3), r"class ids in \[0, 3\)"),
    (lambda f, y: (f * np.nan, y), "finite"), (lambda f, y: (f[:0], y[:0]), "N > 0")])
def test_bad_neighbours_are_refused(bad, match):
    rng = np.random.default_rng(0)
    f, y = bad(rng.standard_normal((4, 2)), np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=match):
        Neighbours(f, y, 3)


def test_model_mixes_in_eval_mode_only_and_keeps_them_in_its_state():
    rng = np.random.default_rng(5)
    model = SequenceModel(CFG)
    x, L, y = _data(rng, 10)
    train = _DS(x, L, y)
    nb = fit_neighbours(model, train)
    # the stored vectors are each training sequence's own features, the labels its targets
    for i in range(10):
        f = model.features(x[i:i + 1, :L[i]], L[i:i + 1])[0]
        np.testing.assert_allclose(nb.features[i], f / np.linalg.norm(f), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(nb.labels, y)
    xt, Lt, _ = _data(rng, 5)
    plain = model.forward(xt, Lt)
    model.neighbours = nb
    mixed = model.forward(xt, Lt)
    want = _brute(plain, model.features(xt, Lt), nb.features, y)
    np.testing.assert_allclose(model.predict_proba(mixed), want, rtol=1e-5, atol=1e-7)
    # a training sequence is its own nearest neighbour: its label gets at least half
    own = model.predict_proba(model.forward(x, L))
    assert (own[np.arange(10), y] >= 0.5).all()
    model.train()                                            # training mode: never mixed
    with_nb = model.forward(xt, Lt)
    model.neighbours = None
    np.testing.assert_allclose(with_nb, model.forward(xt, Lt), rtol=1e-12)
    model.neighbours = nb
    model.eval()
    mixed = model.forward(xt, Lt)            # (the training passes moved batch norm's averages)
    # state: saved with the weights, restored into a fresh model, dropped when absent
    sd = model.state_dict()
    fresh = SequenceModel(CFG)
    fresh.load_state_dict(sd)
    np.testing.assert_array_equal(fresh.neighbours.labels, y)
    np.testing.assert_allclose(fresh.eval().forward(xt, Lt), mixed, rtol=1e-12)
    fresh.load_state_dict({k: v for k, v in sd.items() if not k.startswith("neighbours.")})
    assert fresh.neighbours is None
    with pytest.raises(ValueError, match="without"):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "neighbours.labels"})
    with pytest.raises(ValueError, match="the head reads"):
        fresh.load_state_dict(dict(sd, **{"neighbours.features": sd["neighbours.features"][:, 1:]}))


def test_regressors_do_not_take_neighbours():
    model = SequenceModel(dict(CFG, task="regress"))
    x, L, y = _data(np.random.default_rng(1), 4)
    with pytest.raises(ValueError, match="classifiers"):
        fit_neighbours(model, _DS(x, L, y))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("nb")
    rng = np.random.default_rng(8)
    _write_ts(d / "Toy_TRAIN.ts", rng, 16)
    _write_ts(d / "Toy_TEST.ts", rng, 10)
    from gruengine.train import train
    out = d / "run"
    summary = train({"task": "ucr", "data": str(d), "ensemble": 1, "steps": 8, "seed": 1},
                    str(out), quiet=True)
    return d, out, summary


def test_a_small_series_run_stores_its_neighbours_and_predicts_with_them(toy_run):
    data, out, summary = toy_run
    assert "mixed with the nearest training series" in summary["plan"]
    cfg = json.load(open(out / "config.json"))
    assert cfg["neighbours"] is True
    from gruengine.data import load_dataset
    from gruengine.inference import load_model, scale_dataset
    model, meta = load_model(str(out / "best.npz"))
    d = load_dataset("ucr", str(data))
    tr, te = scale_dataset(meta, d["train"]), scale_dataset(meta, d["test"])
    # the stored vectors: the model's features of every training series, by hand
    stored = model.neighbours
    assert stored is not None and len(stored.labels) == len(tr.targets)
    np.testing.assert_array_equal(stored.labels, tr.targets)
    # the test result: the mix of the plain model's probabilities with the neighbour's label
    model.eval()
    nb, model.neighbours = model.neighbours, None
    xt = te.inputs.astype(np.float32)
    plain, feats = model.forward(xt, te.lengths), model.features(xt, te.lengths)
    tr_feats = model.features(tr.inputs.astype(np.float32), tr.lengths)
    want = _brute(plain.astype(np.float64), feats, tr_feats, tr.targets)
    acc = float(np.mean(want.argmax(1) == te.targets))
    assert summary["test"]["acc"] == pytest.approx(acc)
    # a fresh process predicts the same probabilities from the checkpoint
    code = ("import json, sys; from gruengine.inference import predict_data; "
            "print(json.dumps([o['probs'] for o in predict_data(sys.argv[1], sys.argv[2])]))")
    r = subprocess.run([sys.executable, "-c", code, str(out / "best.npz"), str(data)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.array([[p[c] for c in d["train"].classes] for p in json.loads(r.stdout)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    model.neighbours = nb


def test_no_neighbours_option_trains_the_same_model_without_them(toy_run, tmp_path):
    data, out, summary = toy_run
    from gruengine.train import train
    s2 = train({"task": "ucr", "data": str(data), "ensemble": 1, "steps": 8, "seed": 1,
                "neighbours": False}, str(tmp_path / "plain"), quiet=True)
    assert "nearest training series" not in s2["plan"]
    from gruengine.inference import load_model
    a, _ = load_model(str(out / "best.npz"))
    b, _ = load_model(str(tmp_path / "plain" / "best.npz"))
    assert b.neighbours is None
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) - set(sb) == {"neighbours.features", "neighbours.labels"}
    for k in sb:
        np.testing.assert_array_equal(sa[k], sb[k])


def test_onnx_export_mixes_the_same_and_imports_back(toy_run, tmp_path, ort):
    data, out, _ = toy_run
    from gruengine import onnx as gonnx
    from gruengine.inference import load_model
    model, meta = load_model(str(out / "best.npz"))
    path = tmp_path / "m.onnx"
    gonnx.export_checkpoint(str(out / "best.npz"), str(path))
    assert gonnx.verify(str(path), model) < 1e-4
    res = gonnx.import_onnx(str(path), str(tmp_path / "back.npz"))
    back, _ = load_model(res["path"])
    np.testing.assert_array_equal(back.neighbours.labels, model.neighbours.labels)
    np.testing.assert_allclose(back.neighbours.features, model.neighbours.features, rtol=1e-6)
