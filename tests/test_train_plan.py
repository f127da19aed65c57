"""The trainer on a user's own numeric series with no options: the plan it prints and saves,
input scaling fitted on the training split and restored from the checkpoint (evaluate,
predict in a fresh process, resume), augmentation that resumes bit-identically, and the
time budget."""
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from gruengine import checkpoint as ckpt
from gruengine.data import load_dataset
from gruengine.data.scaling import Scaler
from gruengine.inference import evaluate, evaluate_checkpoint, load_model, predict_series
from gruengine.train import Trainer, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_ts(path, rng, n, channels=2):
    # two classes told apart by shape and by amplitude, variable lengths, raw (unnormalised)
    lines = ["@problemName Toy", "@timeStamps false", f"@dimensions {channels}",
             "@univariate false" if channels > 1 else "@univariate true",
             "@equalLength false", "@classLabel true up down", "@data"]
    for i in range(n):
        lab = ("up", "down")[i % 2]
        T = int(rng.integers(12, 30))
        t = np.linspace(0, 1, T)
        chans = []
        for c in range(channels):
            base = (t if lab == "up" else 1 - t) * (3 + c) + 40 * c
            chans.append(",".join(f"{v:.5f}" for v in base + rng.normal(0, 0.3, T)))
        lines.append(":".join(chans) + f":{lab}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(5)
    _write_ts(d / "Toy_TRAIN.ts", rng, 40)
    _write_ts(d / "Toy_TEST.ts", rng, 24)
    return d


def _cfg(toy, **kw):
    # one model (the plan makes small series sets an ensemble: tests/test_ensemble.py)
    return dict(dict(task="ucr", data=str(toy), steps=24, ensemble=1), **kw)


def test_no_options_plan_scaling_and_checkpoint(toy, tmp_path):
    err = io.StringIO()
    t = Trainer(_cfg(toy), tmp_path / "r", stream=err)
    summary = t.fit()
    assert err.getvalue().count("plan: 40 training sequences") == 1
    cfg = json.load(open(tmp_path / "r" / "config.json"))
    per_epoch = math.ceil(40 / cfg["batch_size"])
    assert cfg["val_fraction"] == 0.0 and cfg["patience"] == 0 and cfg["augment"] is True
    assert cfg["epochs"] == math.ceil(24 / per_epoch) and summary["steps"] == cfg["epochs"] * per_epoch
    assert cfg["conv_channels"] > 0 and cfg["series_norm"] and cfg["channel_norm"]
    # the scaler in the checkpoint is the one fitted on the raw training split
    raw = load_dataset("ucr", str(toy))
    _, meta = load_model(tmp_path / "r" / "best.npz")
    want = Scaler(True, True, keep_stats=True).fit(raw["train"]).to_json()
    got = meta["scaling"]
    assert got["num_features"] == 2 and len(got["mean"]) == 6
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["std"], want["std"], rtol=1e-12)
    # evaluate on a fresh load applies the same scaling: the trainer's test result
    res = evaluate_checkpoint(tmp_path / "r" / "best.npz")
    assert res["acc"] == summary["test"]["acc"]
    assert res["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-6)


def test_predict_in_a_fresh_process_gives_the_same_outputs(toy, tmp_path):
    t = Trainer(_cfg(toy), tmp_path / "p", quiet=True)
    t.fit()
    raw = load_dataset("ucr", str(toy))["test"]
    here = predict_series(tmp_path / "p" / "best.npz", raw.inputs, raw.lengths)
    # the trainer's own model on its scaled test set gives the same probabilities
    model, _ = load_model(tmp_path / "p" / "best.npz")
    probs = model.predict_proba(model.forward(t.test_ds.inputs, t.test_ds.lengths))
    np.testing.assert_allclose([[r["probs"][c] for c in ("up", "down")] for r in here], probs,
                               rtol=1e-5, atol=1e-6)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "gruengine_cli", "predict",
                        str(tmp_path / "p" / "best.npz"), "--data", str(toy), "--json"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    there = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["index"] for r in there] == list(range(len(raw)))
    assert [r["label"] for r in there] == [r["label"] for r in here]
    for a, b in zip(there, here):
        for c in ("up", "down"):
            assert a["probs"][c] == pytest.approx(b["probs"][c], rel=1e-6, abs=1e-7)


def test_interrupted_augmented_run_resumes_bit_identically(toy, tmp_path):
    cfg = _cfg(toy)
    train(cfg, tmp_path / "a", quiet=True)

    def stop(trainer, info):
        if info["step"] == 5:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", quiet=True, hooks={"step": stop})
    train(None, tmp_path / "b", resume=True, quiet=True)
    a, _ = ckpt.load_checkpoint(tmp_path / "a" / "last.npz")
    b, meta = ckpt.load_checkpoint(tmp_path / "b" / "last.npz")
    for k in a:
        if not k.startswith("rng/"):
            assert np.array_equal(a[k], b[k]), k
    assert json.load(open(tmp_path / "b" / "config.json")) == \
        json.load(open(tmp_path / "a" / "config.json"))
    assert meta["plan"].startswith("plan: 40 training sequences")


