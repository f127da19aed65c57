"""The training loop: data, batching, schedule, evaluation, early stopping, checkpoints, metrics.

    from gruengine.train import train
    summary = train({"task": "adding", "seq_len": 50, "epochs": 5}, "runs/adding")
    summary = train(None, "runs/adding", resume=True)      # continue a stopped run

A run folder holds ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one JSON
object per epoch, then one for the test set), ``last.npz`` (resumable) and ``best.npz`` (the
weights with the best validation metric). The batch order is a function of (seed, epoch) and
the dropout generators are reseeded from (seed, epoch, batch), so a run stopped at any batch
and resumed ends with bit-identical weights to an uninterrupted run on the same machine.
"""
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from . import checkpoint as ckpt
from ._checks import check_positive_int
from .errors import CheckpointError, TrainingDivergedError
from .models import ModelConfig, SequenceModel, CELLS, POOLINGS
from .progress import Progress
from .schedule import Schedule, SCHEDULES

DATASETS = ("adding", "copy", "imdb", "npz", "text", "ucr")
OPTIMIZERS = ("adam", "adamw", "sgd")

# Every key a run configuration may hold, with its default (None = the loader's default).
DEFAULTS = {
    # data
    "task": "adding", "data": None, "seq_len": None, "n_train": None, "n_test": None,
    "max_len": None, "vocab_size": 20000, "min_count": 1, "truncate": "head",
    "val_fraction": 0.1,
    # model
    "cell": "gru", "hidden_size": 64, "num_layers": 1, "bidirectional": False, "dropout": 0.0,
    "pooling": "last", "embed_dim": 128, "input_proj": 0, "reset_after": True,
    # optimisation
    "epochs": 10, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.0, "optimizer": "adamw",
    "clip": 1.0, "schedule": "cosine", "warmup": 0, "patience": 3, "seed": 0,
    "device": "cpu", "dtype": "float32", "bucket": 50, "eval_batch_size": 256,
    # success criterion printed at the end: test MSE below it (regress) or accuracy above it
    "target": None,
}

# Defaults per dataset, under explicit settings: ``gruengine train`` with no options runs the
# embedded adding problem (T=50), which reaches test MSE < 0.01 in well under two minutes.
TASK_DEFAULTS = {
    "adding": {"seq_len": 50, "n_train": 8000, "n_test": 1000, "hidden_size": 64, "epochs": 6,
               "batch_size": 64, "lr": 5e-3, "warmup": 50, "target": 0.01},
}

HOOKS = ("loss", "step", "epoch")


