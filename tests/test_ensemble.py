"""Ensembles of seeds: the averaged prediction against the members' own, the run folder and
its checkpoint, resuming an interrupted ensemble, the plan's decision, and what evaluate,
predict, export and inspect make of an ensemble."""
import io
import json
import os

import numpy as np
import pytest

from gruengine import checkpoint as ckpt
from gruengine.ensemble import EnsembleModel, member_seeds
from gruengine.inference import evaluate_checkpoint, load_model, predict_data
from gruengine.models import SequenceModel
from gruengine.train import Trainer, make_trainer, train


def _series(path, rng, n, T=16):
    # three classes told apart by where a bump sits; raw levels differ per series
    X = rng.normal(0, 0.5, (n, T, 2)).astype(np.float32)
    y = rng.integers(0, 3, n)
    for i in range(n):
        s = 2 + 5 * y[i]
        X[i, s:s + 3, 0] += 3.0
    X += rng.normal(0, 4, (n, 1, 2)).astype(np.float32)
    np.savez(path, X=X, y=y, lengths=rng.integers(T // 2 + 4, T + 1, n))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens")
    rng = np.random.default_rng(11)
    _series(d / "train.npz", rng, 48)
    _series(d / "test.npz", rng, 30)
    return d


def _cfg(data, **kw):
    return dict(dict(task="npz", data=str(data), steps=12, hidden_size=8, conv_channels=8),
                **kw)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "e"
    err = io.StringIO()
    summary = train(_cfg(data, ensemble=3, seed=4), out, stream=err)
    return out, summary, err.getvalue()


def _models(rng, task="classify", k=3):
    return [SequenceModel(dict(task=task, input="features", num_features=3, num_outputs=4,
                               hidden_size=5, seed=int(s), pooling="mean"))
            for s in rng.integers(0, 1000, k)]


@pytest.mark.parametrize("task", ["classify", "regress"])
def test_the_ensemble_predicts_the_members_mean(task):
    rng = np.random.default_rng(0)
    members = _models(rng, task)
    x = rng.standard_normal((6, 9, 3)).astype(np.float32)
    L = rng.integers(1, 10, 6)
    e = EnsembleModel(members).eval()
    got = e.predict_proba(e.forward(x, L))
    want = np.mean([m.predict_proba(m.eval().forward(x, L)).astype(np.float64)
                    for m in members], axis=0)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert not np.allclose(want, members[0].predict_proba(members[0].forward(x, L)), atol=1e-3)
    if task == "classify":          # the loss is the cross-entropy of the averaged probabilities
        y = rng.integers(0, 4, 6)
        loss, _ = e.loss_and_grad(e.forward(x, L), y, L)
        assert loss == pytest.approx(-np.log(want[np.arange(6), y]).mean(), rel=1e-5)


def test_members_must_share_an_architecture():
    rng = np.random.default_rng(1)
    a = _models(rng, k=1)[0]
    b = SequenceModel(dict(a.config.to_dict(), hidden_size=6))
    with pytest.raises(ValueError, match="must share one architecture"):
        EnsembleModel([a, b])
    with pytest.raises(ValueError, match="at least 2 models"):
        EnsembleModel([a])
    seeds = member_seeds(7, 4)
    assert seeds[0] == 7 and len(set(seeds)) == 4 and not set(seeds) & set(member_seeds(8, 4))


def test_run_folder_checkpoint_and_test_result(run, data):
    out, summary, err = run
    assert sorted(os.listdir(out)) == ["best.npz", "config.json", "member-1", "member-2",
                                       "member-3", "metrics.jsonl"]
    assert json.load(open(out / "config.json"))["ensemble"] == 3
    seeds = member_seeds(4, 3)
    model, meta = load_model(out)
    assert isinstance(model, EnsembleModel) and len(model) == 3
    assert meta["ensemble"]["seeds"] == seeds
    for k in range(3):              # each member's weights are its own run's best.npz
        arrays, mmeta = ckpt.load_checkpoint(out / f"member-{k + 1}" / "best.npz")
        assert mmeta["train_config"]["seed"] == seeds[k]
        for name, v in ckpt.split_arrays(arrays, "model").items():
            np.testing.assert_array_equal(model.members[k].state_dict()[name], v)
    # the test result: the mean of the members' probabilities on the test split, by hand
    probs = [np.array([list(r["probs"].values()) for r in
                       predict_data(out / f"member-{k + 1}" / "best.npz", data)])
             for k in range(3)]
    y = np.load(data / "test.npz")["y"]
    alone = [float((p.argmax(1) == y).mean()) for p in probs]
    assert summary["test"]["acc"] == pytest.approx(float((np.mean(probs, 0).argmax(1) == y).mean()))
    assert [m["test_acc"] for m in summary["members"]] == pytest.approx(alone)
    assert evaluate_checkpoint(out)["acc"] == summary["test"]["acc"]
    last = [json.loads(line) for line in open(out / "metrics.jsonl")][-1]
    assert last["event"] == "test" and last["test_acc"] == summary["test"]["acc"]
    assert "ensemble of 3 seeds" in err and "ensemble member 3 of 3" in err
    # the data split and input scaling are the ensemble's, shared by every member
    scalings = [ckpt.load_checkpoint(out / f"member-{k + 1}" / "best.npz")[1]["scaling"]
                for k in range(3)]
    assert scalings[0] == scalings[1] == scalings[2] == meta["scaling"]


def test_interrupted_ensemble_resumes_to_the_same_weights(run, data, tmp_path):
    out, _, _ = run
    cfg = _cfg(data, ensemble=3, seed=4)

    def stop(trainer, info):
        if trainer.config["seed"] == member_seeds(4, 3)[1] and info["step"] == 5:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", quiet=True, hooks={"step": stop})
    first = tmp_path / "b" / "member-1" / "last.npz"
    stamp = os.stat(first).st_mtime_ns
    summary = train(None, tmp_path / "b", resume=True, quiet=True)
    assert os.stat(first).st_mtime_ns == stamp          # the finished member was not retrained
    a, _ = ckpt.load_checkpoint(out / "best.npz")
    b, _ = ckpt.load_checkpoint(tmp_path / "b" / "best.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert summary["steps"] == sum(m["steps"] for m in summary["members"])


def test_the_plan_makes_small_series_sets_an_ensemble(data, tmp_path):
    t = make_trainer(_cfg(data), tmp_path / "p", quiet=True)
    assert t.config["ensemble"] == 3 and "ensemble of 3 seeds" in t.plan
    t.run.release()
    t.current.run.release()
    # explicit options win; a Trainer is one model
    assert isinstance(make_trainer(_cfg(data, ensemble=1), tmp_path / "q", quiet=True), Trainer)
    with pytest.raises(ValueError, match="^ensemble: a Trainer trains one model, not 2"):
        Trainer(_cfg(data, ensemble=2), tmp_path / "r", quiet=True)
    # token data (and the synthetic tasks) stay one model
    t = make_trainer(dict(task="adding", seq_len=5, n_train=20, n_test=4, epochs=1),
                     tmp_path / "s", quiet=True)
    assert isinstance(t, Trainer) and t.config["ensemble"] == 1
    t.run.release()


def test_time_budget_is_shared_by_the_members(data, tmp_path):
    t = make_trainer(_cfg(data, ensemble=3, time_budget=6), tmp_path / "t", quiet=True)
    assert t.current.config["time_budget"] == pytest.approx(2.0)
    t.run.release()
    t.current.run.release()


def test_export_inspect_and_safetensors(run, tmp_path):
    from gruengine.inference import checkpoint_to_safetensors
    from gruengine.inspection import inspect_checkpoint, npz_input
    out, _, _ = run
    with pytest.raises(ValueError, match="an ensemble of several models; a .safetensors"):
        checkpoint_to_safetensors(out, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="an ensemble of 3 models, each with its own gates"):
        inspect_checkpoint(out, npz_input("unused.npz", 0), tmp_path / "i", plot=False)
    pytest.importorskip("onnx", reason="ONNX export needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="checking the export needs onnxruntime")
    from gruengine import onnx as gonnx
    model, meta = load_model(out)
    gonnx.export_checkpoint(out, tmp_path / "e.onnx")
    assert gonnx.verify(tmp_path / "e.onnx", model) < 1e-5
    back, bmeta = gonnx.load(tmp_path / "e.onnx")
    assert isinstance(back, EnsembleModel) and len(back) == 3
    for m, b in zip(model.members, back.members):
        for name, v in m.state_dict().items():
            np.testing.assert_array_equal(b.state_dict()[name], v.astype(np.float32))


def test_plot_draws_every_member(run):
    pytest.importorskip("matplotlib", reason="plots need the plot extra")
    from gruengine_cli.plot import write_plot
    out, summary, _ = run
    path = write_plot(out, str(out / "c.png"))
    assert os.path.getsize(path) > 0
    import matplotlib.pyplot as plt
    from gruengine_cli.plot import draw_curves
    from gruengine.rundir import read_metrics
    members = [(f"member {k}", read_metrics(out / f"member-{k}")) for k in (1, 2, 3)]
    fig = draw_curves(plt, read_metrics(out), "e", members)
    labels = [ln.get_label() for ln in fig.axes[1].get_lines()]
    assert labels == ["member 1 train", "member 2 train", "member 3 train", "ensemble test"]
    assert fig.axes[1].get_lines()[-1].get_ydata()[0] == summary["test"]["acc"]
    plt.close(fig)


def test_a_text_ensemble_resumes_with_its_vocabulary(tmp_path):
    rng = np.random.default_rng(2)
    words = {0: ["dull", "bad", "boring"], 1: ["great", "fine", "superb"]}
    for split, n in (("train", 40), ("test", 12)):
        rows = []
        for _ in range(n):
            y = int(rng.integers(2))
            rows.append(f"{y}\t" + " ".join(rng.choice(words[y] + ["the", "film", "a"], 6)))
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    cfg = dict(task="text", data=str(tmp_path), ensemble=2, epochs=2, hidden_size=4,
               embed_dim=4, batch_size=8)
    whole = train(cfg, tmp_path / "a", quiet=True)

    def stop(trainer, info):
        if trainer.config["seed"] != 0 and info["step"] == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", quiet=True, hooks={"step": stop})
    again = train(None, tmp_path / "b", resume=True, quiet=True)
    assert again["test"] == whole["test"]
    a, ma = ckpt.load_checkpoint(tmp_path / "a" / "best.npz")
    b, mb = ckpt.load_checkpoint(tmp_path / "b" / "best.npz")
    assert ma["vocab"] == mb["vocab"] and ma["vocab"] is not None
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_tampered_ensemble_is_refused_in_one_line(run, tmp_path):
    import shutil
    from gruengine.errors import CheckpointError
    out, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    arrays, meta = ckpt.load_checkpoint(copy / "best.npz")
    ckpt.save_checkpoint(str(copy / "best.npz"), arrays, dict(meta, ensemble={"members": 5}))
    with pytest.raises(CheckpointError, match=r"weights of ensemble member\(s\) \[4, 5\] are "
                                              r"missing"):
        load_model(copy)
    ckpt.save_checkpoint(str(copy / "best.npz"), arrays, dict(meta, ensemble={"members": "3"}))
    with pytest.raises(CheckpointError, match="ensemble.members: expected an integer"):
        load_model(copy)
    c = json.load(open(copy / "config.json"))
    (copy / "config.json").write_text(json.dumps(dict(c, ensemble=100)))
    with pytest.raises(ValueError, match=r"^ensemble: expected a value <= 64, got 100$"):
        train(None, copy, resume=True, quiet=True)
