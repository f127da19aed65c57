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

from . import checkpoint as ckpt, optim
from .batching import epoch_batches, make_batch, split_validation
from .augment import augment_batch
from .neighbours import fit_neighbours
from .config import data_config, load_data, model_config, resolve_config, validate_config
from .data.scaling import Scaler
from .distributed import LOCAL
from .early_stopping import EarlyStopping
from .ensemble_train import EnsembleTrainer, is_ensemble_dir
from .errors import Interrupted, TrainingDivergedError
from .inference import MetricSums, against_target, baseline, evaluate, metric_stats, val_metric
from .models import SequenceModel
from .policy import make_plan
from .progress import Progress, format_value
from .rundir import BEST, LAST
from .run_state import checkpoint_arrays, checkpoint_meta, restore, resume_state
from .schedule import Schedule, clipped_warmup
from .time_budget import fit_to_budget, out_of_time

HOOKS = ("loss", "update", "step", "save", "epoch")


class Trainer:
    """Owns one run: ``Trainer(config, out_dir).fit()`` or ``Trainer.resume(run_dir).fit()``.

    ``hooks`` maps 'loss' -> fn(trainer, loss) -> loss (tests inject NaN here), 'update' ->
    fn(trainer, info) inside an optimizer step's critical section, after the weights changed
    and before the progress counters follow (the worst moment for a signal), 'step' ->
    fn(trainer, info) after each optimizer step, 'save' -> fn(trainer, path) inside a
    checkpoint save's critical section, before the write, 'epoch' -> fn(trainer, record)
    after each epoch; a hook may raise KeyboardInterrupt or send a signal to simulate Ctrl-C.
    ``datasets`` ({'train', 'test'}, or {'train', 'val', 'test'} split already) replaces
    loading from the configuration.

    The run folder is locked from construction to the end of ``fit`` (one writer per
    folder); a folder holding a run is refused unless ``overwrite`` (its run files are then
    deleted first). ``world``: the MPI ranks to train with (only rank 0 prints and writes).
    """

    def __init__(self, config, out_dir, *, quiet=False, hooks=None, datasets=None, stream=None,
                 overwrite=False, world=None, _state=None):
        self.run = _state["run"] if _state is not None else None
        self.resume_dir = None    # the folder `--resume` continues, when not this one
        self.say_plan = True      # print the plan line as the run starts
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
            self._say(loading_line(c))
            datasets = load_data(data_config(c), vocab=vocab)
        self.plan = _state["meta"].get("plan") if _state is not None else None
        if c["ensemble"] is None:         # one model: an ensemble is make_trainer's
            c["ensemble"] = 1
        elif c["ensemble"] > 1:
            raise ValueError(f"ensemble: a Trainer trains one model, not {c['ensemble']}; "
                             f"train an ensemble with gruengine.train.train or make_trainer")
        if _state is None:
            decisions, self.plan = make_plan(c, datasets["train"])
            c.update(decisions)
        validate_config(c, complete=True)
        if "val" in datasets:      # split already (an ensemble's members share one split)
            self.train_ds, self.val_ds = datasets["train"], datasets["val"]
        else:
            self.train_ds, self.val_ds = split_validation(datasets["train"], c["val_fraction"],
                                                          c["seed"])
        self.test_ds = datasets["test"]
        self.scaler = self._scaler(_state)
        if self.scaler is not None:
            self.train_ds, self.test_ds = map(self.scaler.transform, (self.train_ds, self.test_ds))
            if self.val_ds is not None:
                self.val_ds = self.scaler.transform(self.val_ds)
        if _state is not None:
            self.model_config = dict(_state["meta"]["model_config"], device=c["device"])
        else:
            self.model_config = model_config(c, self.train_ds, self.test_ds)
        self.model = SequenceModel(self.model_config)
        self.task = self.model.config.task
        self.metric, self.mode = val_metric(self.task)
        self.batches_per_epoch = math.ceil(len(self.train_ds) / c["batch_size"])
        self.opt = optim.from_config(c, self.model.params)
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
            restore(self, _state)

    @property
    def out_dir(self):
        return self.run.path

    def _scaler(self, state):
        """The input scaling of numeric data: fitted on the training split (after the
        validation split is carved off), or the one a resumed run saved."""
        c = self.config
        if state is not None:
            saved = state["meta"].get("scaling")
            return Scaler.from_json(saved) if saved is not None else None
        if not (c["series_norm"] or c["channel_norm"]):
            return None
        if self.train_ds.inputs.ndim != 3:
            raise ValueError(f"series_norm/channel_norm: input scaling applies to numeric "
                             f"inputs; the {c['task']!r} data are token ids")
        return Scaler(c["series_norm"], c["channel_norm"], keep_stats=c["series_norm"]).fit(
            self.train_ds)

    # ------------------------------------------------------------------ construction
    @classmethod
    def resume(cls, run_dir, overrides=None, world=None, **kw):
        """Continue the run in ``run_dir`` from its last.npz. ``overrides`` may change only
        'epochs', 'patience', 'device' and 'eval_batch_size'. Under MPI rank 0 reads it."""
        run_dir, world, state = os.fspath(run_dir), world or LOCAL, None
        with world.agreed():
            if world.rank == 0:
                state = resume_state(run_dir, overrides)
        state = world.share_resume(state, run_dir)
        return cls(state["config"], run_dir, _state=state, world=world, **kw)

    @property
    def elapsed(self):
        """Wall-clock seconds of this run, across resumed sessions."""
        return self._elapsed0 + time.perf_counter() - self._t_session

    # ------------------------------------------------------------------ checkpoints
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
                          else checkpoint_arrays(self))
                path = ckpt.save_checkpoint(path, arrays, checkpoint_meta(self))
            self.world.barrier()
            return path

    def _reseed_dropout(self, window=None):
        # window (distributed.RowWindow): draw only this rank's rows of the batch's masks
        seed, epoch, batch = self.config["seed"], self.epoch, self.batch
        wrap = window or (lambda g: g)
        self.model.set_dropout_rngs(lambda k: wrap(np.random.default_rng([seed, 13, epoch, batch,
                                                                          k])))

    # ------------------------------------------------------------------ the loop
    def fit(self, test=True):
        """Train to the end (or early stop), evaluate on the test set (unless not ``test``),
        return a summary dict.

        Ctrl-C or SIGTERM: a resumable checkpoint is saved, then ``Interrupted`` (a
        KeyboardInterrupt) is raised. The run folder's lock is released on the way out."""
        c = self.config
        self._t_session = time.perf_counter()
        self.run.acquire()                    # a no-op unless an earlier fit released it
        if self.plan and self.say_plan and self.epoch == 0 and self.batch == 0:
            self._say(self.plan)
        self.stops.install()
        try:
            try:
                with self.stops.critical():
                    self.run.write_config(self.config)
                    self.run.trim_metrics(self.epoch)
                while self.epoch < c["epochs"] and not self.early_stopping.should_stop \
                        and not out_of_time(self):
                    self.stops.check()
                    self._run_epoch()
            except BaseException as e:
                if not self.stops.caused(e):
                    raise
                self.stops.stopping = True
                path = self.save(LAST)
                self._say(f"interrupted: resumable checkpoint saved to {path} "
                          f"(epoch {self.epoch + 1}, batch {self.batch}/{self.batches_per_epoch}); "
                          f"continue with: gruengine train --resume "
                          f"{self.resume_dir or self.out_dir}")
                if isinstance(e, KeyboardInterrupt):
                    raise
                raise Interrupted(self.stops.signum) from None
            finally:
                self.stops.restore()
            return self._finish(test)
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
        x, L, y = self.batch_inputs(idx)
        t0 = time.perf_counter()
        self._reseed_dropout()
        out, loss = self._forward_backward(x, L, y)
        return t0, float(loss), self.model.score(out, y, L), int(L.sum())

    def batch_inputs(self, idx):
        """(x, lengths, y) of the global batch ``idx`` of the current step, augmented as
        configured (the draws are a function of (seed, epoch, batch))."""
        c = self.config
        x, L, y = make_batch(self.train_ds, idx, self.model.dtype)
        if c["augment"]:
            x, L = augment_batch(x, L, np.random.default_rng([c["seed"], 17, self.epoch,
                                                              self.batch]))
            x = np.ascontiguousarray(x[:, :int(L.max())])
        return x, L, y

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
            fit_to_budget(self)
            self.schedule.epoch_end(value)
            improved = self.early_stopping.update(value, self.epoch)
            record["elapsed"] = self.elapsed
            if improved:
                self.save(BEST)
            self.save(LAST)
            self.run.append_metrics(record)
        stop = self.early_stopping
        msg = ", ".join(f"{k} {format_value(v)}" for k, v in record.items()
                        if k not in ("event", "step"))
        self._say(msg + (" (best)" if improved and value is not None else "")
                  + ("; early stop: no improvement in "
                     f"{stop.bad_epochs} epochs" if stop.should_stop else ""))
        return record

    def _finish(self, test=True):
        c, stop = self.config, self.early_stopping
        if self.world.rank == 0 and os.path.exists(self.run.best):
            arrays, _ = ckpt.load_checkpoint(self.run.best)
            self.model.load_state_dict(ckpt.split_arrays(arrays, "model"))
        self.world.share_weights(self.model)
        if c.get("neighbours"):      # every rank: the same training split, the same vectors
            self.model.neighbours = fit_neighbours(self.model, self.train_ds)
            self.save(BEST)
        summary = {"run_dir": self.out_dir, "best_val": stop.best, "best_epoch": stop.best_epoch,
                   "epochs": self.epoch, "steps": self.step, "stopped_early": stop.should_stop,
                   "elapsed": self.elapsed}
        if not test:
            return summary
        res = evaluate(self.model, self.test_ds, c["eval_batch_size"], quiet=self.quiet,
                       desc="test", stream=self.stream, world=self.world)
        self.run.append_metrics({"event": "test", "epoch": stop.best_epoch, "step": self.step,
                                 "test_loss": res["loss"], f"test_{self.metric}": res[self.metric],
                                 "n": res["n"], "elapsed": self.elapsed})
        summary.update(task=self.task, metric=self.metric, test=res, plan=self.plan,
                       baseline=baseline(self.task, self.train_ds, self.test_ds),
                       **against_target(self.metric, res[self.metric], c["target"]))
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


