"""The training plan for a dataset: what a run decides from the data when the user has not.

    decisions, reason = make_plan(config, train_ds)   # config: resolved, None = 'decide'
    config.update(decisions)                          # every key is set now

Every configuration key in ``AUTO_KEYS`` whose value is None is decided here from the
training split's size, sequence lengths and input kind; a key the user gave (command line,
config file, ``train({...})``) or a task's own recipe set is never changed. The decisions go
into config.json, so ``--resume`` continues the same plan. ``reason`` is the one line the
trainer prints at the start: what was decided and why.

The rules (docs/cli.md, "The training plan"):

* **Validation.** A held-out split early-stops only where it can measure something: 10 % of
  the training set when that is at least ``VAL_MIN`` examples (early stopping after
  ``PATIENCE`` epochs without gain, the best epoch kept). Below, nothing is held out: the
  model trains on every example with a fixed schedule and the last weights are kept.
* **Budget in optimizer steps**, not epochs: ``STEPS_PER_EXAMPLE`` per training example,
  at least ``STEPS_MIN`` and at most ``STEPS_MAX``, and at most what fits ``BUDGET_S``
  seconds under a cost model of the default model (``step_seconds``) on two cores; then
  rounded up to whole epochs. Deterministic: the same data gives the same plan on any
  machine. A wall-clock safety net (``time_budget`` ``SAFETY_MIN`` minutes unless given)
  shortens the run only where the cost model is far off; then, and only then, the
  result depends on the machine's speed.
* **Batch size** grows with the data: 16 below ``SMALL`` examples, 32 below ``MEDIUM``,
  64 above. Series are batched at random (``bucket`` 1: batch norm needs batches that look
  alike, and length-sorted ones do not: 0.34 instead of 0.82 test accuracy measured on a
  variable-length set); other data in length buckets (little padding).
* **Numeric inputs** (time series): per-series z-normalisation keeping each series' level
  and log-scale as channels, per-channel standardisation (training statistics), a
  convolutional front end (``CONV_CHANNELS`` x ``CONV_KERNELS``; stride 2 in its first
  block for batches longer than ``LONG`` steps, 4 beyond 3 ``LONG``)
  before a bidirectional GRU, mean pooling, the head reading the front end too, and
  training-time augmentation on small sets. Token inputs keep the plain recurrent model.
* **Nearest neighbour.** Series classifiers of up to ``ENSEMBLE_MAX`` training series mix
  each prediction half and half with the label of the nearest training series in the
  model's feature space (``gruengine.neighbours``): a series that nearly repeats a training
  series gets its label, as 1-NN gives it.
* **Ensemble.** Series sets of up to ``ENSEMBLE_MAX`` training series train an ensemble of
  ``ENSEMBLE`` seeds (each member the plan above; their probabilities averaged): on small
  sets the seeds' test accuracies spread by several points, and their mean prediction beats
  each of them. The wall-clock safety net covers the whole ensemble.
"""
import math

import numpy as np

__all__ = ["AUTO_KEYS", "make_plan", "step_seconds", "expected_batch_steps", "FIXED"]

VAL_FRACTION = 0.1
VAL_MIN = 200
PATIENCE = 3
SMALL, MEDIUM = 1000, 5000
STEPS_PER_EXAMPLE = 10
STEPS_MIN, STEPS_MAX = 1000, 3000
BUDGET_S = 150.0
LONG = 600            # padded batch length above which the front end's first block has stride 2
CONV_CHANNELS = 64
CONV_KERNELS = [7, 5, 3]
AUGMENT_MAX = 5000    # augment numeric training sets up to this size
ENSEMBLE = 3          # members of the ensemble of seeds trained on small series sets
ENSEMBLE_MAX = 1000   # ... of up to this many training series

# what a key is when nothing decides it (a plain recurrent model, the pre-plan defaults)
FIXED = {"epochs": 10, "batch_size": 64, "val_fraction": 0.1, "patience": 3, "warmup": 0,
         "bidirectional": False, "pooling": "last", "conv_channels": 0, "conv_stride": 1,
         "conv_skip": False, "series_norm": False, "channel_norm": False, "augment": False,
         "bucket": 50, "time_budget": 0, "ensemble": 1, "neighbours": False}

AUTO_KEYS = tuple(FIXED) + ("steps",)
# the plan's wall-clock safety net (minutes): the step budget targets BUDGET_S, and only a
# machine far slower than the cost model (or data it misjudges) ever reaches this
SAFETY_MIN = 4.5


def step_seconds(batch_size, steps, features=True, channels=1):
    """Cost model of one training step of the plan's model on two cores (seconds): a part
    per time step that does not grow with the batch (the recurrence) and a part per
    sequence step (the convolutions), for ``steps`` time steps after the stride.
    ``channels``: input channels the first convolution reads (after scaling)."""
    # measured with one thread per process on the development machine (CPU seconds):
    # conv 64x[7,5,3] + bidirectional GRU 64 on features; embedding 128 + GRU 64 on tokens.
    # The rest of the model is ~82k multiply-adds per step and row, the first convolution
    # 64 x 7 per input channel: wide multivariate inputs cost in proportion.
    per_t = 2.5e-5 if features else 2e-5
    per_token = 9e-6 * (1 + channels * 448 / 82e3) if features else 3e-6
    return steps * (per_t + per_token * batch_size)


