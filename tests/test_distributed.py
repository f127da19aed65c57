"""Data-parallel training and sharded inference on MPI (gruengine.distributed, gruengine.shards).

The parts that need no MPI run everywhere: dropout row windows against the whole batch's
draw, the shares of a batch, gradients of shares added up against one process's gradient,
the launcher's environment and the threads per rank, the run folder of ranks other than 0.
The rest launches ``mpiexec -n 2`` a few times (every launch pays Python and Numba start-up
on each rank) and skips, saying why, where the [mpi] extra is not installed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from gruengine import _launch, checkpoint as ckpt, threads
from gruengine.distributed import LocalWorld, NoRunDir
from gruengine.rundir import ARTEFACTS
from gruengine.run_schema import check_run_meta
from gruengine.shards import RowWindow, rows, share_gradient
from gruengine.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "mpi_ranks.py")


# ---------------------------------------------------------------------- no MPI needed

def test_rows_tile_the_batch(rng):
    for _ in range(200):
        n, size = int(rng.integers(0, 40)), int(rng.integers(1, 9))
        shares = [rows(r, size, n) for r in range(size)]
        assert shares[0][0] == 0 and shares[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
        sizes = [hi - lo for lo, hi in shares]
        assert max(sizes) - min(sizes) <= 1 and sizes[0] == max(sizes)
        assert n == 0 or sizes[0] >= 1


@pytest.mark.parametrize("ndim", [2, 3])
def test_row_window_draws_the_rows_of_the_whole_batch(rng, ndim):
    seed = [int(rng.integers(0, 2**31)), 13, 0, 4, 1]
    B, T, F = int(rng.integers(1, 9)), int(rng.integers(1, 7)), int(rng.integers(1, 5))
    size = int(rng.integers(1, 5))
    whole = np.random.default_rng(seed)
    # two draws in a row, like the masks of two stacked layers from one generator
    shape = (B, T, F) if ndim == 3 else (B, F)
    first, second = whole.random(shape), whole.random(shape)
    for r in range(size):
        lo, hi = rows(r, size, B)
        t = int(rng.integers(1, T + 1))                 # the share's own longest sequence
        g = RowWindow(lo, B, T)(np.random.default_rng(seed))
        assert isinstance(g, np.random.Generator)
        part = (hi - lo, t, F) if ndim == 3 else (hi - lo, F)
        a, b = g.random(part), g.random(part)
        cut = (slice(lo, hi), slice(0, t)) if ndim == 3 else (slice(lo, hi),)
        np.testing.assert_array_equal(a, first[cut])
        np.testing.assert_array_equal(b, second[cut])
        assert g.bit_generator.state == whole.bit_generator.state   # the next step starts equal
    with pytest.raises(ValueError, match="size: expected a float64 draw"):
        RowWindow(0, B, T)(np.random.default_rng(seed)).random((B + 1, F))


def _tiny_npz(path, rng, task, n=37, T=9, F=3):
    X = rng.standard_normal((n, T, F)).astype(np.float32)
    lengths = rng.integers(2, T + 1, n)
    y = rng.integers(0, 3, (n, T)) if task == "tag" else rng.integers(0, 3, n)
    np.savez(path, X=X, y=y, lengths=lengths)
    return str(path)


@pytest.mark.parametrize("task, dtype, tol", [("tag", "float64", 1e-12),
                                              ("classify", "float32", 1e-6)])
def test_shares_add_up_to_the_whole_batch_gradient(tmp_path, rng, task, dtype, tol):
    # N ranks' shares computed one after another in this process, against the gradient of
    # the whole batch: loss normalisation (examples, or valid steps for tag), dropout and
    # (the plan's, for series) augmentation. No front end: its batch norm adds statistics
    # over the ranks while they compute (test_conv_front_end_on_two_ranks_equals_one_rank)
    data = _tiny_npz(tmp_path / "d.npz", rng, task)
    cfg = dict(task="npz", data=data, test_fraction=0.2, dtype=dtype, hidden_size=5,
               num_layers=2, bidirectional=True, dropout=0.3, pooling="mean", batch_size=11,
               epochs=1, seed=int(rng.integers(0, 1000)), conv_channels=0)
    t = Trainer(cfg, tmp_path / "run", quiet=True)
    try:
        idx = t.train_ds.lengths.argsort()[:11]           # any rows, in a fixed order
        _, loss, score, tokens = t._gradient(idx)
        whole = t.model.params.grad.copy()
        for size in (2, 3, 5):
            total, sums = np.zeros_like(whole), np.zeros(6)
            for r in range(size):
                _, s, said = share_gradient(t, idx, *rows(r, size, len(idx)))
                assert said is None
                total += t.model.params.grad
                sums += s
            assert np.linalg.norm(total - whole) <= tol * np.linalg.norm(whole), size
            assert sums[1] == score["count"] and sums[2] == score["correct"]
            assert sums[4] == tokens
            assert sums[0] / sums[1] == pytest.approx(loss, rel=tol)
    finally:
        t.run.release()


def test_launcher_environment_and_threads():
    assert _launch.launch_size({}) == 1 and _launch.launch_rank({}) == 0
    ompi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert (_launch.launch_size(ompi), _launch.launch_rank(ompi)) == (4, 3)
    assert _launch.launch_size({"PMI_SIZE": "3", "PMI_RANK": "1"}) == 3
    srun = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "PMIX_RANK": "5"}
    assert (_launch.launch_size(srun), _launch.launch_rank(srun)) == (8, 5)
    # a batch script's own Slurm variables do not make it a rank
    assert _launch.launch_size({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "0"}) == 1
    # bound to one core: one thread; unbound: the machine's cores split over its ranks
    assert _launch.threads_per_rank(2, allowed=1, cpus=16) == 1
    assert _launch.threads_per_rank(4, allowed=16, cpus=16) == 4
    assert _launch.threads_per_rank(3, allowed=4, cpus=16) == 4
    assert _launch.threads_per_rank(8, allowed=2, cpus=2) == 1
    # _launch computes a rank's count; threads.configure (the one place that sets thread
    # counts) puts it in the environment the pools read
    env = dict(ompi)
    n = _launch.rank_threads(env, threads.usable_cores(), threads._machine_cores())
    threads.configure(env)
    assert n == _launch.threads_per_rank(2, threads.usable_cores(), threads._machine_cores())
    assert env["NUMBA_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == str(n)
    env = dict(ompi, NUMBA_NUM_THREADS="3")              # the user's choice is kept
    assert _launch.rank_threads(env) == 3
    threads.configure(env)
    assert env["NUMBA_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    env = {"NUMBA_NUM_THREADS": "7"}                     # not launched: nothing changes
    assert _launch.rank_threads(env) is None
    threads.configure(env)
    assert env["NUMBA_NUM_THREADS"] == "7" and "OPENBLAS_NUM_THREADS" not in env


def test_other_ranks_write_nothing_in_the_run_folder(tmp_path):
    run = NoRunDir(tmp_path / "run").acquire()
    run.write_config({"a": 1})
    run.append_metrics({"event": "epoch"})
    run.trim_metrics(0)
    run.remove_stale()
    run.release()
    assert not (tmp_path / "run").exists()
    assert run.last == str(tmp_path / "run" / "last.npz") and not run.holds_run()
    w = LocalWorld()
    assert (w.rank, w.size, w.bcast("x"), list(w.share(3)), w.rows(5)) == (0, 1, "x",
                                                                            [0, 1, 2], (0, 5))


def test_without_a_launcher_nothing_imports_mpi4py(tmp_path):
    code = ("import sys; import gruengine_cli.main, gruengine.train; "
            "from gruengine.distributed import world, LOCAL; assert world() is LOCAL; "
            "print('mpi4py' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=ROOT)
    for k in list(env):
        if k.startswith(("OMPI_", "PMI", "SLURM_")) or k == _launch.FORCE:
            env.pop(k)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr
    # launched (as the environment says) without the extra: one line naming it
    fake = tmp_path / "mpi4py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    env.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", OMPI_COMM_WORLD_SIZE="2")
    p = subprocess.run([sys.executable, "-m", "gruengine_cli.main", "train", "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 2 and p.stderr == (
        "error: running as one of 2 MPI ranks needs the package 'mpi4py', which is not "
        "installed: pip install 'gruengine[mpi]'\n"), p.stderr


# ---------------------------------------------------------------------- under mpiexec

def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("the [mpi] extra is not installed (pip install -e '.[mpi]'): no mpi4py")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("the [mpi] extra is not installed (pip install -e '.[mpi]'): no mpiexec")
    return exe


def _env():
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=ROOT)
    env.pop("NUMBA_NUM_THREADS", None)       # each rank's count comes from its share of cores
    env.pop("OPENBLAS_NUM_THREADS", None)
    return env


def _launch_cmd(*args, n=2):
    return [_mpiexec(), "--oversubscribe", "-n", str(n), *args]


def _run(cmd, timeout=300, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(),
                       cwd=ROOT, **kw)
    return p


def _gruengine():
    return [sys.executable, "-m", "gruengine_cli.main"]


CASES = {
    # regress; 50 training rows in batches of 7: the last batch has 1 row (rank 1 gets none),
    # 7 rows split 4 + 3; dropout on the input, between two layers and before the head
    "regress": dict(task="adding", seq_len=10, n_train=56, n_test=16, hidden_size=6,
                    num_layers=2, bidirectional=True, pooling="mean", dropout=0.25,
                    batch_size=7, epochs=2, lr=1e-2, clip=0.5, warmup=2, eval_batch_size=8,
                    seed=3),
    # tag with variable lengths (the loss divides by valid steps), float64, LSTM
    "tag": dict(task="npz", test_fraction=0.2, dtype="float64", cell="lstm", hidden_size=5,
                num_layers=2, dropout=0.2, batch_size=5, epochs=2, lr=1e-2, eval_batch_size=8,
                seed=5),
    # token classifier from a text file, minGRU, max pooling
    "text": dict(task="text", test_fraction=0.25, cell="mingru", embed_dim=6, hidden_size=6,
                 pooling="max", dropout=0.1, vocab_size=50, batch_size=6, epochs=2, lr=1e-2,
                 eval_batch_size=8, seed=7),
    # UCR-like series: input scaling fitted on the training split, augmentation, a
    # batch-normalised front end with stride 2 (dropout masks drawn after it) and its skip
    "conv": dict(task="npz", test_fraction=0.2, conv_channels=6, conv_kernels=[5, 3],
                 conv_stride=2, conv_skip=True, series_norm=True, channel_norm=True,
                 augment=True, bidirectional=True, pooling="mean", hidden_size=5, dropout=0.2,
                 batch_size=7, epochs=2, lr=1e-2, eval_batch_size=8, seed=11),
}
TOL = {"float32": 1e-6, "float64": 1e-12}
STOP_1RANK, STOP_2RANK = 10, 11     # steps after which the stopped runs were signalled


def _write_data(d, rng):
    _tiny_npz(d / "tag.npz", rng, "tag", n=45)
    words = ["good", "bad", "film", "plot", "great", "awful", "fine", "dull", "fun", "long"]
    with open(d / "reviews.tsv", "w") as f:
        for i in range(60):
            label = ("pos", "neg")[i % 2]
            f.write(f"{label}\t{' '.join(rng.choice(words, int(rng.integers(2, 12))))}\n")
    with open(d / "texts.txt", "w") as f:      # more than one 256-text batch: 3 batches
        for i in range(600):
            f.write(" ".join(rng.choice(words + ["unseen"], int(rng.integers(1, 15)))) + "\n")
    X = rng.standard_normal((52, 24, 2)).astype(np.float32) * 3 + 1
    lengths = rng.integers(8, 25, 52)
    y = (X[:, :8, 0].mean(axis=1) > 1).astype(np.int64) + (X[:, :8, 1].mean(axis=1) > 1)
    np.savez(d / "series.npz", X=X, y=y, lengths=lengths)
    X = rng.standard_normal((1400, 24, 2)).astype(np.float32) * 3 + 1     # test split: 280
    np.savez(d / "series_more.npz", X=X, y=rng.integers(0, 3, 1400),
             lengths=rng.integers(8, 25, 1400))
    CASES["conv"]["data"] = str(d / "series.npz")
    CASES["tag"]["data"] = str(d / "tag.npz")
    CASES["text"]["data"] = str(d / "reviews.tsv")


def _sigterm_self_after(k):
    def hook(trainer, info):
        if info["step"] == k:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The training runs the MPI tests compare: 1-rank runs here, 2-rank runs launched."""
    _mpiexec()
    d = tmp_path_factory.mktemp("mpi")
    _write_data(d, np.random.default_rng(20240917))
    for name, cfg in CASES.items():
        Trainer(cfg, d / f"{name}.1", quiet=True).fit()
    with pytest.raises(KeyboardInterrupt):      # a 1-rank run stopped, resumed by 2 ranks
        Trainer(CASES["regress"], d / "stop.1", quiet=True,
                hooks={"step": _sigterm_self_after(STOP_1RANK)}).fit()
    spec = {"report": str(d / "report.json"), "cases": [
        *({"out": str(d / f"{name}.2"), "config": cfg} for name, cfg in CASES.items()),
        {"out": str(d / "stop.2"), "config": CASES["regress"], "stop_at": STOP_2RANK},
        {"out": str(d / "stop.1"), "resume": True},
        # a 60 us budget (spent by any first epoch, even on a quiet machine), rank 1's clock
        # 1e6 s behind: rank 0's clock decides for both
        {"out": str(d / "budget.2"), "config": dict(CASES["regress"], epochs=5,
                                                    time_budget=1e-6), "clock_skew": 1e6}]}
    (d / "spec.json").write_text(json.dumps(spec))
    t0 = time.perf_counter()
    p = _run(_launch_cmd(sys.executable, HELPER, "train", str(d / "spec.json")))
    assert p.returncode == 0, p.stdout + p.stderr
    out = {"dir": d, "report": json.loads((d / "report.json").read_text()),
           "launch_s": time.perf_counter() - t0}
    # the run stopped under 2 ranks: a copy resumed by 1 rank here, the original by 2 ranks
    shutil.copytree(d / "stop.2", d / "stop.2to1")
    Trainer.resume(d / "stop.2to1", quiet=True).fit()
    p = _run(_launch_cmd(*_gruengine(), "train", "--resume", str(d / "stop.2"), "--quiet"))
    assert p.returncode == 0, p.stdout + p.stderr
    out["resume_stdout"] = p.stdout
    return out


