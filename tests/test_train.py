"""The trainer: it learns, it resumes bit-identically, and it fails safely (NaN, Ctrl-C, bad
hyperparameters) without ever losing the last good checkpoint."""
import hashlib
import io
import json
import os
import signal

import numpy as np
import pytest

from gruengine import checkpoint as ckpt
from gruengine.errors import TrainingDivergedError
from gruengine.schedule import Schedule
from gruengine.inference import evaluate, load_model
from gruengine.rundir import read_metrics
from gruengine.train import Trainer, train

# a tiny adding problem: seconds per run on 2 shared cores
TINY = dict(task="adding", seq_len=12, n_train=192, n_test=64, hidden_size=8, batch_size=32,
            epochs=3, lr=1e-2, warmup=3, eval_batch_size=64, seed=4)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _model_arrays(path):
    arrays, _ = ckpt.load_checkpoint(path)
    return {k: v for k, v in arrays.items() if not k.startswith("rng/")}


def test_training_reduces_loss(tmp_path):
    t = Trainer(dict(TINY, epochs=4), tmp_path / "run", quiet=True)
    before = evaluate(t.model, t.test_ds, 64)["mse"]
    summary = t.fit()
    records = [r for r in read_metrics(tmp_path / "run") if r["event"] == "epoch"]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert summary["test"]["mse"] < 0.5 * before
    for key in ("step", "train_loss", "train_mse", "val_loss", "val_mse", "lr", "tokens_per_s",
                "elapsed"):
        assert key in records[-1]
    # the run folder: resolved config, both checkpoints, loadable best model
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg["hidden_size"] == 8 and cfg["clip"] == 1.0 and cfg["optimizer"] == "adamw"
    model, meta = load_model(tmp_path / "run" / "best.npz")
    assert meta["progress"]["epoch"] == summary["best_epoch"]
    assert evaluate(model, t.test_ds, 64)["mse"] == pytest.approx(summary["test"]["mse"], rel=1e-6)


def _interrupt_at(step):
    def hook(trainer, info):
        if info["step"] == step:
            raise KeyboardInterrupt
    return hook


@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
def test_resume_is_bit_identical(tmp_path, where):
    cfg = dict(TINY, dropout=0.25, num_layers=2, bidirectional=True, pooling="mean")
    train(cfg, tmp_path / "a", quiet=True)
    per_epoch = 6   # 173 training rows after the 10% validation split, batches of 32
    if where == "mid_epoch":
        hooks = {"step": _interrupt_at(per_epoch + 4)}
    else:
        def at_epoch(trainer, record):
            if record["epoch"] == 1:
                raise KeyboardInterrupt
        hooks = {"epoch": at_epoch}
    err = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", hooks=hooks, stream=err)
    assert f"resumable checkpoint saved to {tmp_path / 'b' / 'last.npz'}" in err.getvalue()
    assert f"gruengine train --resume {tmp_path / 'b'}" in err.getvalue()
    _, meta = ckpt.load_checkpoint(tmp_path / "b" / "last.npz")
    assert meta["progress"]["step"] == (per_epoch + 4 if where == "mid_epoch" else per_epoch)
    summary = train(None, tmp_path / "b", resume=True, quiet=True)
    a, b = _model_arrays(tmp_path / "a" / "last.npz"), _model_arrays(tmp_path / "b" / "last.npz")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k          # bit-identical weights and Adam moments
    ra = [r for r in read_metrics(tmp_path / "a") if r["event"] == "epoch"]
    rb = [r for r in read_metrics(tmp_path / "b") if r["event"] == "epoch"]
    assert [(r["train_loss"], r["val_mse"]) for r in ra] == [(r["train_loss"], r["val_mse"]) for r in rb]
    assert summary["steps"] == 3 * per_epoch
    assert Trainer.resume(tmp_path / "b", quiet=True).batches_per_epoch == per_epoch


