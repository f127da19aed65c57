"""Several processes as one: synchronous data-parallel training and sharded inference on MPI
(mpi4py and an MPI library: the ``[mpi]`` extra).

    mpiexec -n 4 gruengine train --config imdb --data aclImdb_v1.tar.gz --out runs/imdb
    mpiexec -n 4 gruengine predict runs/imdb/best.npz --file reviews.txt

A *world* is the set of processes (ranks) that compute together. ``LOCAL`` is this process
alone: its methods are no-ops or the identity, so one process runs exactly the code it ran
before. ``world()`` is the MPI world when a launcher (mpiexec, srun) started this process
as one of several ranks, or ``GRUENGINE_MPI=1`` asks for it; only then is mpi4py imported.

N ranks compute what one process computes with the same global batch:

* rank 0 broadcasts the initial weights and optimizer state (on resume, the checkpoint it
  read), after every rank's configuration and data were found equal to rank 0's;
* every rank draws the same batch order from (seed, epoch) and takes a contiguous share of
  each global batch's rows (``shards.rows``: rank 0 the first ceil(B/N));
* a rank scales its gradient of its rows' mean loss by its share of the batch's count
  (examples, or valid steps for ``tag``), and one in-place SUM Allreduce of the flat
  gradient gives every rank the gradient of the global batch's mean loss; clipping and the
  update run on those identical numbers;
* dropout masks are the rows of the masks the global batch draws (``shards.RowWindow``),
  augmentation the rows of the global batch's, and a batch-normalised front end normalises
  with the global batch's statistics (``shards.BatchStatsSync``), so none depends on N; the
  loss, the metrics and the gradient differ from one process's only by the order of the
  floating-point additions;
* the plan and the input scaling are functions of the training data, which every rank
  loads whole; a time budget's decisions are rank 0's clock's (``time_budget``);
* rank 0 writes every file, the others wait; the ranks agree on stopping (``AgreedStops``)
  and on start-up errors (``agreed``), so either every rank ends the same way or the job is
  aborted (``abort``; an uncaught exception does it too).
"""
import contextlib
import hashlib
import json
import signal
import sys
import zlib

from . import _launch, arrays, threads
from .errors import CheckpointError, GruengineError, Interrupted, TrainingDivergedError
from .interrupts import StopRequests, signal_name
from .rundir import RunDir
from .shards import data_digest, rows, share_gradient

__all__ = ["world", "current_world", "LOCAL", "LocalWorld", "MPIWorld", "RankError",
           "describe"]


class RankError(GruengineError):
    """Another rank failed (the message names it); raised on every rank."""


def _every_rank(e):
    # the same error is raised on every rank: the command reports it once (rank 0)
    e.all_ranks = True
    return e


def describe(e, typed=False):
    """An exception as one line; with the type's name where the message alone would not say
    what went wrong (or always: ``typed``)."""
    if isinstance(e, OSError) and e.filename:
        msg = f"{e.strerror}: {e.filename}"
    else:
        msg = " ".join(str(e).split())
    if typed or not msg or isinstance(e, (LookupError, TypeError, AttributeError,
                                          AssertionError, NameError, ArithmeticError)):
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg


class LocalWorld:
    """This process alone: one rank; what each collective means with one rank."""

    rank, size, threads = 0, 1, None

    def agreed(self):
        """A block every rank runs; an error in it on any rank is raised on every rank."""
        return contextlib.nullcontext()

    def bcast(self, obj):
        return obj

    def bcast_arrays(self, arrs):
        """Give every rank rank 0's values of ``arrs`` (flat arrays, in place)."""

    def allreduce(self, a):
        """Sum ``a`` over the ranks, in place."""
        return a

    def max(self, value):
        return value

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere."""
        return [obj]

    def barrier(self):
        pass

    def share(self, n):
        """The items of ``n`` (evaluation batches) this rank computes: every size-th one."""
        return range(self.rank, n, self.size)

    def rows(self, n):
        """[lo, hi): this rank's contiguous share of ``n`` rows (``shards.rows``)."""
        return rows(self.rank, self.size, n)

    def run_dir(self, path):
        """The run folder: locked and written by rank 0 only."""
        return RunDir(path).acquire()

    def stop_requests(self, say):
        return StopRequests(say)

    def check_same(self, parts):
        """Refuse to go on when a rank's ``parts`` ({what: digest}) differ from rank 0's."""

    def abort(self, code):
        sys.exit(code)

    # training
    def start(self, trainer):
        """Before the first step: refuse disagreeing ranks, then share rank 0's state."""

    def share_resume(self, state, run_dir):
        """Rank 0's resume state (the checkpoint it read) on every rank."""
        return state

    def sync_replicas(self, model, opt):
        """Make sure every rank holds rank 0's weights and optimizer state."""
        return False

    def share_weights(self, model):
        """Give every rank rank 0's weights."""