def _state(path):
    arrays, _ = ckpt.load_checkpoint(path)
    return {k: v for k, v in arrays.items() if not k.startswith("rng/")}


def _assert_close(a, b, tol, what):
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        assert np.linalg.norm(x - y) <= tol * max(np.linalg.norm(y), 1e-30), (what, k)


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_train_like_one_rank(runs, name):
    d = runs["dir"]
    one, two = d / f"{name}.1" / "last.npz", d / f"{name}.2" / "last.npz"
    _, meta1 = ckpt.load_checkpoint(one)
    _, meta2 = ckpt.load_checkpoint(two)
    assert meta1["progress"]["step"] == meta2["progress"]["step"] > 0
    _assert_close(_state(two), _state(one), TOL[CASES[name].get("dtype", "float32")], name)
    # both ranks hold the same bits after every epoch, without any correction
    r0 = np.load(d / f"{name}.2.ranks" / "rank0.npz")
    r1 = np.load(d / f"{name}.2.ranks" / "rank1.npz")
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
    assert runs["report"]["resyncs"] == 0 and runs["report"]["size"] == 2
    # the metrics the ranks reduced are one process's, up to the order of additions
    m1 = [json.loads(x) for x in open(d / f"{name}.1" / "metrics.jsonl")]
    m2 = [json.loads(x) for x in open(d / f"{name}.2" / "metrics.jsonl")]
    assert [r["event"] for r in m1] == [r["event"] for r in m2]
    for r1, r2 in zip(m1, m2):
        for k in r1:
            if k.endswith(("loss", "mse", "acc")):
                assert r2[k] == pytest.approx(r1[k], rel=1e-5, abs=1e-7), (name, k)


