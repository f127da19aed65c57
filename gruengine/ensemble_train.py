"""Training an ensemble of seeds: the members one after another, on one validation split and
one input scaling, then their averaged prediction on the test set.

    trainer = make_trainer(config, "runs/x")     # gruengine.train: this, when ensemble > 1
    summary = trainer.fit()

The run folder holds config.json (the ensemble's configuration), metrics.jsonl (the test
result of the ensemble and of each member), best.npz (every member's best weights: what
``evaluate``, ``predict`` and ``export`` read) and ``member-1/`` ... ``member-K/``, each a
complete run folder. Member k trains with the k-th of ``member_seeds(seed, K)`` and the share
of the wall-clock budget that the members before it left. ``--resume`` continues the member
that was stopped and skips the finished ones.
"""
import gc
import json
import os
import shutil
import sys

import numpy as np

from . import checkpoint as ckpt
from .batching import split_validation
from .config import RESUME_OVERRIDES, data_config, load_data, resume_config, validate_config
from .distributed import LOCAL
from .ensemble import MAX_MEMBERS, EnsembleModel, member_seeds, pack
from .inference import (MetricSums, against_target, baseline, evaluate, load_model,
                        metric_stats, vocab_from_meta)
from .rundir import CONFIG, LAST, RunDir

__all__ = ["EnsembleTrainer", "is_ensemble_dir", "member_dir"]

KIND = "gruengine-ensemble"


def member_dir(run_dir, k):
    """The folder of member ``k`` (from 0) of the ensemble in ``run_dir``: member-<k+1>."""
    return os.path.join(os.fspath(run_dir), f"member-{k + 1}")


def is_ensemble_dir(run_dir):
    """Whether ``run_dir`` holds an ensemble's run (its config.json says ensemble > 1)."""
    path = os.path.join(os.fspath(run_dir), CONFIG)
    if os.path.exists(os.path.join(os.fspath(run_dir), LAST)) or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            c = json.load(f)
    except (OSError, ValueError):
        return False
    k = c.get("ensemble") if isinstance(c, dict) else None
    return isinstance(k, int) and not isinstance(k, bool) and k > 1


