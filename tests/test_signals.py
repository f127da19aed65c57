"""Signals during training: no sequence of Ctrl-C / SIGTERM can save a checkpoint whose parts
disagree. The second signal is sent at the worst point (through the trainer's hooks), at random
moments in this process (50 double signals), and to a real `gruengine train` process; every
interrupted run resumes to an end bit-identical to the run that was never interrupted."""
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from gruengine import checkpoint as ckpt
from gruengine.config import data_config, load_data, resolve_config
from gruengine.errors import Interrupted
from gruengine.rundir import read_metrics
from gruengine.train import Trainer, train
from tests.fixtures.hostile import ROOT

# with dropout: the resumed run must also replay the dropout masks
CFG = dict(task="adding", seq_len=6, n_train=72, n_test=16, hidden_size=4, batch_size=16,
           epochs=2, lr=1e-2, warmup=2, eval_batch_size=64, seed=4, dropout=0.2)
PER_EPOCH = 5          # 65 training rows after the validation split, batches of 16


@pytest.fixture(scope="module")
def datasets():
    return load_data(data_config(resolve_config(CFG)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, datasets):
    """The uninterrupted run: its final arrays and metrics."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(CFG, run, datasets=datasets, quiet=True)
    return _final(run)


@pytest.fixture(scope="module")
def step_seconds(tmp_path_factory, datasets):
    """How long one training step takes on this machine now (the median of a few runs)."""
    times = []
    for k in range(3):
        t = Trainer(CFG, tmp_path_factory.mktemp("timing") / "run", datasets=datasets,
                    quiet=True)
        t0 = time.perf_counter()
        t.fit()
        times.append((time.perf_counter() - t0) / (CFG["epochs"] * PER_EPOCH))
    return sorted(times)[1]


def _final(run):
    arrays, meta = ckpt.load_checkpoint(os.path.join(run, "last.npz"))
    arrays = {k: v for k, v in arrays.items() if not k.startswith("rng/")}
    epochs = [(r["epoch"], r["train_loss"], r["val_mse"]) for r in read_metrics(run)
              if r["event"] == "epoch"]
    return arrays, epochs, meta["progress"]["step"]


def _assert_same_end(run, reference):
    arrays, epochs, step = _final(run)
    ref_arrays, ref_epochs, ref_step = reference
    assert step == ref_step and epochs == ref_epochs
    assert arrays.keys() == ref_arrays.keys()
    for k in arrays:
        assert np.array_equal(arrays[k], ref_arrays[k]), k       # bit-identical


def _saved_progress(run):
    _, meta = ckpt.load_checkpoint(os.path.join(run, "last.npz"))
    p = meta["progress"]
    return p, meta["optimizer"]["step"]


def _twice(signum=signal.SIGINT):
    os.kill(os.getpid(), signum)
    os.kill(os.getpid(), signum)


# ---------------------------------------------------------------- the worst point, on purpose
@pytest.mark.parametrize("step", [3, PER_EPOCH, PER_EPOCH + 2])
def test_double_signal_between_the_update_and_the_counters(tmp_path, datasets, reference, step):
    # 'update' runs after the optimizer changed the weights and before the progress counters
    # count it: a second signal there used to save the new weights with the old counters
    def hook(trainer, info):
        if info["step"] == step:
            _twice()
    err = io.StringIO()
    with pytest.raises(Interrupted) as e:
        train(CFG, tmp_path / "r", datasets=datasets, hooks={"update": hook}, stream=err)
    assert e.value.signum == signal.SIGINT
    p, opt_step = _saved_progress(tmp_path / "r")
    assert p["step"] == opt_step == step                      # the update, counted
    assert p["step"] == p["epoch"] * PER_EPOCH + p["batch"]
    assert "Ctrl-C again: stopping as soon as the update or save under way is complete" \
        in err.getvalue()
    assert "interrupted: resumable checkpoint saved" in err.getvalue()
    train(None, tmp_path / "r", resume=True, datasets=datasets, quiet=True)
    _assert_same_end(tmp_path / "r", reference)


def test_double_signal_during_a_save(tmp_path, datasets, reference):
    saves = []

    def hook(trainer, path):
        saves.append(os.path.basename(path))
        if len(saves) == 1:                      # best.npz at the end of epoch 1
            _twice(signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        train(CFG, tmp_path / "s", datasets=datasets, hooks={"save": hook}, quiet=True)
    assert e.value.signum == signal.SIGTERM
    # the epoch's bookkeeping finished (best, last, metrics), then the stop saved last again
    assert saves == ["best.npz", "last.npz", "last.npz"]
    p, opt_step = _saved_progress(tmp_path / "s")
    assert (p["epoch"], p["batch"], p["step"], opt_step) == (1, 0, PER_EPOCH, PER_EPOCH)
    assert [r["epoch"] for r in read_metrics(tmp_path / "s")] == [1]
    train(None, tmp_path / "s", resume=True, datasets=datasets, quiet=True)
    _assert_same_end(tmp_path / "s", reference)


def test_double_signal_outside_a_critical_section_stops_at_once(tmp_path, datasets, reference):
    # during the forward/backward pass nothing has changed yet: the step is dropped
    def hook(trainer, loss):
        if trainer.step == PER_EPOCH + 1:
            _twice()
        return loss
    with pytest.raises(Interrupted):
        train(CFG, tmp_path / "o", datasets=datasets, hooks={"loss": hook}, quiet=True)
    p, opt_step = _saved_progress(tmp_path / "o")
    assert p["step"] == opt_step == PER_EPOCH + 1
    train(None, tmp_path / "o", resume=True, datasets=datasets, quiet=True)
    _assert_same_end(tmp_path / "o", reference)


def test_single_signal_finishes_the_step(tmp_path, datasets, reference):
    def hook(trainer, info):
        if info["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(Interrupted):
        train(CFG, tmp_path / "one", datasets=datasets, hooks={"update": hook}, quiet=True)
    p, opt_step = _saved_progress(tmp_path / "one")
    assert p["step"] == opt_step == 4
    train(None, tmp_path / "one", resume=True, datasets=datasets, quiet=True)
    _assert_same_end(tmp_path / "one", reference)


# ---------------------------------------------------------------- random moments, 50 times
def test_fifty_double_signals_at_random_moments(tmp_path, datasets, reference, step_seconds):
    # each trial arms two real SIGINTs from a timer thread after a random step, at random
    # delays: they land wherever the main thread is then (a batch being made, a forward or
    # backward pass, an update, validation, a save), as Ctrl-C from a keyboard would
    seed = int(np.random.default_rng().integers(1 << 31))
    rng = np.random.default_rng(seed)
    late = []
    old = signal.signal(signal.SIGINT, lambda *a: late.append(1))  # signals after fit ended
    interrupted = 0
    try:
        for trial in range(50):
            run = tmp_path / f"t{trial}"
            # armed in the first epoch or just after it, so that the signals land while the run
            # still goes (a timer thread waits up to the 5 ms switch interval for the GIL)
            at = int(rng.integers(1, PER_EPOCH + 2))
            unit = max(step_seconds, 0.002)
            first = rng.uniform(0, 2) * unit
            # mostly in quick succession, as a double Ctrl-C; sometimes steps apart
            second = first + rng.uniform(0, 0.5 if trial % 4 else 3) * unit
            timers = [threading.Timer(d, os.kill, (os.getpid(), signal.SIGINT))
                      for d in (first, second)]

            def arm(trainer, info):
                if info["step"] == at:
                    for tm in timers:
                        tm.start()
            trainer = Trainer(CFG, run, datasets=datasets, quiet=True, hooks={"step": arm})
            try:
                trainer.fit()
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                for tm in timers:
                    if tm.is_alive() or tm.ident is not None:
                        tm.join()
            where = f"seed {seed}, trial {trial}: signals {first:.4f} s, {second:.4f} s after step {at}"
            if os.path.exists(run / "last.npz"):
                p, opt_step = _saved_progress(run)
                assert p["step"] == opt_step == p["epoch"] * PER_EPOCH + p["batch"], where
            train(None, run, resume=True, datasets=datasets, quiet=True)
            try:
                _assert_same_end(run, reference)
            except AssertionError as e:
                raise AssertionError(f"{where}: {e}") from None
            shutil.rmtree(run)
    finally:
        signal.signal(signal.SIGINT, old)
    print(f"{interrupted} of 50 runs interrupted, {len(late)} signals after the run")
    assert interrupted >= 25, f"seed {seed}: only {interrupted} of 50 runs were interrupted " \
                              f"({len(late)} signals arrived after the run)"


# ---------------------------------------------------------------- a real process, real signals
def test_real_double_ctrl_c_on_the_command_line(tmp_path):
    args = ["--task", "adding", "--seq-len", "12", "--n-train", "1200", "--n-test", "40",
            "--hidden-size", "8", "--batch-size", "32", "--epochs", "2", "--dropout", "0.1",
            "--quiet"]
    env = dict(os.environ, NUMBA_NUM_THREADS="2")

    def cli(*a, **kw):
        return subprocess.Popen([sys.executable, "-m", "gruengine_cli.main", *map(str, a)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kw)
    def started(run, p):
        deadline = time.time() + 120
        while not (run / "config.json").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.005)                   # config.json: the loop has started
        return time.perf_counter()

    ref = cli("train", *args, "--out", tmp_path / "ref")
    t0 = started(tmp_path / "ref", ref)
    assert ref.wait(timeout=300) == 0, ref.communicate()
    training = time.perf_counter() - t0
    reference = _final(tmp_path / "ref")
    rng = np.random.default_rng()
    for trial in range(3):
        run = tmp_path / f"r{trial}"
        p = cli("train", *args, "--out", run)
        started(run, p)
        time.sleep(rng.uniform(0, 0.7) * training)
        p.send_signal(signal.SIGINT)
        time.sleep(rng.uniform(0, 0.01))
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
        finished = (run / "metrics.jsonl").exists() and \
            any(r["event"] == "test" for r in read_metrics(run))
        if finished and p.returncode in (0, -signal.SIGINT):
            continue                            # the signals came as the process was exiting
        assert p.returncode == 130, err
        assert "Traceback" not in err
        state, opt_step = _saved_progress(run)
        assert state["step"] == opt_step
        r = cli("train", "--resume", run, "--quiet")
        assert r.wait(timeout=300) == 0, r.communicate()
        _assert_same_end(run, reference)


def test_a_ctrl_c_python_cannot_raise_is_not_printed_as_a_traceback():
    # a KeyboardInterrupt in a finalizer or a callback from C reaches sys.unraisablehook
    from types import SimpleNamespace
    from gruengine_cli.main import _quiet_unraisable, main
    seen = []
    hook = _quiet_unraisable(seen.append)
    for exc in (KeyboardInterrupt, Interrupted):
        hook(SimpleNamespace(exc_type=exc))
    assert seen == []
    other = SimpleNamespace(exc_type=ValueError)
    hook(other)
    assert seen == [other]
    old = sys.unraisablehook
    with pytest.raises(SystemExit):
        main(["--help"])
    assert sys.unraisablehook is old            # called from Python: the caller's hook back
