"""Hostile checkpoints and run folders: bombs and forged headers refused before they are read,
metadata checked field by field, one run per folder, and every failure one line that names the
file, field or option, with the run folder left as it was."""
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gruengine import checkpoint as ckpt
from gruengine.errors import CheckpointError
from gruengine.rundir import RunDir
from gruengine.train import Trainer, train
from tests.fixtures.hostile import (ROOT, npy_bytes, npz_members, one_error_line, run_cli,
                                    wait_for, write_zip)

TINY = dict(task="adding", seq_len=10, n_train=160, n_test=40, hidden_size=6, batch_size=32,
            epochs=2, lr=1e-2, warmup=2, eval_batch_size=64, seed=3)
TINY_ARGS = ["--task", "adding", "--seq-len", "10", "--n-train", "160", "--n-test", "40",
             "--hidden-size", "6", "--batch-size", "32", "--epochs", "1", "--quiet"]


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _folder_state(folder):
    return {n: _sha(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "base"
    train(TINY, run, quiet=True)
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


def _main(capsys, *args):
    """The CLI's ``main`` in this process: (exit status, stdout, stderr)."""
    from gruengine_cli.main import main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _one_line(status, err, want_status, *needles):
    assert status == want_status, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _read_meta(members):
    raw = dict(members)["__meta__.npy"]
    return json.loads(np.lib.format.read_array(io.BytesIO(raw)).tobytes())


def _forge(src, dst, *, meta=None, replace=None, extra=()):
    """Rewrite checkpoint ``src`` to ``dst`` with the metadata edited by ``meta(m)`` (in
    place), members replaced by ``replace`` {name: bytes}, and ``extra`` members added."""
    members = npz_members(src)
    m = _read_meta(members)
    if meta is not None:
        meta(m)
    blob = np.frombuffer(json.dumps(m, sort_keys=True).encode(), dtype=np.uint8)
    out = [(n, npy_bytes(blob) if n == "__meta__.npy" else (replace or {}).get(n, b))
           for n, b in members] + list(extra)
    return write_zip(dst, out)


# ---------------------------------------------------------------- 2. checkpoint bombs
def test_compressed_member_bomb_is_refused_before_decompression(run_copy):
    last = run_copy / "last.npz"
    _forge(last, last, extra=[("padding.npy", ("fill", 0, 2048))])     # 2 GiB of zeros
    assert os.path.getsize(last) < 3 << 20
    before = _folder_state(run_copy)
    res = run_cli("train", "--resume", run_copy, "--epochs", "3", "--quiet")
    one_error_line(res, 2, f"checkpoint {last}", "'padding'", "compressed")
    assert res.maxrss_mb < 1024, res.maxrss_mb
    assert _folder_state(run_copy) == before
    res = run_cli("evaluate", last)
    one_error_line(res, 2, f"checkpoint {last}", "'padding'")
    assert res.maxrss_mb < 1024, res.maxrss_mb


@pytest.mark.parametrize("forge_manifest", [False, True])
def test_member_header_claiming_terabytes(run_copy, forge_manifest):
    last = run_copy / "last.npz"
    name = "model/head.bias"
    claim = (10 ** 12,)

    def meta(m):
        if forge_manifest:
            m["arrays"][name][0] = list(claim)
    bias = np.zeros(1, np.float32)
    _forge(last, last, meta=meta, replace={name + ".npy": npy_bytes(bias, claim)})
    before = _folder_state(run_copy)
    # with or without a manifest that agrees, the header is checked against the bytes held
    want = "its header declares shape (1000000000000,) float32 (3.64 TiB), the archive holds 4"
    for args in (["train", "--resume", run_copy, "--quiet"], ["evaluate", last]):
        res = run_cli(*args)
        one_error_line(res, 2, f"checkpoint {last}", repr(name), want)
        assert res.maxrss_mb < 1024, res.maxrss_mb
    assert _folder_state(run_copy) == before


def test_random_bytes_in_a_member_are_not_called_pickled(run_copy, capsys):
    last = run_copy / "last.npz"
    noise = np.random.default_rng().bytes(300)
    _forge(last, last, replace={"model/head.bias.npy": b"\x00" + noise})
    status, _, err = _main(capsys, "evaluate", last)
    _one_line(status, err, 2, f"checkpoint {last}: array 'model/head.bias' is not a NumPy "
                              f"array (no .npy header")
    assert "pickle" not in err


def test_compressed_members_are_refused_in_checkpoints(tmp_path, rng):
    a = {"model/w": rng.standard_normal(4)}
    path = ckpt.save_checkpoint(tmp_path / "a.npz", a, {"epoch": 1})
    with np.load(path) as z:
        np.savez_compressed(tmp_path / "c.npz", **{k: z[k] for k in z.files})
    with pytest.raises(CheckpointError, match=r"c\.npz: array '__meta__' is compressed"):
        ckpt.load_checkpoint(tmp_path / "c.npz")
    got, _ = ckpt.load_checkpoint(path)
    np.testing.assert_array_equal(got["model/w"], a["model/w"])


# ---------------------------------------------------------------- 8, 10. metadata schema
def _set(path, value):
    def edit(m):
        *head, last = path.split(".")
        d = m
        for k in head:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return edit


@pytest.mark.parametrize("field, value, message, evaluate_fails", [
    ("train_config", KeyError, "metadata field train_config is missing", False),
    ("progress", KeyError, "metadata field progress is missing", False),
    ("schedule", KeyError, "metadata field schedule is missing", False),
    ("model_config", KeyError, "metadata field model_config is missing", True),
    ("progress.epoch", "zero", "metadata field progress.epoch: expected an integer >= 0, got 'zero'",
     False),
    ("progress", None, "metadata field progress: expected an object, got None", False),
    ("train_config", [1, 2], "metadata field train_config: expected an object, got [1, 2]", True),
    ("progress.batch", 1e9, "metadata field progress.batch: expected an integer >= 0, got "
                            "1000000000.0", False),
    ("progress.batch", 10 ** 9, "metadata field progress.batch: expected an integer in [0, 5]",
     False),
    ("train_config.hidden_size", 9, "metadata field train_config.hidden_size is 9, "
                                    "model_config.hidden_size is 6", False),
    ("train_config.lr", float("inf"), "metadata field train_config: lr: expected a finite number",
     False),
    ("optimizer.step", 11, "metadata field optimizer.step: expected 10", False),
    ("model_config.hidden_size", -1, "metadata field model_config: hidden_size: expected an "
                                     "integer >= 1, got -1", True),
])
def test_metadata_is_checked_field_by_field(run_copy, capsys, field, value, message,
                                            evaluate_fails):
    last = run_copy / "last.npz"
    _forge(last, last, meta=_set(field, value))
    before = _folder_state(run_copy)
    with pytest.raises(CheckpointError) as e:
        Trainer.resume(run_copy, quiet=True)
    assert message in str(e.value) and str(last) in str(e.value) and "\n" not in str(e.value)
    status, _, err = _main(capsys, "train", "--resume", run_copy, "--quiet")
    _one_line(status, err, 2, message)
    assert _folder_state(run_copy) == before                 # config.json not rewritten either
    status, out, err = _main(capsys, "evaluate", last, "--quiet")
    if evaluate_fails:
        _one_line(status, err, 2, f"checkpoint {last}", field.split(".")[0])
    else:
        assert status == 0 and "test MSE" in out, err


# ---------------------------------------------------------------- 7. one run per folder
def test_two_runs_at_once_into_one_folder(tmp_path):
    out = tmp_path / "shared"
    args = [sys.executable, "-m", "gruengine_cli.main", "train", *TINY_ARGS, "--n-train", "3000",
            "--epochs", "2", "--out", str(out)]
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    procs = [subprocess.Popen(args + ["--seed", str(k)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in (1, 2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert "Traceback" not in loser[2]
    [line] = [ln for ln in loser[2].splitlines() if ln.startswith("error: ")]
    # "(process N)", or "(another process)" when the holder has locked but not yet written its pid
    assert ("is in use by another gruengine run (" in line
            or "already holds a run" in line), line
    winner = next(k for k, r in zip((1, 2), results) if r[0] == 0)
    # the folder holds one run, whole: config, checkpoints and metrics agree
    config = json.load(open(out / "config.json"))
    _, last = ckpt.load_checkpoint(out / "last.npz")
    _, best = ckpt.load_checkpoint(out / "best.npz")
    assert config["seed"] == last["train_config"]["seed"] == best["train_config"]["seed"] == winner
    epochs = [json.loads(ln)["epoch"] for ln in open(out / "metrics.jsonl")]
    assert epochs == [1, 2, 2]                  # two epochs, then the test record
    assert not (out / ".lock").exists()
    s = train(None, out, resume=True, quiet=True, overrides={"epochs": 3})
    assert s["epochs"] == 3


def test_lock_names_the_holder_and_dies_with_it(tmp_path):
    out = tmp_path / "r"
    holder = RunDir(out).acquire()
    with pytest.raises(ValueError, match=rf"out: the run folder {out} is in use by another "
                                         rf"gruengine run \(process {os.getpid()}\)"):
        Trainer(TINY, out, quiet=True)
    holder.release()
    assert not out.exists()                     # acquire made it, nothing was written
    # a holder killed with SIGKILL: the OS drops its lock, the pid file stays behind
    code = (f"import sys, time; from gruengine.rundir import RunDir; "
            f"run = RunDir({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=rf"in use by another gruengine run \(process {p.pid}\)"):
        RunDir(out).acquire()
    p.kill()
    p.wait()
    t = Trainer(dict(TINY, epochs=1), out, quiet=True)
    assert t.fit()["epochs"] == 1


def test_a_folder_with_any_run_file_is_not_overwritten(run_copy, tmp_path, capsys):
    os.unlink(run_copy / "last.npz")            # best.npz, config and metrics remain
    before = _folder_state(run_copy)
    status, _, err = _main(capsys, "train", *TINY_ARGS, "--out", run_copy)
    _one_line(status, err, 2, f"out: {run_copy} already holds a run (config.json, "
                              f"metrics.jsonl, best.npz)", "--overwrite")
    assert _folder_state(run_copy) == before
    status, _, err = _main(capsys, "train", *TINY_ARGS, "--out", run_copy, "--resume", run_copy,
                           "--overwrite")
    assert status == 2 and "exclude each other" in err
    status, out, err = _main(capsys, "train", *TINY_ARGS, "--out", run_copy, "--overwrite")
    assert status == 0, err
    records = [json.loads(ln) for ln in open(run_copy / "metrics.jsonl")]
    assert [r["event"] for r in records] == ["epoch", "test"]   # the old run's lines are gone
    _, meta = ckpt.load_checkpoint(run_copy / "best.npz")
    assert meta["train_config"]["epochs"] == 1


def test_stale_temporaries_are_removed_on_start(run_copy, tmp_path):
    stale = [run_copy / ".best.npz.x1y2z3.tmp", run_copy / ".last.npz.abc.tmp",
             run_copy / ".metrics.jsonl.q.tmp"]
    for s in stale:
        s.write_bytes(b"PK\x03\x04 half a checkpoint")
    keep = run_copy / ".notes.tmp"               # not a name a run writes: left alone
    keep.write_text("mine")
    train(None, run_copy, resume=True, quiet=True, overrides={"epochs": 3})
    assert not any(s.exists() for s in stale) and keep.read_text() == "mine"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".last.npz.k.tmp").write_bytes(b"junk")   # a folder with only debris is no run
    train(dict(TINY, epochs=1), fresh, quiet=True)
    assert sorted(os.listdir(fresh)) == ["best.npz", "config.json", "last.npz", "metrics.jsonl"]


def test_out_naming_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("mine")
    status, _, err = _main(capsys, "train", *TINY_ARGS, "--out", f)
    _one_line(status, err, 2, f"out: {f} is a file, not a run folder")
    assert f.read_text() == "mine"


# ---------------------------------------------------------------- 10. disk full, encodings
def test_full_disk_names_the_file_and_keeps_the_checkpoint(run_copy, capsys, monkeypatch):
    before = _sha(run_copy / "last.npz")
    real = ckpt._write_npz

    def full(f, arrays):
        real(f, {k: arrays[k] for k in list(arrays)[:1]})       # part of it, then no space
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt, "_write_npz", full)
    status, _, err = _main(capsys, "train", "--resume", run_copy, "--epochs", "3", "--quiet")
    _one_line(status, err, 2, "No space left on device", f"{run_copy / 'best.npz'}"
              if "best.npz" in err else f"{run_copy / 'last.npz'}", "unchanged")
    assert _sha(run_copy / "last.npz") == before
    assert not [n for n in os.listdir(run_copy) if n.endswith(".tmp")]
    monkeypatch.undo()
    assert train(None, run_copy, resume=True, quiet=True, overrides={"epochs": 3})["epochs"] == 3


def test_undecodable_config_and_predict_file(tmp_path, capsys, run_copy):
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(b"hidden_size = 8\n\xff\xfe = 1\n")
    status, _, err = _main(capsys, "train", "--config", cfg, "--out", tmp_path / "x")
    _one_line(status, err, 2, f"--config {cfg}: not UTF-8 text")
    cfg.write_text("seq_len = 99999999999999999999\n")
    status, _, err = _main(capsys, "train", "--config", cfg, "--out", tmp_path / "x")
    _one_line(status, err, 2, "seq_len: expected an integer <= 9223372036854775807 (64 bits), "
                              "got 99999999999999999999")
    bad = tmp_path / "texts.txt"
    bad.write_bytes(b"a fine film\n\xff\xfe\n")
    status, _, err = _main(capsys, "predict", run_copy / "best.npz", "--file", bad)
    _one_line(status, err, 2, f"--file {bad}: not UTF-8 text")
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(5)
    for split, n in (("train", 60), ("test", 20)):
        lines = [f"{'pos' if rng.random() < 0.5 else 'neg'}\t{' '.join(rng.choice(['a', 'b', 'c'], 4))}"
                 for _ in range(n)]
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    train(dict(task="text", data=str(d), hidden_size=4, embed_dim=4, epochs=1, max_len=8,
               batch_size=16), d / "run", quiet=True)
    return d


def test_text_checkpoint_with_feature_task(text_run, tmp_path, capsys):
    np.savez(tmp_path / "f.npz", X=np.ones((4, 3, 2)), y=np.zeros(4, np.int64))
    status, _, err = _main(capsys, "evaluate", text_run / "run" / "best.npz", "--task", "npz",
                           "--data", f"{tmp_path / 'f.npz'},{tmp_path / 'f.npz'}")
    _one_line(status, err, 2, "task: the checkpoint", "reads token ids (trained on 'text')",
              "'npz' data does not fit it")
    assert "max_len" not in err


# ---------------------------------------------------------------- 5, 11. sizes and config
def test_huge_sizes_are_refused_before_allocating(tmp_path):
    res = run_cli("train", *TINY_ARGS, "--hidden-size", "1000000", "--out", tmp_path / "h")
    one_error_line(res, 2, "hidden_size: a model of", "parameters", "TiB", "--hidden-size")
    assert res.maxrss_mb < 1024 and not (tmp_path / "h").exists()
    res = run_cli("train", *TINY_ARGS, "--seq-len", "1000000000", "--out", tmp_path / "s")
    one_error_line(res, 2, "seq_len, n_train: the adding data (200 sequences x 1000000000 steps",
                   "TiB", "--seq-len", "--max-data-bytes")
    assert res.maxrss_mb < 1024 and not (tmp_path / "s").exists()
    wide = tmp_path / "wide"                   # the adding default: 64 units
    train(dict(TINY, hidden_size=64, n_train=64, epochs=1), wide, quiet=True)
    res = run_cli("inspect", wide / "best.npz", "adding:1:100000000", "--no-plot",
                  "--out", tmp_path / "i")
    one_error_line(res, 2, "INPUT: 'adding:1:100000000': 100000000 steps of gates", "GiB",
                   "smaller T")
    assert res.maxrss_mb < 1024, res.maxrss_mb


def test_an_allocation_that_fails_anyway_is_one_line(tmp_path, capsys, monkeypatch):
    def greedy(self):
        return np.empty((10 ** 13,), np.float32)      # more than any machine: refused at once
    monkeypatch.setattr(Trainer, "fit", greedy)
    status, _, err = _main(capsys, "train", *TINY_ARGS, "--hidden-size", "7", "--out",
                           tmp_path / "m")
    _one_line(status, err, 2, "out of memory: Unable to allocate 36.4 TiB",
              "the sizes given: --seq-len 10, --n-train 160, --n-test 40, --hidden-size 6, "
              "--batch-size 32, --hidden-size 7")


def test_ctrl_c_inside_compiled_code_is_an_abort(tmp_path, capsys, monkeypatch):
    # a KeyboardInterrupt raised while a Numba dispatcher runs comes back as the cause of a
    # SystemError ("returned a result with an exception set"): still Ctrl-C, not a traceback
    def interrupted_in_a_kernel(self):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise SystemError("CPUDispatcher returned a result with an exception set") from e
    monkeypatch.setattr(Trainer, "fit", interrupted_in_a_kernel)
    status, _, err = _main(capsys, "train", *TINY_ARGS, "--out", tmp_path / "k")
    assert status == 130 and err.strip().splitlines()[-1] == "aborted", err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag, value, message", [
    ("--clip", "inf", "clip: expected a finite number >= 0, got inf"),
    ("--lr", "nan", "lr: expected a finite number > 0, got nan"),
    ("--weight-decay", "inf", "weight_decay: expected a finite number >= 0, got inf"),
])
def test_non_finite_hyperparameters(tmp_path, capsys, flag, value, message):
    status, _, err = _main(capsys, "train", *TINY_ARGS, flag, value, "--out", tmp_path / "c")
    _one_line(status, err, 2, message)
    assert not (tmp_path / "c").exists()


def test_sigterm_while_loading_data_exits_143_with_a_message(tmp_path):
    rng = np.random.default_rng(1)
    words = np.array(["film", "plot", "good", "bad", "cast", "scene"])
    lines = [f"{'pos' if k % 2 else 'neg'}\t{' '.join(rng.choice(words, 12))}" for k in range(300_000)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.tsv").write_text("\n".join(lines[:100]) + "\n")
    out = tmp_path / "run"

    def terminate_while_loading(proc, err_path):
        wait_for(err_path, "loading text data")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
    res = run_cli("train", "--task", "text", "--data", tmp_path, "--out", out,
                  on_start=terminate_while_loading)
    assert res.returncode == 143, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "terminated (SIGTERM)"
    assert not out.exists()
