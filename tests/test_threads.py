"""gruengine.threads: the pool size follows the usable cores, explicit settings win, and the
engine's training step wakes no BLAS thread pool."""
import os
import subprocess
import sys

import pytest

from gruengine import threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_usable_cores_is_within_the_affinity():
    n = threads.usable_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else n >= 1


def test_configure_sets_only_what_the_user_left_unset():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    done = threads.configure(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and "OMP_WAIT_POLICY" not in done
    assert set(done) <= {"NUMBA_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT"}
    if "NUMBA_NUM_THREADS" in done:
        assert env["NUMBA_NUM_THREADS"] == str(threads.usable_cores())
    assert threads.configure(env) == []
    env = {}
    assert "OMP_WAIT_POLICY" in threads.configure(env) and env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_a_fresh_process_gets_the_pool_sized_from_its_affinity():
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs CPU affinity control and two cores")
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "import gruengine, numba; "
            "print(numba.config.NUMBA_NUM_THREADS, os.environ.get('OMP_WAIT_POLICY', '-'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_NUM_THREADS", "OMP_WAIT_POLICY")}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # the pool has one thread; the environment is the user's again after the import
    assert r.stdout.split() == ["1", "-"]
    # an explicit setting wins
    env["NUMBA_NUM_THREADS"] = "2"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.stdout.split()[0] == "2"


def test_idle_workers_sleep_unless_the_user_asks_for_spinning():
    # after a parallel region the engine's pool burns no CPU while the program waits
    # (OMP_WAIT_POLICY=PASSIVE by default); a user's OMP_WAIT_POLICY=ACTIVE is respected
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    code = r"""
import time, numpy as np, gruengine
from gruengine.layers import dropout_mask
rng = np.random.default_rng(0)
dropout_mask((1000,), 0.5, rng, np.float32)          # one parallel region: the pool is up
c0 = time.process_time()
for _ in range(4):
    dropout_mask((1000,), 0.5, rng, np.float32)
    time.sleep(0.1)
print(time.process_time() - c0)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["NUMBA_NUM_THREADS"] = "2"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 0.1
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert float(r.stdout.split()[-1]) > 0.1


def test_set_num_threads_checks_its_argument():
    n = threads.get_num_threads()
    with pytest.raises(ValueError, match="n: expected an integer"):
        threads.set_num_threads(0)
    with pytest.raises(ValueError, match="n: expected an integer"):
        threads.set_num_threads(1.5)
    threads.set_num_threads(1)
    assert threads.get_num_threads() == 1
    threads.set_num_threads(n)


def test_a_training_step_wakes_no_blas_thread():
    # every product of the CPU step runs on the engine's GEMM: the threads OpenBLAS starts
    # when NumPy loads never get work (they would spin, and burn CPU time, after each call).
    # The control at the end shows the measure works: one big NumPy product wakes them.
    code = r"""
import os, numpy as np
def cpu_of(tids):
    total = 0
    for t in tids:
        with open(f"/proc/self/task/{t}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])        # utime + stime, in clock ticks
    return total
blas = set(os.listdir("/proc/self/task")) - {str(os.getpid())}   # OpenBLAS's workers
import gruengine
from gruengine.models import SequenceModel
before = cpu_of(blas)           # (importing may use BLAS: only the steps are checked)
m = SequenceModel(dict(task="classify", num_outputs=2, input="tokens", vocab_size=3000,
                       embed_dim=64, hidden_size=96, bidirectional=True, pooling="max", seed=0))
opt = gruengine.AdamW(m.params, lr=1e-3)
ids = np.random.default_rng(0).integers(1, 3000, (64, 100))
lengths = np.full(64, 100)
y = np.zeros(64, np.int64)
for _ in range(5):
    m.params.zero_grad()
    out = m.forward(ids, lengths)
    loss, d = m.loss_and_grad(out, y, lengths)
    m.backward(d)
    opt.step(max_norm=1.0)
during = cpu_of(blas) - before
a = np.ones((1500, 1500))
for _ in range(4):
    a @ a
print(len(blas), during, cpu_of(blas) - before - during)
"""
    if not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs /proc and two CPUs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS")}
    env["OPENBLAS_NUM_THREADS"] = "2"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    workers, during, control = map(int, r.stdout.split()[-3:])
    if workers == 0:
        pytest.skip("this NumPy's BLAS starts no worker threads")
    assert during == 0
    assert control > 0


def test_large_arrays_are_reused_without_page_faults():
    # after `import gruengine`, a freed 64 MB array stays in the heap: allocating and
    # touching it again costs no page faults (glibc's default maps and unmaps it each time)
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt")
    code = r"""
import resource, numpy as np, gruengine
def faults(n=6):
    a = np.ones(1 << 24, np.float32); del a
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = np.ones(1 << 24, np.float32); del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
print(faults())
"""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) < 100
    # a user's own malloc setting is left alone (here: map every block, fault every time)
    env["MALLOC_MMAP_THRESHOLD_"] = "0"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert int(r.stdout.split()[-1]) > 100