class EnsembleTrainer:
    """Trains the members of an ensemble (``config['ensemble']`` > 1) in ``out_dir``.

    ``config``: resolved, every key of the plan decided; ``plan``: the plan's line;
    ``datasets``: {'train', 'test'} as loaded. ``trainer_cls``: the single-run trainer
    (gruengine.train.Trainer). Offers what the command line reads of a Trainer: ``config``,
    ``plan``, ``model`` (member 1's), ``train_ds``/``val_ds``/``test_ds``, ``out_dir``, ``run``,
    ``step`` and ``fit()``."""

    def __init__(self, config, plan, out_dir, datasets, *, trainer_cls, quiet=False,
                 stream=None, overwrite=False, world=None, hooks=None, overrides=None,
                 resuming=False):
        self.world = world or LOCAL
        self.config, self.plan, self.k = config, plan, int(config["ensemble"])
        self.quiet, self.stream, self.hooks = quiet or self.world.rank != 0, stream, hooks
        self._cls, self._overrides = trainer_cls, overrides
        self.seeds = member_seeds(config["seed"], self.k)
        self.run = self.world.run_dir(out_dir)
        try:
            with self.world.agreed():
                if not resuming:
                    found = self._found()
                    if found and not overwrite:
                        raise ValueError(
                            f"out: {self.out_dir} already holds a run ({', '.join(found)}); "
                            f"continue it with --resume {self.out_dir}, replace it with "
                            f"--overwrite, or choose another --out")
                    self._remove_all()
                train, val = split_validation(datasets["train"], config["val_fraction"],
                                              config["seed"])
                self.datasets = {"train": train, "val": val, "test": datasets["test"]}
            self.spent = 0.0                # wall seconds of the members already trained
            self.current = self._member(0)  # built (not trained) for what callers read
            # what every member shares (data as scaled, task), kept past the members
            t = self.current
            self.train_ds, self.val_ds, self.test_ds = t.train_ds, t.val_ds, t.test_ds
            self.scaler, self.task, self.metric, self.mode = t.scaler, t.task, t.metric, t.mode
            self.member_run = t.run         # the run folder of the member in training
        except BaseException:
            self.run.release()
            raise

    @classmethod
    def resume(cls, run_dir, overrides=None, *, trainer_cls, world=None, quiet=False,
               stream=None, hooks=None):
        """Continue the ensemble in ``run_dir``: the data are loaded again (the vocabulary of
        a text task as member 1 saved it), finished members are kept, the stopped one resumes."""
        world, saved = world or LOCAL, None
        with world.agreed():
            if world.rank == 0:          # rank 0 reads the folder (as for one model's resume)
                with open(os.path.join(run_dir, CONFIG), encoding="utf-8") as f:
                    config = resume_config(json.load(f), overrides)
                validate_config(config, complete=True)
                first = os.path.join(member_dir(run_dir, 0), LAST)
                vocab = (vocab_from_meta(ckpt.load_checkpoint(first)[1])
                         if os.path.exists(first) else None)
                saved = (config, None if vocab is None else vocab.to_json())
        config, vocab = world.bcast(saved)
        with world.agreed():
            datasets = load_data(data_config(config), vocab=vocab)
        return cls(config, None, run_dir, datasets, trainer_cls=trainer_cls, quiet=quiet,
                   stream=stream, world=world, hooks=hooks, resuming=True,
                   overrides={k: v for k, v in (overrides or {}).items()
                              if k in RESUME_OVERRIDES})

    # ------------------------------------------------------------------ what callers read
    @property
    def out_dir(self):
        return self.run.path

    @property
    def model(self):
        return self.current.model

    @property
    def step(self):
        return 0 if self.current is None else self.current.step

    # ------------------------------------------------------------------ members
    def _found(self):
        found = list(self.run.artefacts())
        return found + [f"member-{j + 1}/" for j in range(MAX_MEMBERS)
                        if RunDir(member_dir(self.out_dir, j)).artefacts()]

    def _remove_all(self):
        self.run.remove_artefacts()
        if self.world.rank == 0:
            for j in range(MAX_MEMBERS):
                if os.path.isdir(member_dir(self.out_dir, j)):
                    shutil.rmtree(member_dir(self.out_dir, j))

    def _member(self, j):
        """The Trainer of member ``j``: resumed where its folder holds a run, else new."""
        path, kw = member_dir(self.out_dir, j), dict(
            quiet=self.quiet, stream=self.stream, world=self.world, hooks=self.hooks,
            datasets=self.datasets)
        held = os.path.exists(os.path.join(path, LAST)) if self.world.rank == 0 else None
        if self.world.bcast(held):
            t = self._cls.resume(path, overrides=self._overrides, **kw)
        else:
            c = dict(self.config, seed=self.seeds[j], ensemble=1)
            if c["time_budget"]:             # what the members before left, shared equally
                left = max(c["time_budget"] * 60 - self.spent, 1.0)
                c["time_budget"] = self.world.bcast(left / (self.k - j) / 60)   # rank 0's clock
            t = self._cls(c, path, overwrite=True, **kw)
            t.plan = f"ensemble member {j + 1} of {self.k}, seed {self.seeds[j]}: {self.plan}"
        t.resume_dir, t.say_plan = self.out_dir, False
        return t

    def fit(self):
        """Train the members that are not finished, then test the ensemble; a summary dict
        as ``Trainer.fit`` gives, plus 'members' (each one's seed, steps and test result)."""
        if self.plan and self.step == 0:
            self._say(self.plan)
        runs = []
        try:
            self.run.write_config(self.config)   # after every rank agreed on the first member
            for j in range(self.k):
                t = self.current if j == 0 else self._member(j)
                self.current, self.member_run = t, t.run
                self._say(f"ensemble member {j + 1} of {self.k} (seed {self.seeds[j]}): "
                          f"{t.out_dir}")
                runs.append(t.fit(test=False))
                self.spent += t.elapsed
                device = t.model.config.device
                # a trained member's gradients, optimizer moments and activations go before
                # the next member (or the test) needs the memory
                t = self.current = None
                gc.collect()
            # the members' best weights, read back
            members = [load_model(r["run_dir"], device, self.world)[0] for r in runs]
            return self._finish(members, runs)
        finally:
            self.run.release()

    def _finish(self, members, runs):
        c, t = self.config, self     # what the members share: data, split, scaling, task
        model = EnsembleModel(members)
        meta = {"kind": KIND, "plan": self.plan, "train_config": c,
                "model_config": members[0].config.to_dict(),
                "data_config": data_config(c), "ensemble": {"members": self.k,
                                                            "seeds": self.seeds},
                "scaling": t.scaler.to_json() if t.scaler is not None else None,
                "vocab": t.train_ds.vocab.to_json() if t.train_ds.vocab is not None
                else None, "classes": t.train_ds.classes,
                "metric": {"name": t.metric, "mode": t.mode}}
        if self.world.rank == 0:
            ckpt.save_checkpoint(self.run.best, pack(members), meta)
        metric = t.metric
        per_member = [MetricSums() for _ in members]
        res = evaluate(_Tracked(model, per_member), t.test_ds, c["eval_batch_size"],
                       quiet=self.quiet, desc="test (ensemble)", stream=self.stream,
                       world=self.world)
        # each rank scored its share of the batches: the members' sums over the ranks
        sums = np.array([[s.correct, s.sq_err, s.count] for s in per_member], dtype=np.float64)
        self.world.allreduce(sums)
        tests = [metric_stats(t.task, None, {"correct": c, "sq_err": e, "count": n})[metric]
                 for c, e, n in sums.tolist()]
        steps = sum(r["steps"] for r in runs)
        elapsed = sum(r["elapsed"] for r in runs)
        info = [{"seed": s, "run_dir": r["run_dir"], "steps": r["steps"],
                 "best_epoch": r["best_epoch"], f"test_{metric}": m}
                for s, r, m in zip(self.seeds, runs, tests)]
        self.run.append_metrics({"event": "test", "step": steps, "test_loss": res["loss"],
                                 f"test_{metric}": res[metric], "n": res["n"],
                                 "elapsed": elapsed, "members": info})
        summary = {"run_dir": self.out_dir, "task": t.task, "metric": metric, "test": res,
                   "best_val": None, "best_epoch": None, "epochs": sum(r["epochs"] for r in runs),
                   "steps": steps, "stopped_early": any(r["stopped_early"] for r in runs),
                   "elapsed": elapsed, "plan": self.plan, "members": info,
                   "baseline": baseline(t.task, t.train_ds, t.test_ds),
                   **against_target(metric, res[metric], c["target"])}
        return summary


    def _say(self, msg):
        if not self.quiet:
            print(msg, file=self.stream if self.stream is not None else sys.stderr, flush=True)


class _Tracked:
    """``model`` (an EnsembleModel) whose ``score`` also adds each member's own score to
    ``sums``: the members' test results from the ensemble's one pass over the data."""

    def __init__(self, model, sums):
        self._m, self._sums = model, sums

    def __getattr__(self, name):
        return getattr(self._m, name)

    def score(self, outputs, targets, lengths):
        for s, m, o in zip(self._sums, self._m.members, self._m.member_outputs):
            s.add(0.0, m.score(o, targets, lengths), 0)
        return self._m.score(outputs, targets, lengths)
