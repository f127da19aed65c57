"""What a run's last.npz holds and how a resumed run reads it back: the weights, the optimizer
state, the dropout generators, the progress counters, the schedule and early stopping, and
the metadata (configuration, plan, input scaling, vocabulary) that rebuilds the run.
"""
import os

from . import checkpoint as ckpt
from .config import data_config, resume_config
from .errors import CheckpointError
from .inference import MetricSums, vocab_from_meta
from .rundir import RUN_KIND, RunDir
from .run_schema import check_run_meta

__all__ = ["resume_state", "restore", "checkpoint_meta", "checkpoint_arrays"]


def resume_state(run_dir, overrides):
    """The run in ``run_dir`` as its last.npz left it, its folder locked; with the
    configuration ``overrides`` ('epochs', ...) applied."""
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


def restore(trainer, state):
    """Put the run state a checkpoint holds (``resume_state``) into ``trainer``."""
    arrays, meta, path = state["arrays"], state["meta"], state["path"]
    try:
        trainer.model.load_state_dict(ckpt.split_arrays(arrays, "model"))
        trainer.opt.load_state_dict({"arrays": ckpt.split_arrays(arrays, "optim"),
                                     "meta": meta["optimizer"]})
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: does not fit the model: "
                              f"{' '.join(str(e).split())}") from None
    p = meta["progress"]
    trainer.epoch, trainer.batch, trainer.step = p["epoch"], p["batch"], p["step"]
    trainer.early_stopping.load_state_dict(p)
    trainer._elapsed0 = p["elapsed"]
    trainer._acc = MetricSums(**p["epoch_sums"])
    trainer.schedule.load_state_dict(meta["schedule"])
    if trainer.batches_per_epoch != p["batches_per_epoch"]:
        raise CheckpointError(f"checkpoint {path}: the training data changed "
                              f"({p['batches_per_epoch']} batches per epoch saved, "
                              f"{trainer.batches_per_epoch} now)")


def checkpoint_meta(trainer):
    """The metadata of a checkpoint of ``trainer``'s run (what ``restore`` reads back)."""
    vocab = trainer.train_ds.vocab
    # progress keys: epoch, batch, step, best, best_epoch, bad_epochs, stopped_early,
    # elapsed, batches_per_epoch, epoch_sums (what restore reads back)
    progress = {"epoch": trainer.epoch, "batch": trainer.batch, "step": trainer.step,
                **trainer.early_stopping.state_dict(), "elapsed": trainer.elapsed,
                "batches_per_epoch": trainer.batches_per_epoch,
                "epoch_sums": trainer._acc.state_dict()}
    return {
        "kind": RUN_KIND,
        "plan": trainer.plan,
        "scaling": trainer.scaler.to_json() if trainer.scaler is not None else None,
        "model_config": trainer.model.config.to_dict(),
        "train_config": trainer.config,
        "data_config": data_config(trainer.config),
        "vocab": vocab.to_json() if vocab is not None else None,
        "classes": trainer.train_ds.classes,
        "optimizer": trainer.opt.state_dict()["meta"],
        "schedule": trainer.schedule.state_dict(),
        "progress": progress,
        "metric": {"name": trainer.metric, "mode": trainer.mode},
        "rng": {"bit_generator": "PCG64",
                "note": "shuffle: default_rng([seed, 11, epoch]); dropout: reseeded from "
                        "[seed, 13, epoch, batch, k] before each step"},
    }


def checkpoint_arrays(trainer):
    """The arrays of last.npz: weights, optimizer state, dropout generators."""
    opt = trainer.opt.state_dict()
    rngs = {f"dropout{k}": ckpt.rng_to_array(g)
            for k, g in enumerate(trainer.model.dropout_rngs())}
    return ckpt.join_arrays(model=trainer.model.state_dict(), optim=opt["arrays"], rng=rngs)
