"""The command line: exit statuses, one-line errors without tracebacks (subprocess), config
file + flag override, resume, evaluate, predict, plot."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import click
import numpy as np
import pytest
from click.testing import CliRunner

from gruengine_cli.main import app, _register
from gruengine_cli.train import load_config_file
from gruengine import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--task", "adding", "--seq-len", "10", "--n-train", "160", "--n-test", "40",
        "--hidden-size", "6", "--batch-size", "32", "--epochs", "1", "--quiet"]

_register()
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
NO_MPL = "matplotlib is not installed (pip install -e '.[plot]')"


def _cli(*args, timeout=120, **kw):
    """Run ``python -m gruengine_cli.main`` in a fresh process (proves what reaches stderr)."""
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "gruengine_cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env, **kw)


def _one_error_line(p, status, *needles):
    assert p.returncode == status, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_bad_hyperparameters_exit_2_with_one_line(tmp_path):
    p = _cli("train", *TINY, "--lr", "-1", "--out", str(tmp_path / "a"))
    _one_error_line(p, 2, "lr: expected a value > 0, got -1.0")
    p = _cli("train", *TINY, "--hidden-size", "0", "--out", str(tmp_path / "b"))
    _one_error_line(p, 2, "hidden_size: expected a value >= 1, got 0")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('pooling = "sum"\ncell = "gru"\n')
    p = _cli("train", "--config", str(bad), "--out", str(tmp_path / "c"))
    _one_error_line(p, 2, "pooling: expected one of ['last', 'mean', 'max'], got 'sum'")
    bad.write_text('hidden_size = 8\nlearning_rate = 0.1\n')
    p = _cli("train", "--config", str(bad), "--out", str(tmp_path / "c"))
    _one_error_line(p, 2, "config: unknown keys ['learning_rate']")
    bad.write_text('hidden_size = \n')
    p = _cli("train", "--config", str(bad), "--out", str(tmp_path / "c"))
    _one_error_line(p, 2, f"{bad}: not valid TOML")


def test_unknown_choice_is_a_usage_error(tmp_path):
    p = _cli("train", "--device", "tpu", "--out", str(tmp_path / "c"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "Invalid value for '--device'" in p.stderr and "'tpu'" in p.stderr


def test_divergence_exits_1_and_corrupt_checkpoint_exits_2(tmp_path):
    run = tmp_path / "d"
    p = _cli("train", *TINY, "--epochs", "2", "--lr", "1e30", "--clip", "0", "--schedule",
             "none", "--out", str(run))
    _one_error_line(p, 1, "training diverged")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    p = _cli("evaluate", str(bad))
    _one_error_line(p, 2, f"checkpoint {bad}: unreadable (truncated or corrupt)")
    p = _cli("evaluate", str(tmp_path / "missing.npz"))
    _one_error_line(p, 2, "no such file")


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "k"
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    args = [a for a in TINY if a != "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "gruengine_cli.main", "train", *args,
                             "--n-train", "4000", "--epochs", "3", "--out", str(run)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.time() + 90
    while "epoch 1/3: " not in seen and time.time() < deadline:   # training has started
        ch = proc.stderr.read(1)
        if not ch:
            break
        seen += ch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    err = seen + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"resumable checkpoint saved to {run / 'last.npz'}" in err
    _, meta = ckpt.load_checkpoint(run / "last.npz")
    assert meta["progress"]["epoch"] == 0 and meta["progress"]["batch"] >= 1


def test_config_file_and_explicit_flags(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('task = "adding"\nseq-len = 10\nn_train = 160\nn_test = 40\n'
                   '[model]\nhidden_size = 7\nnum_layers = 2\n[train]\nepochs = 1\nlr = 0.02\n')
    r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--hidden-size", "5", "--quiet",
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    got = json.load(open(tmp_path / "r" / "config.json"))
    assert got["hidden_size"] == 5            # the flag wins
    assert got["num_layers"] == 2 and got["lr"] == 0.02 and got["seq_len"] == 10   # the file
    assert got["batch_size"] == 64            # neither: the adding default
    assert "test MSE" in r.output and "target:" in r.output
    # resume: --epochs extends, --hidden-size may not change
    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "r"), "--epochs", "2",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    assert "2 epochs" in r.output
    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "r"), "--hidden-size", "9"])
    assert isinstance(r.exception, ValueError) and "hidden_size cannot change" in str(r.exception)


def test_named_configs_parse_and_validate():
    from gruengine.config import resolve_config
    for name in ("adding_t200", "imdb"):
        c = resolve_config(load_config_file(name))
        assert c["task"] == name.split("_")[0]
    assert resolve_config(load_config_file("adding_t200"))["seq_len"] == 200


def test_config_names_a_run_folder_or_a_named_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imdb").mkdir()                    # a folder that is not a run: the named config
    assert load_config_file("imdb")["task"] == "imdb"
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"task": "copy", "hidden_size": 7}')
    assert load_config_file(str(run)) == {"task": "copy", "hidden_size": 7}
    with pytest.raises(click.BadParameter, match="no such file, nor a named config"):
        load_config_file(str(tmp_path / "runs"))


def test_evaluate_predict_and_plot_on_a_text_run(tmp_path):
    rng = np.random.default_rng(0)
    good, bad = ["great", "superb", "fine", "lovely"], ["awful", "boring", "dull", "bad"]
    filler = ["the", "film", "was", "and", "plot", "a"]

    def rows(n):
        out = []
        for _ in range(n):
            lab = int(rng.integers(2))
            words = list(rng.choice(filler, 5)) + [rng.choice(good if lab else bad)]
            rng.shuffle(words)
            out.append(f"{'pos' if lab else 'neg'}\t{' '.join(words)}")
        return "\n".join(out) + "\n"
    (tmp_path / "train.tsv").write_text(rows(200))
    (tmp_path / "test.tsv").write_text(rows(40))
    run = tmp_path / "t"
    r = CliRunner().invoke(app, ["train", "--task", "text", "--data", str(tmp_path),
                                 "--hidden-size", "8", "--embed-dim", "8", "--epochs", "6",
                                 "--lr", "0.02", "--batch-size", "16", "--quiet", "--pooling",
                                 "max", "--out", str(run)] + (["--plot"] if HAVE_MPL else []))
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output
    if HAVE_MPL:
        assert open(run / "curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(app, ["evaluate", str(run), "--json", "--quiet"])   # folder: best.npz
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["n"] == 40 and 0 <= res["acc"] <= 1
    r = CliRunner().invoke(app, ["predict", str(run / "best.npz"), "a superb lovely film",
                                 "dull boring awful plot"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 2 and all(ln.split("\t")[0] in ("pos", "neg") for ln in lines)
    assert all(0.5 <= float(ln.split("\t")[1]) <= 1 for ln in lines)
    r = CliRunner().invoke(app, ["predict", str(run / "best.npz"), "-", "--json"],
                           input="a lovely film\n\nthe plot was dull\n")
    assert r.exit_code == 0, r.output
    objs = [json.loads(ln) for ln in r.output.strip().splitlines()]
    assert [o["text"] for o in objs] == ["a lovely film", "the plot was dull"]
    assert all(abs(sum(o["probs"].values()) - 1) < 1e-5 for o in objs)
    assert all(o["probability"] == max(o["probs"].values()) for o in objs)
    if not HAVE_MPL:
        pytest.skip(f"evaluate and predict passed; the --plot half: {NO_MPL}")


def test_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    from gruengine.train import train
    train({"task": "adding", "seq_len": 8, "n_train": 64, "n_test": 16, "hidden_size": 4,
           "epochs": 1}, tmp_path / "p", quiet=True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    r = CliRunner().invoke(app, ["plot", str(tmp_path / "p")])
    assert r.exit_code != 0 and "pip install 'gruengine[plot]'" in str(r.exception)
    assert not (tmp_path / "p" / "curves.png").exists()


@pytest.mark.parametrize("cmd", ["train", "evaluate", "predict", "plot"])
def test_every_command_has_help_with_an_example(cmd):
    r = CliRunner().invoke(app, [cmd, "--help"])
    assert r.exit_code == 0 and "Example" in r.output and f"gruengine {cmd}" in r.output


@pytest.mark.parametrize("cmd", ["train", "evaluate", "predict", "plot", "inspect",
                                 "data info", "data download", "bench"])
def test_usage_errors_are_one_line_with_the_help_to_read(cmd):
    p = _cli(*cmd.split(), "--no-such-option")
    line = _one_error_line(p, 2)
    # click words the message itself (it differs between click versions)
    assert line.startswith("error: No such option") and "--no-such-option" in line
    assert line.endswith(f" (see gruengine {cmd} --help)")
    assert p.stderr.count("\n") == 1 and "Usage:" not in p.stderr


def test_usage_errors_of_arguments_and_commands(tmp_path):
    line = _one_error_line(_cli("trian"), 2)
    assert "No such command 'trian'" in line and line.endswith(" (see gruengine --help)")
    line = _one_error_line(_cli("train", "--device", "tpu", "--out", str(tmp_path / "a")), 2)
    assert line.endswith("'tpu' is not one of 'cpu', 'cuda', 'auto'. (see gruengine train --help)")
    line = _one_error_line(_cli("predict"), 2)
    assert "Missing argument 'CKPT'" in line and line.endswith(" (see gruengine predict --help)")


def _review_file(path, rng, n, header=True):
    """A 2-class ``text<TAB>label`` file: one telling word per review among filler."""
    good, bad = ["great", "superb", "lovely"], ["awful", "boring", "dull"]
    filler = ["the", "film", "was", "and", "plot", "a", "story"]
    lines = ["review\tsentiment"] if header else []
    for _ in range(n):
        lab = int(rng.integers(2))
        words = list(rng.choice(filler, 5)) + [rng.choice(good if lab else bad)]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{'positive' if lab else 'negative'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_own_files_train_with_data_alone(tmp_path, rng):
    tsv = _review_file(tmp_path / "reviews.tsv", rng, 150)
    r = CliRunner().invoke(app, ["train", "--data", str(tsv), "--epochs", "2", "--hidden-size", "8",
                                 "--embed-dim", "8", "--quiet", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    c = json.load(open(tmp_path / "t" / "config.json"))
    assert (c["task"], c["test_fraction"]) == ("text", 0.2)
    _, meta = ckpt.load_checkpoint(tmp_path / "t" / "best.npz")
    assert sorted(meta["classes"]) == ["negative", "positive"]
    assert "test accuracy" in r.output and "n=30)" in r.output        # 20% of 150 rows
    X = rng.standard_normal((120, 9, 2)).astype(np.float32)
    np.savez(tmp_path / "mine.npz", X=X, y=(X[:, :, 0].sum(axis=1) > 0).astype(np.int64))
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "mine.npz"), "--epochs", "1",
                                 "--hidden-size", "4", "--quiet", "--out", str(tmp_path / "n")])
    assert r.exit_code == 0, r.output
    c = json.load(open(tmp_path / "n" / "config.json"))
    assert (c["task"], c["test_fraction"]) == ("npz", 0.2) and "n=24)" in r.output
    # the run's own test split, again, from its checkpoint
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "n"), "--json", "--quiet"])
    assert r.exit_code == 0 and json.loads(r.output)["n"] == 24


def test_a_runs_config_json_is_a_config(tmp_path):
    r = CliRunner().invoke(app, ["train", *TINY, "--lr", "0.02", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    first = json.load(open(tmp_path / "a" / "config.json"))
    r = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "a" / "config.json"),
                                 "--seed", "3", "--quiet", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    second = json.load(open(tmp_path / "b" / "config.json"))
    assert second == dict(first, seed=3)
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 8,}')
    p = _cli("train", "--config", str(bad), "--out", str(tmp_path / "c"))
    _one_error_line(p, 2, f"{bad}: not valid JSON")


def test_plot_without_matplotlib_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # not importable
    r = CliRunner().invoke(app, ["train", *TINY, "--plot", "--out", str(tmp_path / "p")])
    assert r.exit_code != 0
    assert "--plot needs matplotlib: pip install 'gruengine[plot]'" in str(r.exception)
    assert not (tmp_path / "p").exists()                    # nothing was trained


def test_quiet_ctrl_c_still_names_the_checkpoint(tmp_path, monkeypatch):
    from gruengine.train import Trainer
    fit = Trainer.fit

    def interrupted_fit(self):
        def stop(trainer, info):
            if info["step"] == 2:
                raise KeyboardInterrupt
        self.hooks["step"] = stop
        return fit(self)
    monkeypatch.setattr(Trainer, "fit", interrupted_fit)
    run = tmp_path / "q"
    r = CliRunner().invoke(app, ["train", *TINY, "--out", str(run)])
    assert r.exit_code != 0
    assert (f"interrupted: resumable checkpoint in {run / 'last.npz'}; continue with: "
            f"gruengine train --resume {run}") in r.output
    _, meta = ckpt.load_checkpoint(run / "last.npz")
    assert meta["progress"]["step"] == 2


def test_curves_one_panel_for_regression_and_whole_epoch_ticks(rng):
    pytest.importorskip("matplotlib", reason=NO_MPL)
    from gruengine_cli.plot import draw_curves, panels
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = int(rng.integers(1, 4))
    loss = rng.random((n, 2))
    regress = [{"event": "epoch", "epoch": e + 1, "train_loss": a, "train_mse": a,
                "val_loss": b, "val_mse": b} for e, (a, b) in enumerate(loss.tolist())]
    regress.append({"event": "test", "test_loss": 0.1, "test_mse": 0.1})
    assert panels(regress) == [("loss", "loss (MSE)")]
    classify = [{"event": "epoch", "epoch": e + 1, "train_loss": a, "train_acc": b,
                 "val_loss": a, "val_acc": b} for e, (a, b) in enumerate(loss.tolist())]
    assert panels(classify) == [("loss", "loss"), ("acc", "accuracy")]
    for records, k in ((regress, 1), (classify, 2)):
        fig = draw_curves(plt, records, "run")
        assert len(fig.axes) == k
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
            assert set(range(1, n + 1)) <= set(int(t) for t in ticks)
        plt.close(fig)
