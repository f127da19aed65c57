"""The training loop: ``Trainer`` runs epochs of shuffled length-bucketed batches with a
learning-rate schedule, validation, early stopping and resumable checkpoints.

    from gruengine.train import train
    summary = train({"task": "adding", "seq_len": 50, "epochs": 5}, "runs/adding")
    summary = train(None, "runs/adding", resume=True)      # continue a stopped run

A run folder holds ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one JSON
object per epoch, then one for the test set), ``last.npz`` (resumable) and ``best.npz`` (the
weights with the best validation metric). The batch order is a function of (seed, epoch) and
the dropout generators are reseeded from (seed, epoch, batch), so a run stopped at any batch
and resumed ends with bit-identical weights to an uninterrupted run on the same machine.
"""
import math
import os
import sys
import time

import numpy as np

from . import checkpoint as ckpt
from .batching import epoch_batches, make_batch, split_validation
from .config import data_config, load_data, model_config, resolve_config, resume_config
from .distributed import LOCAL
from .early_stopping import EarlyStopping
from .errors import CheckpointError, Interrupted, TrainingDivergedError
from .inference import MetricSums, baseline, evaluate, metric_stats, val_metric, vocab_from_meta
from .models import SequenceModel
from .progress import Progress
from .rundir import BEST, LAST, RUN_KIND, RunDir
from .run_schema import check_run_meta
from .schedule import Schedule

HOOKS = ("loss", "update", "step", "save", "epoch")