def test_real_sigint_finishes_the_step_then_saves(tmp_path):
    def hook(trainer, info):
        if info["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)    # what Ctrl-C delivers
    err = io.StringIO()
    # Python's own handler, unless the test process started with SIGINT ignored (a
    # background job of a non-interactive shell): the run puts back what it found
    before = signal.getsignal(signal.SIGINT)
    assert before in (signal.default_int_handler, signal.SIG_IGN)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path / "r", hooks={"step": hook}, stream=err)
    _, meta = ckpt.load_checkpoint(tmp_path / "r" / "last.npz")
    assert meta["progress"]["step"] == 5 and meta["progress"]["batch"] == 5
    assert "interrupted: resumable checkpoint saved" in err.getvalue()
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_saves_like_ctrl_c(tmp_path):
    # `kill PID` / a job scheduler: the same clean stop with a resumable checkpoint
    before = signal.getsignal(signal.SIGTERM)

    def hook(trainer, info):
        if info["step"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
    err = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path / "r", hooks={"step": hook}, stream=err)
    _, meta = ckpt.load_checkpoint(tmp_path / "r" / "last.npz")
    assert meta["progress"]["step"] == 4
    assert "SIGTERM: stopping after this step" in err.getvalue()
    assert "interrupted: resumable checkpoint saved" in err.getvalue()
    assert signal.getsignal(signal.SIGTERM) is before
    summary = train(None, tmp_path / "r", resume=True, quiet=True)
    assert summary["epochs"] == TINY["epochs"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(trainer, loss):
        return float("nan") if trainer.step == 8 else loss    # in the second epoch
    snapshot = {}

    def remember(trainer, record):
        snapshot["sha"] = _sha(tmp_path / "n" / "last.npz")
    with pytest.raises(TrainingDivergedError) as e:
        train(TINY, tmp_path / "n", quiet=True, hooks={"loss": poison, "epoch": remember})
    msg = str(e.value)
    assert "loss became nan at epoch 2, step 9" in msg and "last good checkpoint kept" in msg
    assert "\n" not in msg
    assert _sha(tmp_path / "n" / "last.npz") == snapshot["sha"]
    _, meta = ckpt.load_checkpoint(tmp_path / "n" / "last.npz")
    assert meta["progress"]["epoch"] == 1


def test_huge_learning_rate_diverges_cleanly(tmp_path):
    cfg = dict(TINY, lr=1e30, clip=0.0, warmup=0, epochs=2, schedule="none")
    with pytest.raises(TrainingDivergedError, match="diverged"):
        train(cfg, tmp_path / "h", quiet=True)


@pytest.mark.parametrize("bad, match", [
    (dict(lr=-0.1), r"lr: expected a value > 0, got -0.1"),
    (dict(batch_size=0), r"batch_size: expected a value >= 1, got 0"),
    (dict(hidden_size=0), r"hidden_size: expected a value >= 1, got 0"),
    (dict(device="tpu"), r"device: expected one of 'cpu', 'cuda', 'auto', got 'tpu'"),
    (dict(cell="rnn"), r"cell: expected one of \['gru'"),
    (dict(pooling="sum"), r"pooling: expected one of \['last', 'mean', 'max'\], got 'sum'"),
    (dict(optimizer="adagrad"), r"optimizer: expected one of"),
    (dict(epochs=2.5), r"epochs: expected an integer"),
    (dict(hiden_size=3), r"config: unknown keys \['hiden_size'\]"),
])
def test_bad_hyperparameters_are_named(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        Trainer(dict(TINY, **bad), tmp_path / "x", quiet=True)
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_a_run_and_resume_checks(tmp_path):
    train(dict(TINY, epochs=1), tmp_path / "o", quiet=True)
    before = _sha(tmp_path / "o" / "last.npz")
    with pytest.raises(ValueError, match="already holds a run"):
        train(TINY, tmp_path / "o", quiet=True)
    with pytest.raises(ValueError, match="hidden_size cannot change when resuming"):
        train(None, tmp_path / "o", resume=True, overrides={"hidden_size": 9})
    assert _sha(tmp_path / "o" / "last.npz") == before
    # extending the number of epochs is allowed
    s = train(None, tmp_path / "o", resume=True, quiet=True, overrides={"epochs": 2})
    assert s["epochs"] == 2


PROGRESS_KEYS = {"epoch", "batch", "step", "best", "best_epoch", "bad_epochs", "elapsed",
                 "stopped_early", "batches_per_epoch", "epoch_sums"}


def test_early_stopping_follows_the_validation_metric(tmp_path):
    # a learning rate high enough for the validation MSE to stall: patience 1 stops the run
    err = io.StringIO()
    summary = train(dict(TINY, epochs=6, patience=1, lr=0.3), tmp_path / "e", stream=err)
    val = [r["val_mse"] for r in read_metrics(tmp_path / "e") if r["event"] == "epoch"]
    # reference: the first epoch not below every earlier one stops the run
    stop = next(e for e in range(2, len(val) + 1) if val[e - 1] >= min(val[:e - 1]))
    assert summary["stopped_early"] and len(val) == stop == summary["epochs"] < 6
    assert summary["best_epoch"] == int(np.argmin(val)) + 1
    assert summary["best_val"] == min(val)
    assert "; early stop: no improvement in 1 epochs" in err.getvalue()
    _, best = ckpt.load_checkpoint(tmp_path / "e" / "best.npz")
    _, last = ckpt.load_checkpoint(tmp_path / "e" / "last.npz")
    assert set(last["progress"]) == PROGRESS_KEYS              # the on-disk format
    assert best["progress"]["epoch"] == summary["best_epoch"]
    assert (last["progress"]["best"], last["progress"]["bad_epochs"],
            last["progress"]["stopped_early"]) == (min(val), 1, True)
    # a stopped run stays stopped when resumed with more epochs
    s = train(None, tmp_path / "e", resume=True, quiet=True, overrides={"epochs": 8})
    assert s["epochs"] == stop and s["stopped_early"]


def test_a_checkpoint_without_stopped_early_resumes(tmp_path):
    # last.npz files written before the key existed
    train(dict(TINY, epochs=1), tmp_path / "o", quiet=True)
    arrays, meta = ckpt.load_checkpoint(tmp_path / "o" / "last.npz")
    del meta["progress"]["stopped_early"]
    ckpt.save_checkpoint(tmp_path / "o" / "last.npz", arrays, meta)
    t = Trainer.resume(tmp_path / "o", overrides={"epochs": 2}, quiet=True)
    assert t.early_stopping.state_dict() == {"best": meta["progress"]["best"], "best_epoch": 1,
                                             "bad_epochs": 0, "stopped_early": False}
    assert t.fit()["epochs"] == 2


def test_schedules():
    s = Schedule("cosine", 0.1, total_steps=110, warmup=10)
    lrs = [s.lr(i) for i in range(110)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))       # non-increasing after warm-up
    assert lrs[-1] < 0.001
    p = Schedule("plateau", 0.1, total_steps=100, mode="max")
    for metric in (0.5, 0.6, 0.55):
        p.epoch_end(metric)
    assert p.lr(50) == pytest.approx(0.05)
    q = Schedule("plateau", 0.1, total_steps=100, mode="max")
    q.load_state_dict(json.loads(json.dumps(p.state_dict())))
    assert q.lr(50) == p.lr(50)
    with pytest.raises(ValueError, match="schedule: expected one of"):
        Schedule("linear", 0.1, 10)


def test_tag_task_end_to_end(tmp_path):
    # copy memory: one label per step; the loss falls as the blanks are learned
    cfg = dict(task="copy", seq_len=5, n_train=256, n_test=32, hidden_size=12, embed_dim=6,
               epochs=3, lr=1e-2, batch_size=32, seed=1)
    summary = train(cfg, tmp_path / "c", quiet=True)
    records = [r for r in read_metrics(tmp_path / "c") if r["event"] == "epoch"]
    assert summary["task"] == "tag" and "train_acc" in records[0] and "val_acc" in records[0]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    model, _ = load_model(tmp_path / "c" / "best.npz")
    assert model.config.task == "tag" and model.config.padding_idx == 0


def test_checkpoint_from_a_gpu_run_loads_on_the_cpu(tmp_path):
    # a checkpoint whose model was on 'cuda' loads here (no GPU) on the cpu with the same
    # weights; asking for cuda explicitly is a one-line error, also from the CLI
    import subprocess
    import sys
    Trainer(dict(TINY, epochs=1), tmp_path / "run", quiet=True).fit()
    arrays, meta = ckpt.load_checkpoint(tmp_path / "run" / "best.npz")
    meta["model_config"]["device"] = "cuda"
    gpu = tmp_path / "gpu.npz"
    ckpt.save_checkpoint(gpu, arrays, meta)
    model, _ = load_model(gpu)
    assert model.config.device == "cpu"
    ref, _ = load_model(tmp_path / "run" / "best.npz")
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    from gruengine.backend import cuda_available
    if cuda_available():
        return
    with pytest.raises(ValueError, match="device: 'cuda' requested"):
        load_model(gpu, device="cuda")
    r = subprocess.run([sys.executable, "-m", "gruengine_cli.main", "evaluate", str(gpu),
                        "--device", "cuda"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: device: 'cuda' requested")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_warmup_longer_than_the_run_is_clipped_with_a_notice(tmp_path):
    from gruengine.schedule import clipped_warmup
    buf = io.StringIO()
    t = Trainer(dict(TINY, warmup=1000), tmp_path / "w", quiet=True, stream=buf)
    total = TINY["epochs"] * t.batches_per_epoch
    assert t.warmup == t.schedule.warmup == max(total // 10, 1)
    assert t.config["warmup"] == 1000                   # the run's config keeps what was asked
    lines = buf.getvalue().splitlines()
    assert lines == [f"notice: warm-up of 1000 steps is not shorter than the run ({total} steps); "
                     f"clipped to {t.warmup}"]
    # the peak learning rate is reached early in the run, not at its end
    assert t.schedule.lr(t.warmup - 1) == pytest.approx(TINY["lr"], rel=0.05)
    assert [clipped_warmup(w, 30) for w in (0, 29, 30, 100)] == [0, 29, 3, 3]
    assert clipped_warmup(5, 5) == 1
    buf = io.StringIO()
    Trainer(dict(TINY, warmup=2), tmp_path / "w2", quiet=True, stream=buf)
    assert buf.getvalue() == ""


def test_best_npz_holds_the_weights_only(tmp_path):
    t = Trainer(dict(TINY, epochs=1), tmp_path / "b", quiet=True)
    t.fit()
    best, meta = ckpt.load_checkpoint(tmp_path / "b" / "best.npz")
    last, _ = ckpt.load_checkpoint(tmp_path / "b" / "last.npz")
    assert best and all(k.startswith("model/") for k in best)
    assert {k for k in last if k.startswith("model/")} == set(best)
    assert any(k.startswith("optim/") for k in last)
    for k, v in best.items():                           # one epoch: best and last agree
        np.testing.assert_array_equal(v, last[k])
    assert meta["model_config"] and meta["data_config"]["name"] == "adding"