LOCAL = LocalWorld()


class MPIWorld(LocalWorld):
    """The ranks of ``comm`` (mpi4py's COMM_WORLD); see the module docstring."""

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.ranks_here = node.Get_size()             # ranks on this machine
        node.Free()
        self.threads = threads.set_rank_threads(self.ranks_here)
        self.resyncs = 0                              # times sync_replicas found a difference
        _abort_on_uncaught(comm)

    @contextlib.contextmanager
    def agreed(self):
        err = None
        try:
            yield
        except Exception as e:    # noqa: BLE001 -- every kind: the others must hear of it
            err = e
        said = self.comm.allgather(None if err is None else describe(err))
        if all(m is None for m in said):
            return
        if said[0] is not None:   # rank 0 reports its own error; the others follow it
            if err is not None:
                raise _every_rank(err)
            raise _every_rank(RankError(said[0]))
        k = next(r for r, m in enumerate(said) if m is not None)
        raise _every_rank(RankError(f"rank {k}: {said[k]}")) from err

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def bcast_arrays(self, arrs):
        for a in arrs:
            host = arrays.to_host(a)
            self.comm.Bcast(host, root=0)
            if host is not a:
                arrays.assign(a, host)

    def allreduce(self, a):
        host = arrays.to_host(a)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        if host is not a:
            arrays.assign(a, host)
        return a

    def max(self, value):
        return self.comm.allreduce(value, op=self.MPI.MAX)

    def gather(self, obj):
        return self.comm.gather(obj, root=0)

    def barrier(self):
        self.comm.Barrier()

    def run_dir(self, path):
        return RunDir(path).acquire() if self.rank == 0 else NoRunDir(path)

    def stop_requests(self, say):
        return AgreedStops(say, self)

    def check_same(self, parts):
        every = self.comm.allgather(parts)
        for r, theirs in enumerate(every[1:], 1):
            for what, digest in every[0].items():
                if theirs.get(what) != digest:
                    raise _every_rank(RankError(
                        f"rank {r}'s {what} differs from rank 0's ({theirs.get(what)} vs "
                        f"{digest}); every rank must run the same command on the same data"))

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    # ------------------------------------------------------------------ training
    def start(self, trainer):
        from . import __version__
        config = {k: v for k, v in trainer.config.items() if k != "data"}   # paths may differ
        self.check_same({
            "gruengine version": __version__,
            "configuration": _digest(json.dumps(config, sort_keys=True, default=str).encode()),
            "training data": data_digest(trainer.train_ds, trainer.val_ds),
            "test data": data_digest(trainer.test_ds)})
        self.bcast_arrays(_state_buffers(trainer.model, trainer.opt))

    def share_resume(self, state, run_dir):
        if self.rank == 0:
            self.comm.bcast({k: v for k, v in state.items() if k != "run"}, root=0)
            return state
        return dict(self.comm.bcast(None, root=0), run=NoRunDir(run_dir))

    def sync_replicas(self, model, opt):
        # the summed gradients are the same bits on every rank (MPI_SUM of two values is
        # commutative), so this finds nothing unless an MPI library's reduction is not
        bufs = _state_buffers(model, opt)
        sums = [zlib.crc32(arrays.to_host(b).data) for b in bufs]
        differ = self.max(int(sums != self.bcast(sums)))
        if differ:
            self.bcast_arrays(bufs)
            self.resyncs += 1
        return bool(differ)

    def share_weights(self, model):
        self.bcast_arrays(_model_buffers(model))

    def gradient(self, trainer, idx):
        """The flat gradient of the global batch ``idx``'s mean loss on every rank, from this
        rank's rows of it -> (t0, loss, score, tokens) of the whole batch."""
        t0, sums, said = share_gradient(trainer, idx, *self.rows(len(idx)), self.allreduce)
        self.allreduce(sums)
        if sums[5]:              # every rank stops, with the first diverged rank's message
            said = next(m for m in self.comm.allgather(said) if m is not None)
            raise _every_rank(TrainingDivergedError(said))
        self.allreduce(trainer.model.params.grad)
        count = int(sums[1])
        score = ({"sq_err": float(sums[3]), "count": count}
                 if trainer.model.config.task == "regress"
                 else {"correct": int(sums[2]), "count": count})
        return t0, float(sums[0] / count), score, int(sums[4])