def loading_line(c):
    return f"loading {c['task']} data{' from ' + c['data'] if c['data'] else ''} ..."


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
        t = resume_trainer(out_dir, overrides=overrides, quiet=quiet, hooks=hooks,
                           stream=stream, world=world, datasets=datasets)
    else:
        t = make_trainer(config, out_dir, quiet=quiet, hooks=hooks, datasets=datasets,
                         stream=stream, overwrite=overwrite, world=world)
    return t.fit()


def make_trainer(config, out_dir, *, datasets=None, world=None, quiet=False, stream=None, **kw):
    """A ``Trainer`` for ``config``, or an ``EnsembleTrainer`` when ``ensemble`` (given, or
    decided by the plan) is above 1; the data are loaded here when the plan must see them."""
    world = world or LOCAL
    with world.agreed():
        c = resolve_config(config)
        if c["ensemble"] is None or c["ensemble"] > 1:
            if datasets is None:
                if not quiet and world.rank == 0:
                    print(loading_line(c), file=stream or sys.stderr, flush=True)
                datasets = load_data(data_config(c))
            decisions, plan = make_plan(c, datasets["train"])
            c.update(decisions)
    if c["ensemble"] is not None and c["ensemble"] > 1:
        return EnsembleTrainer(c, plan, out_dir, datasets, trainer_cls=Trainer, quiet=quiet,
                               stream=stream, world=world, **kw)
    return Trainer(config, out_dir, datasets=datasets, world=world, quiet=quiet, stream=stream,
                   **kw)


def resume_trainer(run_dir, overrides=None, *, world=None, datasets=None, **kw):
    """``Trainer.resume``, or ``EnsembleTrainer.resume`` for an ensemble's folder."""
    world = world or LOCAL
    if world.bcast(is_ensemble_dir(run_dir) if world.rank == 0 else None):
        return EnsembleTrainer.resume(run_dir, overrides, trainer_cls=Trainer, world=world, **kw)
    return Trainer.resume(run_dir, overrides=overrides, world=world, datasets=datasets, **kw)


__all__ = ["train", "Trainer", "make_trainer", "resume_trainer"]
