"""The folder of one training run and the files in it.

    config.json     the resolved configuration (written at every start, sorted keys)
    metrics.jsonl   one JSON object per finished epoch, then one for the test set
    last.npz        the resumable checkpoint (kind 'gruengine-run')
    best.npz        the same at the epoch with the best validation metric
"""
import json
import os

from . import checkpoint as ckpt
from .errors import CheckpointError

CONFIG, METRICS, LAST, BEST = "config.json", "metrics.jsonl", "last.npz", "best.npz"
RUN_KIND = "gruengine-run"


class RunDir:
    """Paths and file I/O of a run folder ``path`` (created by ``write_config``)."""

    def __init__(self, path):
        self.path = os.fspath(path)

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
        with open(self.file(CONFIG), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    def append_metrics(self, record):
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")

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
        with open(path, "w") as f:
            f.writelines(keep)

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