# ---------------------------------------------------------------------------------- config
def resolve_config(config):
    """Fill a partial configuration with the task's defaults, then the global ones; validate."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config: unknown keys {unknown}; known keys are {sorted(DEFAULTS)}")
    task = config.get("task", DEFAULTS["task"])
    out = dict(DEFAULTS)
    out.update(TASK_DEFAULTS.get(task, {}))
    out.update({k: v for k, v in config.items()})
    validate_config(out)
    return out


def _num(name, v, lo, lo_open=False, integer=False, hi=None, hi_open=True):
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(v, bool) or not isinstance(v, ok_type) or (not integer and math.isnan(v)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: expected {kind} {'>' if lo_open else '>='} {lo}, got {v!r}")
    if (v <= lo) if lo_open else (v < lo):
        raise ValueError(f"{name}: expected a value {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and ((v >= hi) if hi_open else (v > hi)):
        raise ValueError(f"{name}: expected a value {'<' if hi_open else '<='} {hi}, got {v!r}")


def _choice(name, v, allowed):
    if v not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {v!r}")


def validate_config(c):
    """Raise ValueError naming the first bad hyperparameter (before any data is loaded)."""
    _choice("task", c["task"], DATASETS)
    _choice("cell", c["cell"], tuple(CELLS))
    _choice("pooling", c["pooling"], POOLINGS)
    _choice("optimizer", c["optimizer"], OPTIMIZERS)
    _choice("schedule", c["schedule"], SCHEDULES)
    _choice("truncate", c["truncate"], ("head", "tail"))
    for k in ("hidden_size", "num_layers", "embed_dim", "epochs", "batch_size", "bucket",
              "eval_batch_size", "min_count"):
        _num(k, c[k], 1, integer=True)
    for k in ("seq_len", "n_train", "n_test", "max_len"):
        if c[k] is not None:
            _num(k, c[k], 1, integer=True)
    _num("vocab_size", c["vocab_size"], 2, integer=True)
    for k in ("warmup", "patience", "seed", "input_proj"):
        _num(k, c[k], 0, integer=True)
    _num("lr", c["lr"], 0, lo_open=True)
    _num("weight_decay", c["weight_decay"], 0)
    _num("clip", c["clip"], 0)
    _num("dropout", c["dropout"], 0, hi=1)
    _num("val_fraction", c["val_fraction"], 0, hi=1)
    if c["target"] is not None:
        _num("target", c["target"], 0)
    for k in ("bidirectional", "reset_after"):
        if not isinstance(c[k], bool):
            raise ValueError(f"{k}: expected true or false, got {c[k]!r}")
    if c["data"] is not None and not isinstance(c["data"], str):
        raise ValueError(f"data: expected a path string, got {c['data']!r}")
    from ._checks import check_dtype
    from .backend import check_device
    check_dtype("dtype", c["dtype"])
    check_device(c["device"])


def data_config(c):
    """The arguments of ``load_dataset`` that a configuration implies (stored in checkpoints)."""
    return {"name": c["task"], "path": c["data"], "seed": c["seed"], "max_len": c["max_len"],
            "vocab_size": c["vocab_size"], "min_count": c["min_count"], "truncate": c["truncate"],
            "n_train": c["n_train"], "n_test": c["n_test"], "seq_len": c["seq_len"]}


def load_data(dcfg, vocab=None):
    """``load_dataset`` from a stored data configuration -> {'train': Dataset, 'test': Dataset}."""
    from .data import load_dataset
    d = dict(dcfg)
    name, path = d.pop("name"), d.pop("path")
    return load_dataset(name, path, vocab=vocab, **d)


def model_config(c, train_ds, test_ds=None):
    """A ``ModelConfig`` dict that fits the dataset and the run configuration."""
    x = train_ds.inputs
    if train_ds.task == "tag" and train_ds.targets.ndim != 2:
        raise ValueError("task: per-step regression targets (N, T, K) are not supported; "
                         "tag tasks need integer class ids (N, T)")
    if train_ds.task == "regress":
        num_outputs = int(train_ds.targets.shape[1])
    else:
        num_outputs = int(train_ds.num_classes)
    m = {"task": train_ds.task, "num_outputs": num_outputs, "cell": c["cell"],
         "hidden_size": c["hidden_size"], "num_layers": c["num_layers"],
         "bidirectional": c["bidirectional"], "dropout": float(c["dropout"]),
         "reset_after": c["reset_after"], "pooling": c["pooling"], "dtype": c["dtype"],
         "device": c["device"], "seed": c["seed"]}
    if x.ndim == 2:
        if train_ds.vocab is not None:
            vocab_size, pad = len(train_ds.vocab), 0
        else:  # synthetic token tasks: every id is a real symbol, no padding row
            hi = max(int(x.max()), int(test_ds.inputs.max()) if test_ds is not None else 0)
            vocab_size, pad = max(hi + 1, 2), None
        m.update(input="tokens", vocab_size=vocab_size, embed_dim=c["embed_dim"], padding_idx=pad)
    else:
        m.update(input="features", num_features=int(x.shape[2]), input_proj=c["input_proj"])
    return m


# ---------------------------------------------------------------------------------- batching
def epoch_batches(lengths, batch_size, seed, epoch, bucket=50):
    """Index arrays of the batches of one epoch, a function of (seed, epoch) only.

    Shuffle, sort each chunk of ``bucket`` batches by length (longest first) so a batch holds
    sequences of similar length, then shuffle the order of the batches.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, 11, epoch])
    perm = rng.permutation(n)
    chunk = batch_size * bucket
    batches = []
    for s in range(0, n, chunk):          # one iteration per chunk of batches
        idx = perm[s:s + chunk]
        idx = idx[np.argsort(-lengths[idx], kind="stable")]
        batches.extend(idx[i:i + batch_size] for i in range(0, len(idx), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def sorted_batches(lengths, batch_size):
    """Evaluation batches: by length, longest first (little padding, no randomness)."""
    idx = np.argsort(-lengths, kind="stable")
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


def make_batch(ds, idx, dtype):
    """Rows ``idx`` of ``ds`` trimmed to the batch's longest sequence."""
    lengths = np.ascontiguousarray(ds.lengths[idx])
    T = int(lengths.max())
    x = ds.inputs[idx, :T]
    if x.ndim == 3:
        x = x.astype(dtype, copy=False)
    y = ds.targets[idx]
    if ds.task == "tag":
        y = y[:, :T]
    return np.ascontiguousarray(x), lengths, np.ascontiguousarray(y)


def split_validation(ds, fraction, seed):
    """(train, val) carved from ``ds`` with the seed; val is None when fraction is 0."""
    n = len(ds)
    n_val = int(round(fraction * n))
    if fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    if n_val <= 0:
        return ds, None
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return ds.subset(np.sort(perm[n_val:])), ds.subset(np.sort(perm[:n_val]))


# ---------------------------------------------------------------------------------- evaluation
def evaluate(model, ds, batch_size=256, quiet=True, desc="eval", stream=None):
    """Loss and accuracy (classify/tag) or MSE (regress) of ``model`` on ``ds``.

    Returns {'loss': , 'acc': } or {'loss': , 'mse': }, plus 'n' (examples) and 'tokens'.
    """
    was_training = model.training
    model.eval()
    task = model.config.task
    loss_sum, weight_sum, sums, tokens = 0.0, 0, {}, 0
    batches = sorted_batches(ds.lengths, batch_size)
    t0 = time.perf_counter()
    bar = Progress(len(batches), desc=desc, enabled=not quiet, stream=stream)
    try:
        for idx in batches:
            x, L, y = make_batch(ds, idx, model.dtype)
            out = model.forward(x, L)
            loss, _ = model.loss_and_grad(out, y, L)
            s = model.score(out, y, L)
            loss_sum += float(loss) * s["count"]
            weight_sum += s["count"]
            for k, v in s.items():
                sums[k] = sums.get(k, 0) + v
            tokens += int(L.sum())
            bar.update(1, **_stats(task, loss_sum / max(weight_sum, 1), sums),
                       tok_s=tokens / max(time.perf_counter() - t0, 1e-9))
    finally:
        bar.close()
        if was_training:
            model.train()
    res = {"loss": loss_sum / max(weight_sum, 1), "n": len(ds), "tokens": tokens}
    res.update(_stats(task, None, sums))
    return res


def _stats(task, loss, sums):
    out = {} if loss is None else {"loss": loss}
    if not sums.get("count"):
        return out
    if task == "regress":
        out["mse"] = sums["sq_err"] / sums["count"]
    else:
        out["acc"] = sums["correct"] / sums["count"]
    return out


def val_metric(task):
    """(name, mode) of the validation metric early stopping watches."""
    return ("mse", "min") if task == "regress" else ("acc", "max")


# ---------------------------------------------------------------------------------- the trainer
class Trainer:
    """Owns one run: ``Trainer(config, out_dir).fit()`` or ``Trainer.resume(run_dir).fit()``.

    ``hooks`` maps 'loss' -> fn(trainer, loss) -> loss (tests inject NaN here), 'step' ->
    fn(trainer, info) after each optimizer step, 'epoch' -> fn(trainer, record) after each
    epoch; a hook may raise KeyboardInterrupt to simulate Ctrl-C.
    ``datasets`` ({'train', 'test'}) replaces loading from the configuration.
    """

    def __init__(self, config, out_dir, *, quiet=False, hooks=None, datasets=None, stream=None,
                 _state=None):
        self.config = resolve_config(config)
        self.out_dir = os.fspath(out_dir)
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.hooks = dict(hooks or {})
        bad = sorted(set(self.hooks) - set(HOOKS))
        if bad:
            raise ValueError(f"hooks: unknown names {bad}; expected some of {list(HOOKS)}")
        c = self.config
        if _state is None and os.path.exists(os.path.join(self.out_dir, "last.npz")):
            raise ValueError(f"out: {self.out_dir} already holds a run (last.npz); continue it with "
                             f"--resume {self.out_dir} or choose another --out")
        vocab = _state["vocab"] if _state is not None else None
        if datasets is None:
            self._say(f"loading {c['task']} data{' from ' + c['data'] if c['data'] else ''} ...")
            datasets = load_data(data_config(c), vocab=vocab)
        self.test_ds = datasets["test"]
        self.train_ds, self.val_ds = split_validation(datasets["train"], c["val_fraction"], c["seed"])
        if _state is not None:
            self.model_config = dict(_state["meta"]["model_config"], device=c["device"])
        else:
            self.model_config = model_config(c, self.train_ds, self.test_ds)
        self.model = SequenceModel(self.model_config)
        self.task = self.model.config.task
        self.metric, self.mode = val_metric(self.task)
        self.batches_per_epoch = math.ceil(len(self.train_ds) / c["batch_size"])
        self.opt = _make_optimizer(c, self.model.params)
        self.schedule = Schedule(c["schedule"], c["lr"], c["epochs"] * self.batches_per_epoch,
                                 warmup=c["warmup"], mode=self.mode, patience=1)
        # progress of the run; all of it goes into last.npz
        self.epoch = 0            # completed epochs
        self.batch = 0            # completed batches of the current epoch
        self.step = 0             # optimizer steps so far
        self.best = None          # best validation metric
        self.best_epoch = None
        self.bad_epochs = 0
        self.stopped_early = False
        self._elapsed0 = 0.0      # wall seconds of earlier sessions of this run
        self._t_session = time.perf_counter()
        self._acc = _EpochSums()
        self._interrupt = False
        if _state is not None:
            self._restore(_state)

    # ------------------------------------------------------------------ construction
    @classmethod
    def resume(cls, run_dir, overrides=None, **kw):
        """Continue the run in ``run_dir`` from its last.npz. ``overrides`` may change only
        'epochs', 'patience', 'device' and 'eval_batch_size'."""
        run_dir = os.fspath(run_dir)
        if not os.path.isdir(run_dir):
            raise ValueError(f"resume: {run_dir} is not a run folder")
        path = os.path.join(run_dir, "last.npz")
        arrays, meta = ckpt.load_checkpoint(path)
        if meta.get("kind") != "gruengine-run":
            raise CheckpointError(f"checkpoint {path}: not a training checkpoint (kind "
                                  f"{meta.get('kind')!r})")
        config = dict(meta["train_config"])
        allowed = {"epochs", "patience", "device", "eval_batch_size"}
        for k, v in (overrides or {}).items():
            if k not in allowed and config.get(k) != v:
                raise ValueError(f"resume: {k} cannot change when resuming a run "
                                 f"(saved {config.get(k)!r}, given {v!r}); only "
                                 f"{sorted(allowed)} may")
            config[k] = v
        vocab = None
        if meta.get("vocab") is not None:
            from .data.text import Vocab
            vocab = Vocab.from_json(meta["vocab"])
        state = {"arrays": arrays, "meta": meta, "vocab": vocab, "path": path}
        return cls(config, run_dir, _state=state, **kw)

    def _restore(self, state):
        arrays, meta, path = state["arrays"], state["meta"], state["path"]
        try:
            self.model.load_state_dict(ckpt.split_arrays(arrays, "model"))
            self.opt.load_state_dict({"arrays": ckpt.split_arrays(arrays, "optim"),
                                      "meta": meta["optimizer"]})
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path}: does not fit the model: "
                                  f"{' '.join(str(e).split())}") from None
        p = meta["progress"]
        self.epoch, self.batch, self.step = p["epoch"], p["batch"], p["step"]
        self.best, self.best_epoch = p["best"], p["best_epoch"]
        self.bad_epochs, self._elapsed0 = p["bad_epochs"], p["elapsed"]
        self.stopped_early = p.get("stopped_early", False)
        self._acc = _EpochSums(**p["epoch_sums"])
        self.schedule.load_state_dict(meta["schedule"])
        if self.batches_per_epoch != p["batches_per_epoch"]:
            raise CheckpointError(f"checkpoint {path}: the training data changed "
                                  f"({p['batches_per_epoch']} batches per epoch saved, "
                                  f"{self.batches_per_epoch} now)")

    @property
    def elapsed(self):
        """Wall-clock seconds of this run, across resumed sessions."""
        return self._elapsed0 + time.perf_counter() - self._t_session

    # ------------------------------------------------------------------ checkpoints
    def _meta(self):
        vocab = self.train_ds.vocab
        return {
            "kind": "gruengine-run",
            "model_config": self.model.config.to_dict(),
            "train_config": self.config,
            "data_config": data_config(self.config),
            "vocab": vocab.to_json() if vocab is not None else None,
            "classes": self.train_ds.classes,
            "optimizer": self.opt.state_dict()["meta"],
            "schedule": self.schedule.state_dict(),
            "progress": {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                         "best": self.best, "best_epoch": self.best_epoch,
                         "bad_epochs": self.bad_epochs, "elapsed": self.elapsed,
                         "stopped_early": self.stopped_early,
                         "batches_per_epoch": self.batches_per_epoch,
                         "epoch_sums": self._acc.__dict__},
            "metric": {"name": self.metric, "mode": self.mode},
            "rng": {"bit_generator": "PCG64",
                    "note": "shuffle: default_rng([seed, 11, epoch]); dropout: reseeded from "
                            "[seed, 13, epoch, batch, k] before each step"},
        }

    def _arrays(self):
        opt = self.opt.state_dict()
        rngs = {f"dropout{k}": ckpt.rng_to_array(g) for k, g in enumerate(self._dropout_rngs())}
        return ckpt.join_arrays(model=self.model.state_dict(), optim=opt["arrays"], rng=rngs)

    def save(self, name="last.npz"):
        return ckpt.save_checkpoint(os.path.join(self.out_dir, name), self._arrays(), self._meta())

    # ------------------------------------------------------------------ dropout randomness
    def _dropout_rngs(self):
        return self.model.dropout_rngs()

    def _reseed_dropout(self):
        seed, epoch, batch = self.config["seed"], self.epoch, self.batch
        self.model.set_dropout_rngs(lambda k: np.random.default_rng([seed, 13, epoch, batch, k]))

    # ------------------------------------------------------------------ the loop
    def fit(self):
        """Train to the end (or early stop), evaluate on the test set, return a summary dict."""
        c = self.config
        os.makedirs(self.out_dir, exist_ok=True)
        self._t_session = time.perf_counter()
        with open(os.path.join(self.out_dir, "config.json"), "w") as f:
            json.dump(self.config, f, indent=2, sort_keys=True)
        self._trim_metrics()
        old_handler = self._install_sigint()
        try:
            while self.epoch < c["epochs"] and not self.stopped_early:
                self._run_epoch()
        except KeyboardInterrupt:
            path = self.save("last.npz")
            self._say(f"interrupted: resumable checkpoint saved to {path} "
                      f"(epoch {self.epoch + 1}, batch {self.batch}/{self.batches_per_epoch}); "
                      f"continue with: gruengine train --resume {self.out_dir}")
            raise
        finally:
            self._restore_sigint(old_handler)
        return self._finish()

    def _run_epoch(self):
        c, model = self.config, self.model
        model.train()
        batches = epoch_batches(self.train_ds.lengths, c["batch_size"], c["seed"], self.epoch,
                                c["bucket"])
        bar = Progress(len(batches), desc=f"epoch {self.epoch + 1}/{c['epochs']}",
                       enabled=not self.quiet, stream=self.stream)
        bar.n = self.batch
        try:
            for b in range(self.batch, len(batches)):
                x, L, y = make_batch(self.train_ds, batches[b], model.dtype)
                t0 = time.perf_counter()
                self._reseed_dropout()
                out, loss = self._forward_backward(x, L, y)
                self.opt.lr = self.schedule.lr(self.step)
                norm = self.opt.step(max_norm=c["clip"] or None)
                if norm is not None and not np.isfinite(norm):
                    self._diverged(f"gradient norm became {norm}")
                s = model.score(out, y, L)
                dt = time.perf_counter() - t0
                self._acc.add(float(loss), s, int(L.sum()), dt)
                self.step += 1
                self.batch = b + 1
                bar.update(1, **_stats(self.task, self._acc.loss(), self._acc.sums()),
                           lr=self.opt.lr, tok_s=self._acc.tok_s())
                if "step" in self.hooks:
                    self.hooks["step"](self, {"epoch": self.epoch, "batch": self.batch,
                                              "step": self.step, "loss": float(loss)})
                if self._interrupt:
                    raise KeyboardInterrupt
        finally:
            bar.close()
        record = self._end_epoch()
        if "epoch" in self.hooks:
            self.hooks["epoch"](self, record)

    def _forward_backward(self, x, L, y):
        """One forward and backward pass; a NaN/Inf anywhere is a divergence, not a bug."""
        model = self.model
        model.params.zero_grad()
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                out = model.forward(x, L)
                if not np.isfinite(out).all():
                    self._diverged("the model's outputs became NaN/Inf")
                loss, dout = model.loss_and_grad(out, y, L)
                if "loss" in self.hooks:
                    loss = self.hooks["loss"](self, loss)
                if not np.isfinite(loss):
                    self._diverged(f"loss became {loss}")
                model.backward(dout)
            except ValueError as e:
                # a module's input check caught an overflowed intermediate
                if "contains NaN" in str(e) or "contains Inf" in str(e):
                    self._diverged(f"a gradient became NaN/Inf ({e})")
                raise
        return out, loss

    def _end_epoch(self):
        c = self.config
        record = {"event": "epoch", "epoch": self.epoch + 1, "step": self.step,
                  "train_loss": self._acc.loss()}
        for k, v in _stats(self.task, None, self._acc.sums()).items():
            record[f"train_{k}"] = v
        record["lr"] = self.opt.lr
        record["tokens_per_s"] = self._acc.tok_s()
        value = None
        if self.val_ds is not None:
            v = evaluate(self.model, self.val_ds, c["eval_batch_size"], quiet=self.quiet,
                         desc="  validation", stream=self.stream)
            record.update({f"val_{k}": v[k] for k in ("loss", self.metric)})
            value = v[self.metric]
        self.epoch += 1
        self.batch = 0
        self._acc = _EpochSums()
        self.schedule.epoch_end(value)
        improved = value is None or self.best is None or (
            value < self.best if self.mode == "min" else value > self.best)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, self.epoch, 0
        else:
            self.bad_epochs += 1
            if c["patience"] and self.bad_epochs >= c["patience"]:
                self.stopped_early = True
        record["elapsed"] = self.elapsed
        if improved:
            self.save("best.npz")
        self.save("last.npz")
        with open(self._metrics_path(), "a") as f:
            f.write(json.dumps(record) + "\n")
        msg = ", ".join(f"{k} {_fmt(v)}" for k, v in record.items()
                        if k not in ("event", "step"))
        self._say(msg + (" (best)" if improved and value is not None else "")
                  + ("; early stop: no improvement in "
                     f"{self.bad_epochs} epochs" if self.stopped_early else ""))
        return record

    def _finish(self):
        c = self.config
        best_path = os.path.join(self.out_dir, "best.npz")
        if os.path.exists(best_path):
            arrays, _ = ckpt.load_checkpoint(best_path)
            self.model.load_state_dict(ckpt.split_arrays(arrays, "model"))
        res = evaluate(self.model, self.test_ds, c["eval_batch_size"], quiet=self.quiet,
                       desc="test", stream=self.stream)
        record = {"event": "test", "epoch": self.best_epoch, "step": self.step,
                  "test_loss": res["loss"], f"test_{self.metric}": res[self.metric],
                  "n": res["n"], "elapsed": self.elapsed}
        with open(self._metrics_path(), "a") as f:
            f.write(json.dumps(record) + "\n")
        summary = {"run_dir": self.out_dir, "task": self.task, "metric": self.metric,
                   "test": res, "best_val": self.best, "best_epoch": self.best_epoch,
                   "epochs": self.epoch, "steps": self.step, "stopped_early": self.stopped_early,
                   "elapsed": self.elapsed, "baseline": baseline(self.task, self.train_ds,
                                                                 self.test_ds)}
        target = c["target"]
        if target is not None:
            got = res[self.metric]
            summary["target"] = target
            summary["passed"] = bool(got < target if self.metric == "mse" else got >= target)
        return summary

    def _diverged(self, what):
        last = os.path.join(self.out_dir, "last.npz")
        kept = (f"last good checkpoint kept at {last}" if os.path.exists(last)
                else "no checkpoint was written yet")
        raise TrainingDivergedError(
            f"training diverged: {what} at epoch {self.epoch + 1}, step {self.step + 1} "
            f"(lr {self.schedule.lr(self.step):.3g}); {kept}; try a lower --lr or --clip")

    # ------------------------------------------------------------------ bookkeeping
    def _metrics_path(self):
        return os.path.join(self.out_dir, "metrics.jsonl")

    def _trim_metrics(self):
        """On resume drop lines written after the checkpoint (a crash between the two)."""
        path = self._metrics_path()
        if not os.path.exists(path):
            return
        keep = []
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if r.get("event") == "epoch" and r.get("epoch", 0) <= self.epoch:
                    keep.append(line if line.endswith("\n") else line + "\n")
        with open(path, "w") as f:
            f.writelines(keep)

    def _say(self, msg):
        if not self.quiet:
            print(msg, file=self.stream, flush=True)

    def _install_sigint(self):
        # first Ctrl-C (or SIGTERM, what `kill` and job schedulers send): finish the current
        # step, save, stop; a second one: stop at once. Returns the old handlers.
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._interrupt:
                raise KeyboardInterrupt
            self._interrupt = True
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self._say(f"\n{name}: stopping after this step (again to stop at once)")
        old = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, handler)
        except ValueError:
            self._restore_sigint(old)
            return None
        return old

    @staticmethod
    def _restore_sigint(old):
        for sig, handler in (old or {}).items():
            signal.signal(sig, handler)


