"""The wall-clock budget of a training run (``time_budget`` minutes: the plan's safety net, or
``--time-budget``); 0 or None is no budget.

    fit_to_budget(trainer)       # at the end of an epoch: shorten the run to fit the budget
    out_of_time(trainer)         # before an epoch: True once the budget is spent

Both read a clock, and ranks' clocks differ: under MPI rank 0 decides and every rank takes
its decision (one broadcast at the same point of the loop on every rank), so all ranks run
the same epochs and stop after the same step.
"""

__all__ = ["fit_to_budget", "out_of_time"]


def fit_to_budget(trainer):
    """After the second epoch of a run with a time budget (the first also compiles the
    kernels): if the remaining epochs at the second one's speed would overrun it, shorten
    the run (and its lr schedule) to fit."""
    t, c = trainer, trainer.config
    if not c["time_budget"] or t.epoch > 2 or c["epochs"] <= t.epoch:
        return
    if t.epoch == 1:
        t._t_epoch1 = t.elapsed
        return
    t1 = getattr(t, "_t_epoch1", None)
    if t1 is None:                       # resumed between the two: the plan stands
        return
    per_epoch = max(t.elapsed - t1, 1e-9)
    fit = 2 + max(0, int((c["time_budget"] * 60 - t.elapsed) / per_epoch))
    fit = t.world.bcast(fit)             # rank 0's clock decides for every rank
    if fit < c["epochs"]:
        t._say(f"time budget {c['time_budget']:g} min: {per_epoch:.1f} s per epoch, "
               f"{c['epochs']} epochs planned; shortened to {fit}")
        c["epochs"] = fit
        t.schedule.total_steps = max(fit * t.batches_per_epoch, 1)
        t.run.write_config(c)


def out_of_time(trainer):
    """Whether the budget is spent (checked from the second epoch on), as rank 0 sees it."""
    t, c = trainer, trainer.config
    if not (c["time_budget"] and t.epoch >= 1):
        return False
    if not t.world.bcast(t.elapsed >= c["time_budget"] * 60):
        return False
    t._say(f"time budget of {c['time_budget']:g} min reached after {t.epoch} epochs; stopping")
    return True