def _model_buffers(model):
    # the arrays a model's state lives in: the flat weights, then batch-norm running statistics
    fe = model.modules.get("frontend")
    return [model.params.data] + (list(fe.buffers.values()) if fe is not None else [])


def _state_buffers(model, opt):
    # the arrays a rank's training state lives in: the model's, then optimizer state
    return _model_buffers(model) + [a for seg in opt._segments for a in seg.state.values()]


def _digest(blob):
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _abort_on_uncaught(comm):
    # an uncaught exception on one rank would leave the others waiting in a collective (the
    # interpreter's exit waits in MPI_Finalize): print it as usual, then end every rank
    previous = sys.excepthook

    def hook(*exc_info):
        previous(*exc_info)
        sys.stderr.flush()
        comm.Abort(1)
    sys.excepthook = hook


class NoRunDir(RunDir):
    """The run folder as ranks other than 0 see it: its paths (for messages), no lock and no
    files; rank 0 writes them all (the folder may be on another machine)."""

    def acquire(self, what="out"):
        return self

    def release(self):
        pass

    def artefacts(self):
        return []

    def remove_artefacts(self):
        pass

    def remove_stale(self):
        return []

    def holds_run(self):
        return False

    def write_config(self, config):
        pass

    def append_metrics(self, record):
        pass

    def trim_metrics(self, epoch):
        pass

    def _replace(self, name, text):
        pass

    def load_last(self):
        raise CheckpointError(f"checkpoint {self.last}: only rank 0 reads it")


class AgreedStops(StopRequests):
    """Stop requests every rank acts on together: a signal to any rank (SIGINT, SIGTERM, or
    SIGUSR1, which mpiexec forwards to every rank without ending the job) stops them all
    after the same step, since ``check`` is collective. A second signal changes nothing: a
    rank leaving at once would leave the others waiting in the allreduce."""

    def __init__(self, say, world):
        super().__init__(say)
        self.world = world

    def install(self):
        super().install()
        if self._old:
            self._old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._handler)
        return self

    def _handler(self, signum, frame):
        self.count += 1
        if self.count == 1:
            self.signum = signum
            self._notice(f"\n{signal_name(signum)}: every rank stops after this step")

    def check(self):
        signum = self.world.max(int(self.signum or 0))
        if signum:
            self.stopping = True
            self.signum = self.signum or signum
            raise _every_rank(Interrupted(signum))


_world = None


def world():
    """This process's world, created on first use: the MPI world when a launcher started it
    as one of several ranks (or GRUENGINE_MPI=1), else ``LOCAL``. Imports mpi4py only then."""
    global _world
    if _world is None:
        n = _launch.launch_size()
        if n > 1 or _launch.forced():
            from ._optional import require
            why = f"running as one of {n} MPI ranks" if n > 1 else f"{_launch.FORCE}=1"
            MPI = require("mpi4py.MPI", why, extra="mpi")
            comm = MPI.COMM_WORLD
            _world = MPIWorld(comm, MPI) if comm.Get_size() > 1 else LOCAL
        else:
            _world = LOCAL
    return _world


def current_world():
    """The world ``world()`` created, or None when no command asked for one yet."""
    return _world