class _EpochSums:
    """Running sums of one epoch (saved in checkpoints so a resumed epoch reports the same)."""

    def __init__(self, loss_sum=0.0, weight=0, correct=0, sq_err=0.0, count=0, tokens=0,
                 seconds=0.0):
        self.loss_sum, self.weight, self.correct, self.sq_err = loss_sum, weight, correct, sq_err
        self.count, self.tokens, self.seconds = count, tokens, seconds

    def add(self, loss, s, tokens, seconds):
        self.loss_sum += loss * s["count"]
        self.weight += s["count"]
        self.correct += s.get("correct", 0)
        self.sq_err += s.get("sq_err", 0.0)
        self.count += s["count"]
        self.tokens += tokens
        self.seconds += seconds

    def loss(self):
        return self.loss_sum / self.weight if self.weight else None

    def sums(self):
        return {"correct": self.correct, "sq_err": self.sq_err, "count": self.count}

    def tok_s(self):
        return self.tokens / self.seconds if self.seconds > 0 else None


def _make_optimizer(c, params):
    from . import optim
    if c["optimizer"] == "sgd":
        return optim.SGD(params, lr=c["lr"], momentum=0.9, weight_decay=c["weight_decay"])
    cls = optim.AdamW if c["optimizer"] == "adamw" else optim.Adam
    return cls(params, lr=c["lr"], weight_decay=c["weight_decay"])


