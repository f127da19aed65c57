"""Learning-rate schedules: a pure function of the step (cosine) or of the validation history
(plateau). Both expose ``lr(step)``, ``epoch_end(metric)`` and a JSON-able state, so a
resumed run continues on exactly the same curve.
"""
import math

SCHEDULES = ("cosine", "plateau", "none")


class Schedule:
    """Linear warm-up over ``warmup`` steps, then

    - ``'cosine'``: cosine decay from ``base_lr`` to ``min_ratio * base_lr`` at ``total_steps``;
    - ``'plateau'``: constant, multiplied by ``factor`` whenever the validation metric has not
      improved for ``patience`` epochs (``mode`` 'min' or 'max');
    - ``'none'``: constant.
    """

    def __init__(self, name, base_lr, total_steps, warmup=0, min_ratio=0.0,
                 factor=0.5, patience=1, mode="min"):
        if name not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {name!r}")
        if not base_lr > 0:
            raise ValueError(f"lr: expected a number > 0, got {base_lr!r}")
        if warmup < 0:
            raise ValueError(f"warmup: expected an integer >= 0, got {warmup!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        self.name, self.base_lr = name, float(base_lr)
        self.total_steps, self.warmup = max(int(total_steps), 1), int(warmup)
        self.min_ratio, self.factor, self.patience, self.mode = min_ratio, factor, patience, mode
        self.scale = 1.0          # plateau multiplier
        self.best = None
        self.bad_epochs = 0

    def lr(self, step):
        """Learning rate for the 0-based optimizer step ``step``."""
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.name == "cosine":
            span = max(self.total_steps - self.warmup, 1)
            frac = min(max(step - self.warmup, 0) / span, 1.0)
            decay = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
            return self.base_lr * warm * decay
        return self.base_lr * warm * self.scale

    def epoch_end(self, metric):
        """Feed the epoch's validation metric (``None`` when there is no validation split)."""
        if self.name != "plateau" or metric is None:
            return
        better = (self.best is None or (metric < self.best if self.mode == "min"
                                        else metric > self.best))
        if better:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience - 1:
                self.scale *= self.factor
                self.bad_epochs = 0

    def state_dict(self):
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, d):
        self.scale, self.best, self.bad_epochs = float(d["scale"]), d["best"], int(d["bad_epochs"])


def clipped_warmup(warmup, total_steps):
    """The warm-up a run of ``total_steps`` uses: ``warmup``, or a tenth of the run (at least
    one step) when ``warmup`` is not shorter than the run."""
    if warmup < total_steps:
        return warmup
    return max(total_steps // 10, 1)