def expected_batch_steps(lengths, batch_size):
    """Expected padded length of a batch of ``batch_size`` rows drawn at random: the mean of
    the largest of ``batch_size`` draws from ``lengths``."""
    L = np.sort(np.asarray(lengths, dtype=np.float64))
    n = len(L)
    if n == 0:
        return 0.0
    q = np.arange(1, n + 1) / n
    return float((L * (q ** batch_size - (q - 1 / n) ** batch_size)).sum())


def make_plan(config, train_ds):
    """(decisions, reason) for the keys of ``AUTO_KEYS`` that ``config`` leaves None."""
    c = config
    todo = {k for k in AUTO_KEYS if c.get(k) is None}
    n = len(train_ds)
    numeric = train_ds.inputs.ndim == 3
    mean_len = float(np.mean(train_ds.lengths)) if n else 0.0
    d = {}

    def decide(key, value):
        if key in todo:
            d[key] = value
        return c[key] if key not in todo else value

    # validation
    n_val = int(round(VAL_FRACTION * n))
    want_val = n_val >= VAL_MIN
    val_fraction = decide("val_fraction", VAL_FRACTION if want_val else 0.0)
    n_val = 0 if not val_fraction else min(max(int(round(val_fraction * n)), 1), n - 1)
    patience = decide("patience", PATIENCE if n_val else 0)
    n_fit = n - n_val
    if n_val:
        why_val = (f"{n_val} held out for validation, early stop after {patience} epochs "
                   f"without gain" if patience else f"{n_val} held out for validation")
    else:
        why_val = (f"nothing held out ({VAL_FRACTION:.0%} would be {int(round(VAL_FRACTION * n))}"
                   f" < {VAL_MIN} examples, too few to rank epochs): fixed schedule on all "
                   f"{n_fit}, last weights kept")

    # batches: random rows for series (batch norm needs batches alike, not length groups),
    # length-bucketed ones (little padding) otherwise
    series = numeric and train_ds.task in ("classify", "regress")
    bs = decide("batch_size", 16 if n_fit < SMALL else 32 if n_fit < MEDIUM else 64)
    bucket = decide("bucket", 1 if series else FIXED["bucket"])
    padded = expected_batch_steps(train_ds.lengths, bs) if bucket == 1 else mean_len

    # model and inputs
    stride = decide("conv_stride", 1 if not series or padded <= LONG else
                    2 if padded <= 3 * LONG else 4)
    conv = decide("conv_channels", CONV_CHANNELS if series else 0)
    decide("conv_skip", bool(series and conv))
    decide("bidirectional", bool(series))
    decide("pooling", "mean" if series else "last")
    decide("series_norm", bool(series))
    decide("channel_norm", bool(numeric))
    aug = decide("augment", bool(series and n_fit <= AUGMENT_MAX))
    members = decide("ensemble", ENSEMBLE if series and n_fit <= ENSEMBLE_MAX else 1)
    neighbours = decide("neighbours", bool(series and train_ds.task == "classify"
                                           and n_fit <= ENSEMBLE_MAX))

    # budget
    per_epoch = max(1, math.ceil(n_fit / bs))
    t_steps = padded / (stride if conv else 1)
    F = train_ds.inputs.shape[2] if numeric else 1
    cost = step_seconds(bs, t_steps, numeric, F * (3 if c.get("series_norm", True) is not False
                                                     and series else 1))
    fit = int(BUDGET_S / cost) if cost > 0 else STEPS_MAX
    steps = c.get("steps")
    if steps is None:
        steps = min(max(STEPS_PER_EXAMPLE * n_fit, STEPS_MIN), STEPS_MAX, max(fit, per_epoch))
        d["steps"] = steps
    epochs = decide("epochs", max(1, math.ceil(steps / per_epoch)))
    decide("warmup", min(100, epochs * per_epoch // 10))
    decide("time_budget", SAFETY_MIN)
    if "epochs" not in todo and "steps" in d:
        d["steps"] = epochs * per_epoch
    total = epochs * per_epoch

    shape = (f"{n} training sequences, mean length {mean_len:.0f}"
             + (f", {train_ds.inputs.shape[2]} channel(s)" if numeric else ""))
    parts = [f"plan: {shape}; {why_val}",
             f"{total} steps ({epochs} epochs x {per_epoch} "
             f"{'random ' if bucket == 1 else ''}batches of {bs})"]
    if "steps" in d and "epochs" in todo and fit < min(max(STEPS_PER_EXAMPLE * n_fit,
                                                          STEPS_MIN), STEPS_MAX):
        parts[-1] += f", capped to fit ~{BUDGET_S / 60:.1f} min on 2 cores"
    if members > 1:
        parts[-1] += f", for each of an ensemble of {members} seeds"
    f = dict(c, **d)                           # the final values, given or decided
    cell = f"{'bidirectional ' if f['bidirectional'] else ''}{f['cell'].upper()} {f['hidden_size']}"
    parts.append("model: " + (f"conv front end {f['conv_channels']}x{list(f['conv_kernels'])}"
                              + (f" (stride {f['conv_stride']})" if f["conv_stride"] > 1 else "")
                              + " + " if f["conv_channels"] else "")
                 + f"{cell}, {f['pooling']} pooling"
                 + (", mixed with the nearest training series" if neighbours else ""))
    if numeric:
        scaling = [w for w, k in (("z-norm per series", "series_norm"),
                                  ("standardised channels", "channel_norm")) if f[k]]
        parts.append("inputs: " + (" + ".join(scaling) or "as read")
                     + (", augmented" if f["augment"] else ""))
    return d, "; ".join(parts)