def test_time_budget_stops_every_rank_after_the_same_step(runs):
    # rank 1's clock says no time has passed; without rank 0 deciding, rank 0 would stop
    # after epoch 1 and rank 1 wait in the next step's allreduce (the launch would hang)
    d = runs["dir"]
    steps = runs["report"]["steps"][str(d / "budget.2")]
    _, meta = ckpt.load_checkpoint(d / "budget.2" / "last.npz")
    p = meta["progress"]
    assert steps[0] == steps[1] == p["step"] == p["batches_per_epoch"] and p["epoch"] == 1
    assert meta["train_config"]["epochs"] == 5      # stopped by the clock, not the plan
    events = [json.loads(x)["event"] for x in open(d / "budget.2" / "metrics.jsonl")]
    assert events == ["epoch", "test"]


def test_threads_per_rank_follow_the_cores(runs):
    for t in runs["report"]["threads"]:
        expect = _launch.threads_per_rank(t["ranks_here"], allowed=t["allowed"])
        assert t["numba"] == t["world"] == expect
        assert t["openblas"] == str(expect)


def test_sigterm_to_one_rank_stops_all_and_resumes_bit_identical(runs):
    d = runs["dir"]
    assert runs["report"]["stopped"][str(d / "stop.2")] == [signal.SIGTERM, STOP_2RANK]
    assert runs["report"]["stopped"][str(d / "regress.2")] is None
    # the stopped 2-rank run, resumed by 2 ranks from the command line: the same bits as
    # the uninterrupted 2-rank run, checkpoints and RNG states included
    a, _ = ckpt.load_checkpoint(d / "regress.2" / "last.npz")
    b, meta = ckpt.load_checkpoint(d / "stop.2" / "last.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert "test MSE" in runs["resume_stdout"]


def test_resume_across_rank_counts(runs):
    d = runs["dir"]
    # stopped by 1 rank, finished by 2; stopped by 2 ranks, finished by 1
    _assert_close(_state(d / "stop.1" / "last.npz"), _state(d / "regress.1" / "last.npz"),
                  TOL["float32"], "1 -> 2 ranks")
    _assert_close(_state(d / "stop.2to1" / "last.npz"), _state(d / "regress.2" / "last.npz"),
                  TOL["float32"], "2 -> 1 rank")
    _, meta = ckpt.load_checkpoint(d / "stop.1" / "last.npz")
    assert meta["progress"]["step"] == 16


def _children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid):
    # a zombie has ended (where no init process reaps orphans, its entry stays)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _rank_pid(launcher_pid, rank):
    for pid in _children(launcher_pid):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return pid
    return None


