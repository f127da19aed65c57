"""Input scaling of numeric sequences: per-series z-normalisation (UCR practice) and
per-channel standardisation with statistics of the training split only.

    scaler = Scaler(series=True, channels=True).fit(train_ds)   # statistics: train only
    train_ds, test_ds = scaler.transform(train_ds), scaler.transform(test_ds)
    meta["scaling"] = scaler.to_json()                            # into the checkpoint
    x = Scaler.from_json(meta["scaling"]).transform_arrays(x, lengths)

``series``: each series is z-normalised per channel over its own valid steps. What that
removes (the series' level and scale) can be informative (the current an appliance draws),
so ``keep_stats`` appends them as constant channels: per input channel its mean and the log
of its standard deviation (F channels become 3F). ``channels``: every channel, after the
per-series step, is standardised with the mean and standard deviation of the training
split's valid steps. Padding (steps at and past a row's length) stays zero. A constant
series or channel has standard deviation 0 and is left centred (divided by 1), never NaN.
"""
import numpy as np

from .dataset import Dataset

__all__ = ["Scaler"]

# relative floor of the scale channel: log(std + FLOOR * median std) keeps a constant series
# (std 0) a finite value near the others instead of log(0)
FLOOR = 1e-3
# a channel whose spread over the training split is below these is constant up to rounding
# (the level of already z-normalised series is ~1e-9): it is centred, not divided by its
# spread, which would blow rounding noise up to unit variance
NEGLIGIBLE_LEVEL = 1e-4      # level channel: relative to the median within-series std
NEGLIGIBLE_LOG_SCALE = 1e-3  # log-scale channel: series scales alike to 0.1 %
NEGLIGIBLE_RAW = 1e-6        # any other channel: relative to its mean magnitude
KIND = "gruengine-scaler-1"


def _valid(lengths, T):
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]          # (N, T)


def _series_stats(x, lengths):
    # x (N, T, F) -> mean, std (N, F) over each row's valid steps, float64
    valid = _valid(lengths, x.shape[1])[..., None]
    n = np.asarray(lengths, dtype=np.float64)[:, None]
    xs = np.where(valid, x, 0).astype(np.float64)
    mean = xs.sum(axis=1) / n
    var = (np.where(valid, xs - mean[:, None], 0) ** 2).sum(axis=1) / n
    return mean, np.sqrt(var)


class Scaler:
    """Per-series z-normalisation and/or per-channel standardisation (module docstring)."""

    def __init__(self, series=True, channels=True, keep_stats=False):
        self.series, self.channels = bool(series), bool(channels)
        self.keep_stats = bool(keep_stats) and self.series
        self.num_features = None     # F of the raw inputs
        self.floor = None            # absolute floor of the scale channel (keep_stats)
        self.mean = None             # (F_out,) channel statistics (channels)
        self.std = None

    @property
    def out_features(self):
        return None if self.num_features is None else \
            self.num_features * (3 if self.keep_stats else 1)

    def fit(self, ds):
        """Statistics from ``ds`` (the training split); returns self."""
        x = _features(ds)
        self.num_features = int(x.shape[2])
        F = self.num_features
        if self.keep_stats:
            _, series_std = _series_stats(x, ds.lengths)
            med = float(np.median(series_std))
            self.floor = FLOOR * med if med > 0 else 1.0
        if self.channels:
            z = self._series_step(x, ds.lengths).astype(np.float64)
            valid = _valid(ds.lengths, x.shape[1])
            rows = z[valid]                                             # (valid steps, F_out)
            self.mean = rows.mean(axis=0)
            std = rows.std(axis=0)
            tiny = np.zeros_like(std)
            if not self.series:
                tiny[:] = NEGLIGIBLE_RAW * np.abs(self.mean)
            if self.keep_stats:
                tiny[F:2 * F] = NEGLIGIBLE_LEVEL * np.median(series_std, axis=0)
                tiny[2 * F:] = NEGLIGIBLE_LOG_SCALE
            self.std = np.where(std > tiny, std, 1.0)
        return self

    def _series_step(self, x, lengths):
        if not self.series:
            return x.astype(np.float64)
        mean, std = _series_stats(x, lengths)
        z = (x - mean[:, None]) / np.where(std > 0, std, 1.0)[:, None]
        if self.keep_stats:
            T = x.shape[1]
            level = np.repeat(mean[:, None], T, axis=1)
            scale = np.repeat(np.log(std + self.floor)[:, None], T, axis=1)
            z = np.concatenate([z, level, scale], axis=2)
        return z

    def transform_arrays(self, x, lengths):
        """x (N, T, F) float, lengths (N,) -> scaled float32 (N, T, out_features), zero padding."""
        if self.num_features is None:
            raise ValueError("scaler: call fit on the training split first")
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[2] != self.num_features:
            raise ValueError(f"inputs: expected shape (N, T, {self.num_features}), got {x.shape}")
        z = self._series_step(x, lengths)
        if self.channels:
            z = (z - self.mean) / self.std
        z = np.where(_valid(lengths, x.shape[1])[..., None], z, 0)
        return np.ascontiguousarray(z, dtype=np.float32)

    def transform(self, ds):
        """A new Dataset with scaled inputs (the same lengths, targets and metadata)."""
        x = _features(ds)
        return Dataset(self.transform_arrays(x, ds.lengths), ds.lengths, ds.targets, ds.task,
                       ds.num_classes, ds.classes, ds.vocab)

    def to_json(self):
        """A JSON-able dict (stored in checkpoint metadata)."""
        return {"kind": KIND, "series": self.series, "channels": self.channels,
                "keep_stats": self.keep_stats, "num_features": self.num_features,
                "floor": self.floor,
                "mean": None if self.mean is None else [float(v) for v in self.mean],
                "std": None if self.std is None else [float(v) for v in self.std]}

    @classmethod
    def from_json(cls, d):
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise ValueError(f"scaling: expected a dict of kind {KIND!r}, got "
                             f"{d.get('kind') if isinstance(d, dict) else type(d).__name__!r}")
        s = cls(d["series"], d["channels"], d["keep_stats"])
        s.num_features, s.floor = d["num_features"], d["floor"]
        if d["mean"] is not None:
            s.mean, s.std = np.array(d["mean"]), np.array(d["std"])
            if s.mean.shape != (s.out_features,) or s.std.shape != (s.out_features,) \
                    or not (s.std > 0).all():
                raise ValueError(f"scaling: expected {s.out_features} channel means and positive "
                                 f"standard deviations, got {len(d['mean'])} and {len(d['std'])}")
        return s

    def describe(self):
        """A few words for the plan line."""
        parts = []
        if self.series:
            parts.append("per-series z-norm" + (" (level and log-scale kept as channels)"
                                                 if self.keep_stats else ""))
        if self.channels:
            parts.append("per-channel standardisation (train statistics)")
        return " + ".join(parts) or "none"


def _features(ds):
    x = ds.inputs
    if x.ndim != 3:
        raise ValueError(f"inputs: scaling applies to numeric (N, T, F) inputs, got shape {x.shape}")
    return x