def baseline(task, train_ds, test_ds):
    """What a model that ignores its input scores on the test set: the training mean (regress,
    as MSE) or the most frequent training class (classify/tag, as accuracy)."""
    if task == "regress":
        mean = train_ds.targets.mean(axis=0, dtype=np.float64)
        return {"mse": float(((test_ds.targets - mean) ** 2).mean())}
    if task == "classify":
        top = np.bincount(train_ds.targets, minlength=train_ds.num_classes).argmax()
        return {"acc": float((test_ds.targets == top).mean())}
    mask = SequenceModel.step_mask(train_ds.lengths, *train_ds.targets.shape)
    top = np.bincount(train_ds.targets[mask], minlength=train_ds.num_classes).argmax()
    tmask = SequenceModel.step_mask(test_ds.lengths, *test_ds.targets.shape)
    return {"acc": float((test_ds.targets[tmask] == top).mean())}


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def read_metrics(run_dir):
    """The records of ``run_dir/metrics.jsonl`` as a list of dicts."""
    path = os.path.join(os.fspath(run_dir), "metrics.jsonl")
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


def train(config, out_dir, *, resume=False, quiet=False, hooks=None, datasets=None,
          overrides=None, stream=None):
    """Train a model as ``config`` says, in ``out_dir``; return the summary of ``Trainer.fit``.

    With ``resume=True`` the run in ``out_dir`` continues from its last.npz (``config`` is
    ignored; ``overrides`` may extend 'epochs').
    """
    if resume:
        t = Trainer.resume(out_dir, overrides=overrides, quiet=quiet, hooks=hooks,
                           datasets=datasets, stream=stream)
    else:
        t = Trainer(config, out_dir, quiet=quiet, hooks=hooks, datasets=datasets, stream=stream)
    return t.fit()


