"""Whether this process is one rank of an MPI launch, read from the launcher's environment
(nothing imports MPI here), and how many threads each rank computes with.

Only the numbers: ``gruengine.threads`` (which owns the thread pools) asks ``rank_threads``
when ``gruengine`` is imported, before NumPy and Numba load, so this module imports only
``os``.
"""
import os

# world size, rank and ranks on this machine as the launchers export them: Open MPI's
# mpiexec, MPICH / Intel MPI (Hydra), Slurm's srun with a PMI plugin (--mpi=pmix or pmi2)
_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_RANK = ("OMPI_COMM_WORLD_RANK", "PMI_RANK")
_LOCAL_SIZE = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
_SLURM_SIZE, _SLURM_RANK = "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"
FORCE = "GRUENGINE_MPI"          # "1": use MPI even where no launcher variable is set


def _int(env, names):
    for name in names:
        v = env.get(name, "")
        if v.strip().isdigit():
            return int(v)
    return None


def _under_srun(env):
    # srun sets SLURM_PROCID for every task step; PMIX_RANK / PMI_RANK mean an MPI plugin is
    # wired up (a batch script's own SLURM_* variables alone do not make it a rank)
    return _SLURM_RANK in env and ("PMIX_RANK" in env or "PMI_RANK" in env)


def _from_launcher(env, names, slurm_name):
    """The first integer among ``names`` in ``env`` (``os.environ`` when None), or under srun
    ``slurm_name``'s; None when the launcher set none."""
    env = os.environ if env is None else env
    v = _int(env, names)
    if v is None and _under_srun(env):
        v = _int(env, (slurm_name,))
    return v


def launch_size(env=None):
    """Number of ranks the launcher started (1 when not launched, or launched alone)."""
    return _from_launcher(env, _SIZE, _SLURM_SIZE) or 1


def launch_rank(env=None):
    """This process's rank as the launcher exported it (0 when not launched)."""
    return _from_launcher(env, _RANK, _SLURM_RANK) or 0


def forced(env=None):
    env = os.environ if env is None else env
    return env.get(FORCE, "").strip() == "1"


def threads_per_rank(ranks_here, allowed=None, cpus=None):
    """Threads for one of ``ranks_here`` ranks on a machine of ``cpus`` cores, when this rank
    may run on ``allowed`` cores: its share of the machine, never more than it may use
    (a rank bound to one core gets one thread; unbound ranks split the cores)."""
    allowed = len(os.sched_getaffinity(0)) if allowed is None else allowed
    cpus = (os.cpu_count() or allowed) if cpus is None else cpus
    return max(1, min(allowed, cpus // max(1, ranks_here)))


def rank_threads(env, allowed=None, cpus=None):
    """Threads for this process when ``env`` says a launcher started it as one of several
    ranks: NUMBA_NUM_THREADS where the user set it, else its share of the machine
    (``threads_per_rank`` with the ranks on this machine). None when not launched, or when
    the launcher does not say how many ranks share this machine (``distributed`` then asks
    MPI)."""
    if launch_size(env) <= 1:
        return None
    n = _int(env, ("NUMBA_NUM_THREADS",))
    if n is None:
        here = _int(env, _LOCAL_SIZE)
        if here is None:
            return None
        n = threads_per_rank(here, allowed, cpus)
    return n