def test_explicit_options_reach_the_trainer(toy, tmp_path):
    t = Trainer(_cfg(toy, val_fraction=0.25, conv_channels=0, series_norm=False,
                     channel_norm=False, augment=False, batch_size=8), tmp_path / "e", quiet=True)
    assert len(t.val_ds) == 10 and t.scaler is None and "frontend" not in t.model.modules
    assert t.batches_per_epoch == math.ceil(30 / 8)
    before = evaluate(t.model, t.val_ds, 64)["loss"]
    t.fit()
    assert evaluate(t.model, t.val_ds, 64)["loss"] < before


def test_time_budget_shortens_the_run_after_its_second_epoch(toy, tmp_path):
    def slow(trainer, info):                 # every step "takes" 20 more seconds
        trainer._elapsed0 += 20.0
    err = io.StringIO()
    # 3 steps per epoch: 60 s + real time r an epoch; 4 minutes allow
    # 2 + (240 - 120 - r2) // (60 + r2 - r1) = 3 epochs for any real times r1 < r2 < 30 s
    summary = train(_cfg(toy, time_budget=4), tmp_path / "t", stream=err, hooks={"step": slow})
    assert summary["epochs"] == 3
    assert "time budget 4 min" in err.getvalue() and "shortened to 3" in err.getvalue()
    assert json.load(open(tmp_path / "t" / "config.json"))["epochs"] == 3
    # a budget already spent stops the run after its first epoch
    err = io.StringIO()
    assert train(_cfg(toy, time_budget=1e-6), tmp_path / "s", stream=err)["epochs"] == 1
    assert "time budget of 1e-06 min reached after 1 epochs" in err.getvalue()
    # the plan's safety net is there unless given; 0 turns it off
    t = Trainer(_cfg(toy), tmp_path / "u", quiet=True)
    assert t.config["time_budget"] == 4.5
    assert Trainer(_cfg(toy, time_budget=0), tmp_path / "v", quiet=True).config["time_budget"] == 0


def test_token_data_rejects_input_scaling(tmp_path):
    rows = "\n".join(f"{'pos' if i % 2 else 'neg'}\tword{i % 5} film" for i in range(30))
    (tmp_path / "train.tsv").write_text(rows + "\n")
    (tmp_path / "test.tsv").write_text(rows + "\n")
    with pytest.raises(ValueError, match=r"^series_norm/channel_norm: input scaling applies to "
                                         r"numeric inputs; the 'text' data are token ids$"):
        Trainer(dict(task="text", data=str(tmp_path), series_norm=True), tmp_path / "x", quiet=True)


def test_inspect_scales_the_row_and_runs_the_front_end(tmp_path):
    from gruengine.inspection import inspect_checkpoint, npz_input
    rng = np.random.default_rng(3)
    for split, n in (("train", 30), ("test", 6)):
        X = rng.normal(5, 3, (n, 20, 2)).astype(np.float32)
        y = (X[:, :, 0].mean(axis=1) > 5).astype(np.int64)
        np.savez(tmp_path / f"{split}.npz", X=X, y=y, lengths=rng.integers(8, 21, n))
    train(dict(task="npz", data=str(tmp_path), steps=10, conv_stride=2, ensemble=1),
          tmp_path / "run", quiet=True)
    s = inspect_checkpoint(tmp_path / "run" / "best.npz", npz_input(str(tmp_path / "test.npz"), 1),
                           tmp_path / "o", plot=False)
    a = np.load(tmp_path / "test.npz")
    n = int(a["lengths"][1])
    want = predict_series(tmp_path / "run" / "best.npz", a["X"][1:2, :n], np.array([n]))[0]
    assert s["prediction"]["label"] == want["label"]
    assert s["prediction"]["probability"] == pytest.approx(want["probability"], rel=1e-6)
    with np.load(s["npz"]) as g:
        assert g["h"].shape[0] == math.ceil(n / 2)          # the cell ran on the strided steps


def test_a_run_saved_before_the_plan_resumes(tmp_path):
    from gruengine import policy
    cfg = dict(task="adding", seq_len=6, n_train=40, n_test=8, hidden_size=4, batch_size=16,
               epochs=2, seed=1)

    def stop(trainer, info):
        if info["step"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "old", quiet=True, hooks={"step": stop})
    arrays, meta = ckpt.load_checkpoint(tmp_path / "old" / "last.npz")
    new_keys = set(policy.AUTO_KEYS) - {"epochs", "batch_size", "val_fraction", "patience",
                                        "warmup", "bidirectional", "pooling", "bucket"}
    new_keys |= {"time_budget", "conv_kernels", "conv_norm"}
    meta["train_config"] = {k: v for k, v in meta["train_config"].items() if k not in new_keys}
    meta["model_config"] = {k: v for k, v in meta["model_config"].items()
                            if not k.startswith("conv_")}
    meta.pop("plan"), meta.pop("scaling")
    ckpt.save_checkpoint(str(tmp_path / "old" / "last.npz"), arrays, meta)
    summary = train(None, tmp_path / "old", resume=True, quiet=True)
    assert summary["epochs"] == 2 and summary["steps"] == 2 * math.ceil(36 / 16)