def load_model(path, device=None):
    """A SequenceModel and its checkpoint metadata from a .npz (best.npz or last.npz), or
    from a run folder (its best.npz).

    ``device``: 'cpu', 'cuda' or 'auto' places the model there; None keeps the device the
    checkpoint was trained on, or 'cpu' when that was 'cuda' and no GPU is usable here, so a
    checkpoint written on one device loads on the other with the same weights."""
    from .backend import check_device, cuda_available
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "best.npz")):
        path = os.path.join(path, "best.npz")
    arrays, meta = ckpt.load_checkpoint(path)
    if "model_config" not in meta:
        raise CheckpointError(f"checkpoint {path}: metadata has no model_config")
    mcfg = dict(meta["model_config"])
    if device is not None:
        mcfg["device"] = check_device(device)
    elif mcfg.get("device") == "cuda" and not cuda_available():
        mcfg["device"] = "cpu"
    try:
        model = SequenceModel(ModelConfig.from_dict(mcfg))
        model.load_state_dict(ckpt.split_arrays(arrays, "model"))
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {' '.join(str(e).split())}") from None
    model.eval()
    return model, meta


def evaluate_checkpoint(path, data=None, task=None, batch_size=256, quiet=True, device=None):
    """Evaluate a checkpoint on the test split of its own data configuration, or of
    ``data`` (a path) / ``task`` (a dataset name) when given. Returns ``evaluate``'s dict
    plus 'metric' and 'task'. ``device``: see ``load_model``."""
    model, meta = load_model(path, device)
    dcfg = dict(meta.get("data_config") or {})
    if not dcfg:
        raise CheckpointError(f"checkpoint {path}: metadata has no data_config")
    if task is not None:
        _choice("task", task, DATASETS)
        dcfg["name"] = task
    if data is not None:
        dcfg["path"] = os.fspath(data)
    vocab = _vocab(meta)
    ds = load_data(dcfg, vocab=vocab)["test"]
    _check_fits(model, ds, path)
    res = evaluate(model, ds, batch_size, quiet=quiet, desc="test")
    res["metric"], res["task"] = val_metric(model.config.task)[0], model.config.task
    return res


