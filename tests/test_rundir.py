"""RunDir: the run folder's files (config.json, metrics.jsonl trimmed on resume, the kind of
last.npz) and read_metrics' one-line errors."""
import json

import numpy as np
import pytest

from gruengine import checkpoint as ckpt
from gruengine.errors import CheckpointError
from gruengine.rundir import RunDir, read_metrics


def test_config_and_metrics_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    run = RunDir(tmp_path / "a" / "b")                 # created on the first write
    config = {k: float(rng.random()) for k in ("lr", "dropout", "clip")}
    run.write_config(config)
    assert json.load(open(tmp_path / "a" / "b" / "config.json")) == config
    text = open(tmp_path / "a" / "b" / "config.json").read()
    assert text.index('"clip"') < text.index('"dropout"') < text.index('"lr"')   # sorted keys
    records = [{"event": "epoch", "epoch": e, "train_loss": float(rng.random())}
               for e in range(1, 5)] + [{"event": "test", "epoch": 2, "test_loss": 0.5}]
    for r in records:
        run.append_metrics(r)
    assert read_metrics(tmp_path / "a" / "b") == records
    assert not run.holds_run() and run.last == str(tmp_path / "a" / "b" / "last.npz")


def test_trim_keeps_the_epochs_up_to_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    records = [{"event": "epoch", "epoch": e, "x": e / 3} for e in range(1, 6)]
    records.insert(3, {"event": "test", "epoch": 2})
    lines = [json.dumps(r) + "\n" for r in records] + ['{"event": "epoch", "epo']   # torn write
    (tmp_path / "metrics.jsonl").write_text("".join(lines))
    run.trim_metrics(3)
    assert read_metrics(tmp_path) == [r for r in records
                                      if r["event"] == "epoch" and r["epoch"] <= 3]
    run.trim_metrics(0)
    assert read_metrics(tmp_path) == []
    RunDir(tmp_path / "nothing").trim_metrics(2)         # no metrics yet: nothing to do


def test_read_metrics_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="has no metrics.jsonl"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(tmp_path)


def test_load_last_accepts_only_training_checkpoints(tmp_path):
    run = RunDir(tmp_path)
    a = {"model/w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    ckpt.save_checkpoint(run.last, a, {"kind": "something-else"})
    assert run.holds_run()
    with pytest.raises(CheckpointError, match="not a training checkpoint .kind 'something-else'"):
        run.load_last()
    ckpt.save_checkpoint(run.last, a, {"kind": "gruengine-run", "progress": {"epoch": 1}})
    arrays, meta = run.load_last()
    np.testing.assert_array_equal(arrays["model/w"], a["model/w"])
    assert meta["progress"] == {"epoch": 1}