def test_sigkill_of_one_rank_ends_the_job_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "k"
    cmd = _launch_cmd(*_gruengine(), "train", "--task", "adding", "--seq-len", "10",
                      "--n-train", "3000", "--n-test", "40", "--hidden-size", "8",
                      "--batch-size", "16", "--epochs", "200", "--out", str(out), "--quiet")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.npz").exists():      # the first epoch's checkpoint
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.2)
        victim = _rank_pid(p.pid, 1)
        assert victim is not None, "rank 1 not found among mpiexec's children"
        ranks = _children(p.pid)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = p.communicate(timeout=30)
        ended = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    print(f"every rank ended {ended:.2f} s after SIGKILL of rank 1")
    assert p.returncode != 0 and ended < 10, (p.returncode, ended, err)
    assert not [r for r in ranks if _alive(r)]
    arrays, meta = ckpt.load_checkpoint(out / "last.npz")
    check_run_meta(meta, str(out / "last.npz"))
    assert meta["progress"]["epoch"] >= 1
    t = Trainer.resume(out, quiet=True)      # the lock died with rank 0: resumable here
    t.run.release()


def test_sigusr1_to_mpiexec_stops_every_rank_with_a_checkpoint(tmp_path):
    # mpiexec forwards SIGUSR1 to every rank and lets the job go on; SIGTERM it turns into
    # SIGTERM then SIGKILL 0.25 s later (Open MPI's fixed sequence)
    out = tmp_path / "u"
    p = subprocess.Popen(_launch_cmd(*_gruengine(), "train", "--task", "adding", "--seq-len",
                                     "10", "--n-train", "3000", "--n-test", "40",
                                     "--hidden-size", "8", "--batch-size", "16", "--epochs",
                                     "200", "--out", str(out)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                         cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.npz").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.2)
        p.send_signal(signal.SIGUSR1)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGUSR1, err
    saved = [ln for ln in err.splitlines() if ln.startswith("interrupted: resumable checkpoint")]
    assert len(saved) == 1 and err.count("stopped (SIGUSR1)") == 1, err
    assert not [ln for ln in err.splitlines() if ln.startswith("error:")], err
    _, meta = ckpt.load_checkpoint(out / "last.npz")
    check_run_meta(meta, str(out / "last.npz"))
    p_ = meta["progress"]
    assert p_["step"] == p_["epoch"] * p_["batches_per_epoch"] + p_["batch"] > 0


def test_a_rank_that_raises_ends_every_rank_with_one_error_line(tmp_path):
    t0 = time.perf_counter()
    p = _run(_launch_cmd(sys.executable, HELPER, "fail", "train", "--task", "adding",
                         "--seq-len", "10", "--n-train", "400", "--n-test", "40",
                         "--hidden-size", "6", "--batch-size", "16", "--epochs", "3",
                         "--out", str(tmp_path / "f")))
    took = time.perf_counter() - t0
    print(f"launch, 3 steps, failure and abort: {took:.1f} s")
    assert p.returncode != 0, p.stderr
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("error:")]
    assert lines == ["error: rank 1: RuntimeError: injected failure at step 3"], p.stderr
    assert "test MSE" not in p.stdout and took < 120


def test_a_nan_on_one_rank_stops_every_rank_with_one_message(tmp_path):
    p = _run(_launch_cmd(sys.executable, HELPER, "nan", "train", "--task", "adding",
                         "--seq-len", "10", "--n-train", "400", "--n-test", "40",
                         "--hidden-size", "6", "--batch-size", "16", "--epochs", "3",
                         "--out", str(tmp_path / "n")))
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("error: training diverged: loss became nan at epoch 1, step 3 "
                               "(lr "), lines[0]
    assert not (tmp_path / "n" / "last.npz").exists()


def test_usage_errors_and_one_process_commands_print_once():
    for args, needle in ((["train", "--bogus"], "No such option '--bogus'"),
                         (["data", "info"], "gruengine data runs in one process")):
        p = _run(_launch_cmd(*_gruengine(), *args), timeout=120)
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr


def test_ranks_with_different_data_are_refused(tmp_path, rng):
    for name in ("a", "b"):
        X = rng.standard_normal((40, 6, 2)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", X=X, y=X.sum(axis=(1, 2)))
    common = ["train", "--hidden-size", "4", "--epochs", "1", "--out", str(tmp_path / "m")]
    p = _run([_mpiexec(), "--oversubscribe",
              "-n", "1", *_gruengine(), *common, "--data", str(tmp_path / "a.npz"), ":",
              "-n", "1", *_gruengine(), *common, "--data", str(tmp_path / "b.npz")])
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("error: rank 1's training data differs from rank 0's")
    assert not any((tmp_path / "m" / a).exists() for a in ARTEFACTS)


def test_sharded_predict_and_evaluate_equal_one_rank(runs):
    from gruengine_cli.main import app, _register
    _register()
    d, ckpt_path = runs["dir"], str(runs["dir"] / "text.1" / "best.npz")
    series = [str(d / "conv.1" / "best.npz"), "--data", str(d / "series_more.npz")]
    commands = [["predict", ckpt_path, "--file", str(d / "texts.txt")],
                ["predict", ckpt_path, "--file", str(d / "texts.txt"), "--json"],
                ["predict", *series],      # scaled series, front end: 2 batches of 256
                ["evaluate", ckpt_path, "--batch-size", "4", "--json", "--quiet"]]
    args = [a for c in commands for a in c + ["::"]][:-1]
    p = _run(_launch_cmd(sys.executable, HELPER, "infer", str(d / "infer"), *args))
    assert p.returncode == 0, p.stdout + p.stderr
    for i, c in enumerate(commands):
        one = CliRunner().invoke(app, c, catch_exceptions=False)
        assert one.exit_code == 0
        two = (d / f"infer.{i}").read_text()
        assert two.splitlines() == one.output.splitlines(), c
    assert len(two.splitlines()) == 1 and len(one.output.splitlines()) == 1
    assert len((d / "infer.0").read_text().splitlines()) == 600
    assert len((d / "infer.2").read_text().splitlines()) > 256      # both ranks had a batch


def test_an_ensemble_on_two_ranks_trains_like_one_process(runs, tmp_path):
    d = runs["dir"]
    args = ["train", "--data", str(d / "series.npz"), "--test-fraction", "0.2", "--ensemble",
            "2", "--steps", "6", "--hidden-size", "4", "--conv-channels", "4", "--quiet"]
    one = _run([*_gruengine(), *args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stdout + one.stderr
    two = _run(_launch_cmd(*_gruengine(), *args, "--out", str(tmp_path / "two")))
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("ensemble of 2: its members alone") == 1     # rank 0 says it
    _assert_close(_state(tmp_path / "two" / "best.npz"), _state(tmp_path / "one" / "best.npz"),
                  TOL["float32"], "ensemble")
    m1, m2 = ([json.loads(x) for x in open(tmp_path / w / "metrics.jsonl")][-1]
              for w in ("one", "two"))
    assert m2["test_acc"] == m1["test_acc"] and m2["test_loss"] == pytest.approx(m1["test_loss"])
    assert [m["test_acc"] for m in m2["members"]] == [m["test_acc"] for m in m1["members"]]
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