class Trainer:
    """Owns one run: ``Trainer(config, out_dir).fit()`` or ``Trainer.resume(run_dir).fit()``.

    ``hooks`` maps 'loss' -> fn(trainer, loss) -> loss (tests inject NaN here), 'update' ->
    fn(trainer, info) inside an optimizer step's critical section, after the weights changed
    and before the progress counters follow (the worst moment for a signal), 'step' ->
    fn(trainer, info) after each optimizer step, 'save' -> fn(trainer, path) inside a
    checkpoint save's critical section, before the write, 'epoch' -> fn(trainer, record)
    after each epoch; a hook may raise KeyboardInterrupt or send a signal to simulate Ctrl-C.
    ``datasets`` ({'train', 'test'}) replaces loading from the configuration.

    The run folder is locked from construction to the end of ``fit`` (one writer per
    folder); a folder holding a run is refused unless ``overwrite`` (its run files are then
    deleted first). ``world``: the MPI ranks to train with (only rank 0 prints and writes).
    """

    def __init__(self, config, out_dir, *, quiet=False, hooks=None, datasets=None, stream=None,
                 overwrite=False, world=None, _state=None):
        self.run = _state["run"] if _state is not None else None
        self.world = world if world is not None else LOCAL
        try:
            with self.world.agreed():      # an error on one rank stops all, one message
                self.config = resolve_config(config)
                self.quiet = quiet or self.world.rank != 0
                self.stream = stream if stream is not None else sys.stderr
                self.hooks = dict(hooks or {})
                bad = sorted(set(self.hooks) - set(HOOKS))
                if bad:
                    raise ValueError(f"hooks: unknown names {bad}; expected some of {list(HOOKS)}")
                if self.run is None:    # after the checks: a bad configuration makes no folder
                    self.run = self.world.run_dir(out_dir)
                self._setup(datasets, overwrite, _state)
            self.world.start(self)
        except BaseException:
            if self.run is not None:
                self.run.release()
            raise

    def _setup(self, datasets, overwrite, _state):
        c = self.config
        if _state is None:
            found = self.run.artefacts()
            if found and not overwrite:
                raise ValueError(f"out: {self.out_dir} already holds a run ({', '.join(found)}); "
                                 f"continue it with --resume {self.out_dir}, replace it with "
                                 f"--overwrite, or choose another --out")
            self.run.remove_artefacts()
        self.run.remove_stale()
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
        total = c["epochs"] * self.batches_per_epoch
        self.warmup = clipped_warmup(c["warmup"], total)
        if self.warmup != c["warmup"] and self.world.rank == 0:
            # a warm-up as long as the run would train at a fraction of --lr throughout
            print(f"notice: warm-up of {c['warmup']} steps is not shorter than the run "
                  f"({total} steps); clipped to {self.warmup}", file=self.stream, flush=True)
        self.schedule = Schedule(c["schedule"], c["lr"], total, warmup=self.warmup,
                                 mode=self.mode, patience=1)
        # progress of the run; all of it goes into last.npz
        self.epoch = 0            # completed epochs
        self.batch = 0            # completed batches of the current epoch
        self.step = 0             # optimizer steps so far
        self.early_stopping = EarlyStopping(self.mode, c["patience"])
        self._elapsed0 = 0.0      # wall seconds of earlier sessions of this run
        self._t_session = time.perf_counter()
        self._acc = MetricSums()  # the current epoch's
        self.stops = self.world.stop_requests(self._say)
        if _state is not None:
            self._restore(_state)

    @property
    def out_dir(self):
        return self.run.path

    # ------------------------------------------------------------------ construction
    @classmethod
    def resume(cls, run_dir, overrides=None, world=None, **kw):
        """Continue the run in ``run_dir`` from its last.npz. ``overrides`` may change only
        'epochs', 'patience', 'device' and 'eval_batch_size'. Under MPI rank 0 reads it."""
        run_dir, world, state = os.fspath(run_dir), world or LOCAL, None
        with world.agreed():
            if world.rank == 0:
                state = _resume_state(run_dir, overrides)
        state = world.share_resume(state, run_dir)
        return cls(state["config"], run_dir, _state=state, world=world, **kw)

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
        self.early_stopping.load_state_dict(p)
        self._elapsed0 = p["elapsed"]
        self._acc = MetricSums(**p["epoch_sums"])
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
        # progress keys: epoch, batch, step, best, best_epoch, bad_epochs, stopped_early,
        # elapsed, batches_per_epoch, epoch_sums (what _restore reads back)
        progress = {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                    **self.early_stopping.state_dict(), "elapsed": self.elapsed,
                    "batches_per_epoch": self.batches_per_epoch,
                    "epoch_sums": self._acc.state_dict()}
        return {
            "kind": RUN_KIND,
            "model_config": self.model.config.to_dict(),
            "train_config": self.config,
            "data_config": data_config(self.config),
            "vocab": vocab.to_json() if vocab is not None else None,
            "classes": self.train_ds.classes,
            "optimizer": self.opt.state_dict()["meta"],
            "schedule": self.schedule.state_dict(),
            "progress": progress,
            "metric": {"name": self.metric, "mode": self.mode},
            "rng": {"bit_generator": "PCG64",
                    "note": "shuffle: default_rng([seed, 11, epoch]); dropout: reseeded from "
                            "[seed, 13, epoch, batch, k] before each step"},
        }

    def _arrays(self):
        opt = self.opt.state_dict()
        rngs = {f"dropout{k}": ckpt.rng_to_array(g)
                for k, g in enumerate(self.model.dropout_rngs())}
        return ckpt.join_arrays(model=self.model.state_dict(), optim=opt["arrays"], rng=rngs)

    def save(self, name=LAST):
        """Write ``name`` (last.npz or best.npz); a signal waits until the file is complete.
        best.npz is for using the model: its weights only; the optimizer moments (twice the
        weights) and RNG states are what resuming needs, and only last.npz is resumed."""
        path = self.run.file(name)
        with self.stops.critical():
            if "save" in self.hooks:
                self.hooks["save"](self, path)
            self.world.sync_replicas(self.model, self.opt)
            if self.world.rank == 0:
                arrays = (ckpt.join_arrays(model=self.model.state_dict()) if name == BEST
                          else self._arrays())
                path = ckpt.save_checkpoint(path, arrays, self._meta())
            self.world.barrier()
            return path

    def _reseed_dropout(self, window=None):
        # window (distributed.RowWindow): draw only this rank's rows of the batch's masks
        seed, epoch, batch = self.config["seed"], self.epoch, self.batch
        wrap = window or (lambda g: g)
        self.model.set_dropout_rngs(lambda k: wrap(np.random.default_rng([seed, 13, epoch, batch,
                                                                          k])))

    # ------------------------------------------------------------------ the loop
    def fit(self):
        """Train to the end (or early stop), evaluate on the test set, return a summary dict.

        Ctrl-C or SIGTERM: a resumable checkpoint is saved, then ``Interrupted`` (a
        KeyboardInterrupt) is raised. The run folder's lock is released on the way out."""
        c = self.config
        self._t_session = time.perf_counter()
        self.run.acquire()                    # a no-op unless an earlier fit released it
        self.stops.install()
        try:
            try:
                with self.stops.critical():
                    self.run.write_config(self.config)
                    self.run.trim_metrics(self.epoch)
                while self.epoch < c["epochs"] and not self.early_stopping.should_stop:
                    self.stops.check()
                    self._run_epoch()
            except BaseException as e:
                if not self.stops.caused(e):
                    raise
                self.stops.stopping = True
                path = self.save(LAST)
                self._say(f"interrupted: resumable checkpoint saved to {path} "
                          f"(epoch {self.epoch + 1}, batch {self.batch}/{self.batches_per_epoch}); "
                          f"continue with: gruengine train --resume {self.out_dir}")
                if isinstance(e, KeyboardInterrupt):
                    raise
                raise Interrupted(self.stops.signum) from None
            finally:
                self.stops.restore()
            return self._finish()
        finally:
            self.run.release()

    def _run_epoch(self):
        c, model = self.config, self.model
        model.train()
        batches = epoch_batches(self.train_ds.lengths, c["batch_size"], c["seed"], self.epoch,
                                c["bucket"])
        bar = Progress(len(batches), desc=f"epoch {self.epoch + 1}/{c['epochs']}",
                       enabled=not self.quiet, stream=self.stream, announce=True)
        bar.n = self.batch
        try:
            for b in range(self.batch, len(batches)):
                # up to the update nothing of the run's state changes: a signal may cut here
                t0, loss, s, tokens = self._gradient(batches[b])
                with self.stops.critical():     # the update and the counters that count it
                    self.opt.lr = self.schedule.lr(self.step)
                    norm = self.opt.step(max_norm=c["clip"] or None)
                    if norm is not None and not np.isfinite(norm):
                        self._diverged(f"gradient norm became {norm}")
                    if "update" in self.hooks:
                        self.hooks["update"](self, {"epoch": self.epoch, "batch": b,
                                                    "step": self.step + 1, "loss": loss})
                    dt = time.perf_counter() - t0
                    self._acc.add(loss, s, tokens, dt)
                    self.step += 1
                    self.batch = b + 1
                bar.update(1, **metric_stats(self.task, self._acc.loss(), self._acc.sums()),
                           lr=self.opt.lr, tok_s=self._acc.tok_s())
                if "step" in self.hooks:
                    self.hooks["step"](self, {"epoch": self.epoch, "batch": self.batch,
                                              "step": self.step, "loss": loss})
                self.stops.check()
        finally:
            bar.close()
        record = self._end_epoch()
        if "epoch" in self.hooks:
            self.hooks["epoch"](self, record)

    def _gradient(self, idx):
        """Batch ``idx``'s gradient in the flat buffer -> (t0, loss, score, tokens)."""
        if self.world.size > 1:
            return self.world.gradient(self, idx)
        x, L, y = make_batch(self.train_ds, idx, self.model.dtype)
        t0 = time.perf_counter()
        self._reseed_dropout()
        out, loss = self._forward_backward(x, L, y)
        return t0, float(loss), self.model.score(out, y, L), int(L.sum())

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
        for k, v in metric_stats(self.task, None, self._acc.sums()).items():
            record[f"train_{k}"] = v
        record["lr"] = self.opt.lr
        record["tokens_per_s"] = self._acc.tok_s()
        value = None
        if self.val_ds is not None:
            v = evaluate(self.model, self.val_ds, c["eval_batch_size"], quiet=self.quiet,
                         desc="  validation", stream=self.stream, world=self.world)
            record.update({f"val_{k}": v[k] for k in ("loss", self.metric)})
            value = v[self.metric]
        with self.stops.critical():     # counters, schedule, early stopping and files move together
            self.epoch += 1
            self.batch = 0
            self._acc = MetricSums()
            self.schedule.epoch_end(value)
            improved = self.early_stopping.update(value, self.epoch)
            record["elapsed"] = self.elapsed
            if improved:
                self.save(BEST)
            self.save(LAST)
            self.run.append_metrics(record)
        stop = self.early_stopping
        msg = ", ".join(f"{k} {_fmt(v)}" for k, v in record.items()
                        if k not in ("event", "step"))
        self._say(msg + (" (best)" if improved and value is not None else "")
                  + ("; early stop: no improvement in "
                     f"{stop.bad_epochs} epochs" if stop.should_stop else ""))
        return record

    def _finish(self):
        c, stop = self.config, self.early_stopping
        if self.world.rank == 0 and os.path.exists(self.run.best):
            arrays, _ = ckpt.load_checkpoint(self.run.best)
            self.model.load_state_dict(ckpt.split_arrays(arrays, "model"))
        self.world.share_weights(self.model)
        res = evaluate(self.model, self.test_ds, c["eval_batch_size"], quiet=self.quiet,
                       desc="test", stream=self.stream, world=self.world)
        self.run.append_metrics({"event": "test", "epoch": stop.best_epoch, "step": self.step,
                                 "test_loss": res["loss"], f"test_{self.metric}": res[self.metric],
                                 "n": res["n"], "elapsed": self.elapsed})
        summary = {"run_dir": self.out_dir, "task": self.task, "metric": self.metric,
                   "test": res, "best_val": stop.best, "best_epoch": stop.best_epoch,
                   "epochs": self.epoch, "steps": self.step, "stopped_early": stop.should_stop,
                   "elapsed": self.elapsed, "baseline": baseline(self.task, self.train_ds,
                                                                 self.test_ds)}
        target = c["target"]
        if target is not None:
            got = res[self.metric]
            summary["target"] = target
            summary["passed"] = bool(got < target if self.metric == "mse" else got >= target)
        return summary

    def _diverged(self, what):
        last = self.run.last
        kept = (f"last good checkpoint kept at {last}" if os.path.exists(last)
                else "no checkpoint was written yet")
        err = TrainingDivergedError(
            f"training diverged: {what} at epoch {self.epoch + 1}, step {self.step + 1} "
            f"(lr {self.schedule.lr(self.step):.3g}); {kept}; try a lower --lr or --clip")
        err.all_ranks = self.world.size > 1     # the summed gradient's norm: the same on all
        raise err

    # ------------------------------------------------------------------ output
    def _say(self, msg):
        if not self.quiet:
            print(msg, file=self.stream, flush=True)