def _vocab(meta):
    if meta.get("vocab") is None:
        return None
    from .data.text import Vocab
    return Vocab.from_json(meta["vocab"])


def _check_fits(model, ds, path):
    c = model.config
    if ds.task != c.task:
        raise ValueError(f"data: the checkpoint {path} was trained for task {c.task!r}, "
                         f"the data is a {ds.task!r} task")
    if c.input == "features" and (ds.inputs.ndim != 3 or ds.inputs.shape[2] != c.num_features):
        raise ValueError(f"data: the model reads {c.num_features} features per step, the data "
                         f"has inputs of shape {ds.inputs.shape}")
    if c.input == "tokens" and ds.inputs.ndim != 2:
        raise ValueError(f"data: the model reads token ids, the data has inputs of shape "
                         f"{ds.inputs.shape}")


def predict_texts(path, texts, batch_size=256, device=None):
    """Classify ``texts`` (list of str) with a text checkpoint.

    Returns one dict per text: {'label', 'probability', 'probs'} (classify) or
    {'value'} (regress), in input order.
    """
    from .data.text import encode_texts
    model, meta = load_model(path, device)
    vocab = _vocab(meta)
    if vocab is None or model.config.input != "tokens":
        raise ValueError(f"predict: the checkpoint {path} was not trained on text (task "
                         f"{meta.get('data_config', {}).get('name')!r}); use gruengine evaluate")
    if model.config.task == "tag":
        raise ValueError("predict: per-step (tag) models are not supported by predict")
    if not texts:
        raise ValueError("texts: expected at least one input text, got none")
    tc = meta.get("train_config", {})
    ids, lengths = encode_texts(list(texts), vocab, tc.get("max_len"), tc.get("truncate", "head"))
    classes = meta.get("classes") or [str(i) for i in range(model.config.num_outputs)]
    out = [None] * len(texts)
    for idx in sorted_batches(lengths, batch_size):
        L = np.ascontiguousarray(lengths[idx])
        x = np.ascontiguousarray(ids[idx, :int(L.max())])
        p = model.predict_proba(model.forward(x, L))
        for row, i in enumerate(idx.tolist()):   # formatting results, one dict per text
            if model.config.task == "regress":
                out[i] = {"value": [float(v) for v in p[row]]}
            else:
                k = int(p[row].argmax())
                out[i] = {"label": str(classes[k]), "probability": float(p[row, k]),
                          "probs": {str(classes[j]): float(p[row, j]) for j in range(p.shape[1])}}
    return out


__all__ = ["train", "Trainer", "evaluate", "resolve_config", "validate_config", "load_model",
           "read_metrics", "epoch_batches", "evaluate_checkpoint", "predict_texts", "DEFAULTS",
           "TASK_DEFAULTS"]
