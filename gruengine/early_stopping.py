"""Early stopping on a validation metric, with a JSON-able state for resumable runs.

    stopper = EarlyStopping("max", patience=3)
    for epoch in range(1, epochs + 1):
        if stopper.update(val_acc, epoch):
            save("best.npz")
        if stopper.should_stop:
            break
"""
import numbers

MODES = ("min", "max")
_STATE_KEYS = ("best", "best_epoch", "bad_epochs")


class EarlyStopping:
    """Tracks the best value of a metric (``mode`` 'min' or 'max') and the epochs since it.

    ``update(value, epoch)`` returns whether ``value`` improved on the best so far; after
    ``patience`` updates in a row without improvement ``should_stop`` turns true
    (``patience`` 0: never). A ``value`` of None (no validation data) counts as an
    improvement, so the latest epoch is the best; a NaN never improves on a number.
    """

    def __init__(self, mode="min", patience=3):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(f"patience: expected an integer >= 0, got {patience!r}")
        self.mode, self.patience = mode, patience
        self.best = None          # best value so far (None: none yet, or no validation data)
        self.best_epoch = None    # the epoch that reached it
        self.bad_epochs = 0       # updates since the last improvement
        self._stopped = False

    @property
    def should_stop(self):
        return self._stopped

    def update(self, value, epoch):
        """Record the metric of ``epoch``; return True when it is the new best."""
        improved = value is None or self.best is None or (
            value < self.best if self.mode == "min" else value > self.best)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
            if self.patience and self.bad_epochs >= self.patience:
                self._stopped = True
        return improved

    def state_dict(self):
        """The keys a training checkpoint's 'progress' holds for early stopping."""
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped_early": self._stopped}

    def load_state_dict(self, d):
        """Restore ``state_dict()``; 'stopped_early' may be absent (older checkpoints)."""
        missing = [k for k in _STATE_KEYS if k not in d]
        if missing:
            raise ValueError(f"early stopping state: missing keys {missing}; expected "
                             f"{list(_STATE_KEYS)} and optionally 'stopped_early'")
        self.best, self.best_epoch, self.bad_epochs = d["best"], d["best_epoch"], d["bad_epochs"]
        self._stopped = bool(d.get("stopped_early", False))