def clipped_warmup(warmup, total_steps):
    """The warm-up a run of ``total_steps`` uses: ``warmup``, or a tenth of the run (at least
    one step) when ``warmup`` is not shorter than the run."""
    if warmup < total_steps:
        return warmup
    return max(total_steps // 10, 1)


def _resume_state(run_dir, overrides):
    if not os.path.isdir(run_dir):
        raise ValueError(f"resume: {run_dir} is not a run folder")
    run = RunDir(run_dir).acquire("resume")    # before reading: no writer is half-way
    try:
        arrays, meta = run.load_last()
        check_run_meta(meta, run.last)
        config = resume_config(meta["train_config"], overrides)
    except BaseException:
        run.release()
        raise
    return {"arrays": arrays, "meta": meta, "vocab": vocab_from_meta(meta), "path": run.last,
            "run": run, "config": config}


def _make_optimizer(c, params):
    from . import optim
    if c["optimizer"] == "sgd":
        return optim.SGD(params, lr=c["lr"], momentum=0.9, weight_decay=c["weight_decay"])
    cls = optim.AdamW if c["optimizer"] == "adamw" else optim.Adam
    return cls(params, lr=c["lr"], weight_decay=c["weight_decay"])


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def train(config, out_dir, *, resume=False, quiet=False, hooks=None, datasets=None,
          overrides=None, stream=None, overwrite=False, world=None):
    """Train a model as ``config`` says, in ``out_dir``; return the summary of ``Trainer.fit``.

    With ``resume=True`` the run in ``out_dir`` continues from its last.npz (``config`` is
    ignored; ``overrides`` may extend 'epochs'). A folder that already holds a run is
    refused unless ``overwrite``. ``world``: ``gruengine.distributed.world()`` trains on
    the MPI ranks this process was launched with.
    """
    if resume:
        if overwrite:
            raise ValueError("overwrite: a resumed run continues its folder; it cannot also "
                             "overwrite it")
        t = Trainer.resume(out_dir, overrides=overrides, quiet=quiet, hooks=hooks,
                           datasets=datasets, stream=stream, world=world)
    else:
        t = Trainer(config, out_dir, quiet=quiet, hooks=hooks, datasets=datasets, stream=stream,
                    overwrite=overwrite, world=world)
    return t.fit()


__all__ = ["train", "Trainer"]
