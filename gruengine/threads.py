"""How the engine uses the cores: one pool of threads, Numba's, sized from the cores this
process may use.

Every product of the recurrent cells runs on the engine's own GEMM inside Numba's parallel
regions (``kernels/cpu``), so the engine never wakes a BLAS thread pool: two pools spinning
against each other on the same cores was what made a training step collapse on a busy
machine (docs/benchmarks.md). What is set here, each only when the user has not set it:

* ``NUMBA_NUM_THREADS``: the cores this process may use: its CPU affinity (``taskset``,
  container cpusets) and, on Linux, its cgroup CPU quota (``docker --cpus``), which Numba's
  own default ignores;
* ``OMP_WAIT_POLICY=PASSIVE``: Numba's OpenMP workers sleep as soon as a parallel region ends.
  libgomp's default keeps them spinning for milliseconds, which burns the CPU time other
  processes on the machine need (and a thread that spun gets scheduled later when it is
  needed again: on a loaded 2-core machine a parallel region after 10 ms idle took 9.5 ms with
  the default, 37 us passive). The engine runs few, long regions, so waking costs nothing;
* ``OPENBLAS_THREAD_TIMEOUT=20``: if BLAS does run (a user's NumPy code between steps), its idle
  workers spin 2**20 cycles (~0.4 ms) instead of 2**28 (~0.1 s) before they sleep.

And one memory setting, for the same reason (time the kernel spends instead of the engine):
glibc's malloc gives every block above its mmap threshold (at most 32 MB by default) back to
the OS when it is freed, so each training step's large activation arrays page-fault in again.
Measured on the IMDB step (B=64, T=400, bidirectional, 2-core EPYC): 1,100 minor faults and
9-15 ms of system time per ~230 ms step with NumPy's huge pages (25,000 faults and 45 ms
without); with the mmap and trim thresholds at 1 GiB (``mallopt``), 129 faults and under 1 ms.
The freed arrays then stay in the process's heap for the next step. Skipped when the user set
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``, and off glibc.

The variables are read when the pools load, so ``configure()`` runs when ``gruengine`` is
imported: it sets them, starts the pools, and restores the environment (a later library or a
child process sees the user's). ``set_num_threads`` changes the count later.

One of several MPI ranks (``gruengine._launch`` reads the launcher's environment and computes
the count): each rank gets its share of the machine's cores, ``NUMBA_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` both, unless the user set ``NUMBA_NUM_THREADS``. These two stay in
the environment, so that a library or child process of a rank keeps to the rank's share
instead of taking every core once per rank. When the launcher does not say how many ranks
share the machine, ``gruengine.distributed`` asks MPI and calls ``set_rank_threads``.
"""
import ctypes
import math
import os
import sys

from . import _launch

__all__ = ["usable_cores", "configure", "set_num_threads", "set_rank_threads", "get_num_threads",
           "describe", "busy_note"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameters
_HEAP_KEEP = 1 << 30
_RANK_VARS = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_user_threads = False      # whether the user set NUMBA_NUM_THREADS (configure records it)


def _cgroup_cpus():
    # the cgroup v2 (or v1) CPU quota in cores, or None when there is none
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def usable_cores():
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _machine_cores():
    # the machine's cores as ranks on it share them: capped by a cgroup CPU quota
    n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(n, math.ceil(quota))) if quota is not None else n


def configure(environ=None):
    """Set the thread-pool defaults above where the user has not set them; returns the names
    it set. With ``environ`` (a dict) it only fills that dict. Without, it sets them in
    ``os.environ``, loads NumPy's BLAS and starts Numba's pool so that they read them, then
    puts ``os.environ`` back as it was: the settings hold for the engine's pools, and a library
    loaded later (PyTorch's OpenMP, say) or a child process sees the user's environment."""
    global _user_threads
    env = os.environ if environ is None else environ
    per_rank = _launch.rank_threads(env, usable_cores(), _machine_cores())
    wanted = {"NUMBA_NUM_THREADS": str(per_rank or usable_cores()), "OMP_WAIT_POLICY": "PASSIVE"}
    if per_rank is not None:
        wanted["OPENBLAS_NUM_THREADS"] = str(per_rank)
    if "numpy" not in sys.modules:      # OpenBLAS reads it when NumPy loads it
        wanted["OPENBLAS_THREAD_TIMEOUT"] = "20"
    if "numba" in sys.modules and environ is None:   # too late for the pool size
        wanted.pop("NUMBA_NUM_THREADS")
    if environ is None:
        _user_threads = "NUMBA_NUM_THREADS" in env
    done = [k for k in wanted if k not in env]
    for k in done:
        env[k] = wanted[k]
    if environ is not None:
        return done
    kept = _RANK_VARS if per_rank is not None else ()     # a rank's share (docstring)
    try:
        import numpy  # noqa: F401  (OpenBLAS reads its variables as it loads)
        from numba.np.ufunc import parallel
        parallel._launch_threads()      # the OpenMP runtime reads OMP_* as it loads
    except Exception:                   # no threading layer here: Numba runs serially
        pass
    finally:
        for k in done:
            if k not in kept:
                del env[k]
    if _keep_large_arrays_in_heap(env):
        done.append("mallopt")
    return done


def _keep_large_arrays_in_heap(env):
    # raise glibc's mmap and trim thresholds (see the module docstring); False when skipped
    if sys.platform != "linux" or any(k in env for k in (
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_HEAP_KEEP))
                    and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_HEAP_KEEP)))
    except (OSError, AttributeError):
        return False


def set_num_threads(n):
    """Threads of the engine's parallel regions (at most the pool size, NUMBA_NUM_THREADS)."""
    import numba
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"n: expected an integer in [1, {numba.config.NUMBA_NUM_THREADS}], "
                         f"got {n!r}")
    numba.set_num_threads(n)


def set_rank_threads(ranks_here):
    """Threads of one of ``ranks_here`` MPI ranks on this machine: its share of the cores
    (``_launch.threads_per_rank``), unless the user set NUMBA_NUM_THREADS. Returns the count."""
    import numba
    if not _user_threads:
        numba.set_num_threads(min(_launch.threads_per_rank(ranks_here, usable_cores(),
                                                           _machine_cores()),
                                  numba.config.NUMBA_NUM_THREADS))
    return numba.get_num_threads()


def get_num_threads():
    """Threads of the engine's parallel regions."""
    import numba
    return numba.get_num_threads()


def busy_note(threads=None):
    """A one-line warning when the machine's load average exceeds its cores (other processes
    compete for them, and every step slows down by about that share), else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = os.cpu_count() or 1
    if load <= cpus + 0.5:
        return None
    threads = get_num_threads() if threads is None else threads
    return (f"the machine is busy: load average {load:.1f} on {cpus} CPUs; the engine's "
            f"{threads} threads get about {min(1.0, cpus / load):.0%} of their cores, "
            f"so steps run slower than on a quiet machine")


def describe():
    """One line: threads, threading layer, usable cores, and the busy note if any."""
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:              # no parallel region has run yet
        layer = numba.config.THREADING_LAYER
    line = (f"{get_num_threads()} threads (Numba, {layer} layer, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
            f"{usable_cores()} usable cores")
    note = busy_note()
    return line + (f"; {note}" if note else "")
