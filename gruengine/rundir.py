"""The folder of one training run and the files in it.

    config.json     the resolved configuration (written at every start, sorted keys)
    metrics.jsonl   one JSON object per finished epoch, then one for the test set
    last.npz        the resumable checkpoint (kind 'gruengine-run')
    best.npz        the same at the epoch with the best validation metric
    .lock           held (``fcntl.flock``) by the one process writing the run; holds its pid

One run per folder: ``acquire`` takes the lock or refuses with the pid of the holder, and the
OS drops the lock when that process dies, however it dies. Files are replaced atomically
(a temporary ``.<name>.<random>.tmp`` renamed over them); temporaries a killed writer left
behind are removed by the next one.
"""
import fcntl
import json
import os
import re

from . import checkpoint as ckpt
from ._files import write_atomic
from .errors import CheckpointError

CONFIG, METRICS, LAST, BEST = "config.json", "metrics.jsonl", "last.npz", "best.npz"
LOCK = ".lock"
# what a run (or `gruengine plot`) writes: a folder holding any of them holds a run
ARTEFACTS = (CONFIG, METRICS, LAST, BEST, "curves.png")
RUN_KIND = "gruengine-run"
_STALE = re.compile(r"\.(?:%s)\..+\.tmp" % "|".join(re.escape(a) for a in ARTEFACTS))


class RunDir:
    """Paths, file I/O and the lock of a run folder ``path`` (created by ``acquire`` or
    ``write_config``)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = None         # the open .lock file while this process holds the run
        self._created = False     # whether acquire() made the folder

    # ------------------------------------------------------------------ one writer
    def acquire(self, what="out"):
        """Create the folder if needed and take its lock; ValueError naming the holder when
        another process has it (``what``: the argument that named the folder)."""
        if self._lock is not None:
            return self
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"{what}: {self.path} is a file, not a run folder"
                             + ("; choose another --out" if what == "out" else ""))
        self._created = not os.path.exists(self.path)
        os.makedirs(self.path, exist_ok=True)
        lock = self.file(LOCK)
        while True:
            f = open(lock, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read(64).strip()
                f.close()
                who = f"process {holder}" if holder.isdigit() else "another process"
                raise ValueError(f"{what}: the run folder {self.path} is in use by another "
                                 f"gruengine run ({who}); wait for it to finish"
                                 + (" or choose another --out" if what == "out" else "")) from None
            # a releaser may have unlinked the file between our open and our lock
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock))
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f
        return self

    def release(self):
        """Drop the lock (and the folder, when acquire made it and nothing was written)."""
        if self._lock is None:
            return
        try:
            os.unlink(self.file(LOCK))
            if self._created and not os.listdir(self.path):
                os.rmdir(self.path)
        except OSError:
            pass
        self._lock.close()
        self._lock = None

    @property
    def locked(self):
        return self._lock is not None

    def artefacts(self):
        """The run files present in the folder."""
        return [a for a in ARTEFACTS if os.path.exists(self.file(a))]

    def remove_artefacts(self):
        """Delete the run files (``--overwrite``); the caller holds the lock."""
        for a in self.artefacts():
            os.unlink(self.file(a))

    def remove_stale(self):
        """Delete the temporaries of writes that were killed half-way; the caller holds the
        lock, so no write of another process is under way."""
        if not os.path.isdir(self.path):
            return []
        gone = sorted(n for n in os.listdir(self.path) if _STALE.fullmatch(n))
        for n in gone:
            try:
                os.unlink(self.file(n))
            except FileNotFoundError:
                pass
        return gone

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def last(self):
        return self.file(LAST)

    @property
    def best(self):
        return self.file(BEST)

    def holds_run(self):
        """Whether a run has saved a checkpoint here (and so can be resumed)."""
        return os.path.exists(self.last)

    def write_config(self, config):
        os.makedirs(self.path, exist_ok=True)
        self._replace(CONFIG, json.dumps(config, indent=2, sort_keys=True))

    def append_metrics(self, record):
        path = self.file(METRICS)
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            if e.filename is not None:
                raise
            raise OSError(e.errno, f"{e.strerror or e} (appending to {METRICS})", path) from None

    def trim_metrics(self, epoch):
        """Keep only the epoch records up to ``epoch``: on resume, lines written after the
        checkpoint (a crash between the two) and the test record of an earlier finish go."""
        path = self.file(METRICS)
        if not os.path.exists(path):
            return
        keep = []
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if r.get("event") == "epoch" and r.get("epoch", 0) <= epoch:
                    keep.append(line if line.endswith("\n") else line + "\n")
        self._replace(METRICS, "".join(keep))

    def _replace(self, name, text):
        """Write ``text`` to ``name`` atomically (a reader or a crash sees old or new)."""
        write_atomic(self.file(name), text.encode("utf-8"), what=name)

    def load_last(self):
        """(arrays, meta) of last.npz; CheckpointError unless it is a training checkpoint."""
        arrays, meta = ckpt.load_checkpoint(self.last)
        if meta.get("kind") != RUN_KIND:
            raise CheckpointError(f"checkpoint {self.last}: not a training checkpoint (kind "
                                  f"{meta.get('kind')!r})")
        return arrays, meta


def read_metrics(run_dir):
    """The records of ``run_dir/metrics.jsonl`` as a list of dicts."""
    path = os.path.join(os.fspath(run_dir), METRICS)
    if not os.path.exists(path):
        raise ValueError(f"run_dir: {run_dir} has no metrics.jsonl (is it a run folder?)")
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{i}: not a JSON line") from None
    return out
