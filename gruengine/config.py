"""The run configuration: its keys and defaults, validation, and what it implies for the data
and the model.

    c = resolve_config({"task": "adding", "hidden_size": 32})   # every key, validated
    datasets = load_data(data_config(c))                         # {'train', 'test'}
    model = SequenceModel(model_config(c, datasets["train"], datasets["test"]))
"""
import math

import numpy as np

from ._checks import check_dtype
from .backend import check_device
from .limits import MAX_DATA_BYTES, MAX_TEXT_BYTES, check_fits_memory
from .ensemble import MAX_MEMBERS
from .models import CELLS, POOLINGS, _forget_bias
from .policy import AUTO_KEYS, FIXED
from .schedule import SCHEDULES

DATASETS = ("adding", "copy", "imdb", "npz", "text", "ucr")
OPTIMIZERS = ("adam", "adamw", "sgd")

# Every key a run configuration may hold, with its default (None = the loader's default, or
# for the keys of policy.AUTO_KEYS: decided from the data by gruengine.policy).
DEFAULTS = {
    # data
    "task": "adding", "data": None, "seq_len": None, "n_train": None, "n_test": None,
    "max_len": None, "vocab_size": 20000, "min_count": 1, "truncate": "head", "bigrams": 0,
    "val_fraction": None, "test_fraction": None,
    "max_text_bytes": MAX_TEXT_BYTES, "max_data_bytes": MAX_DATA_BYTES,
    # input scaling of numeric data (gruengine.data.scaling), augmentation (gruengine.augment)
    "series_norm": None, "channel_norm": None, "augment": None,
    # model
    "cell": "gru", "hidden_size": 64, "num_layers": 1, "bidirectional": None, "dropout": 0.0,
    "pooling": None, "embed_dim": 128, "input_proj": 0, "reset_after": True,
    "forget_bias": 0.0,
    "conv_channels": None, "conv_kernels": [7, 5, 3], "conv_stride": None, "conv_skip": None,
    "conv_norm": "batch", "embed_skip": False,
    # optimisation: a budget of optimizer steps (or epochs), and optionally of wall-clock minutes
    "steps": None, "epochs": None, "time_budget": None, "ensemble": None, "neighbours": None,
    "batch_size": None, "lr": 3e-3, "weight_decay": 0.0, "optimizer": "adamw",
    "clip": 1.0, "schedule": "cosine", "warmup": None, "patience": None, "seed": 0,
    "device": "cpu", "dtype": "float32", "bucket": None, "eval_batch_size": 256,
    # success criterion printed at the end: test MSE below it (regress) or accuracy above it
    "target": None,
}

# Defaults per dataset, under explicit settings: ``gruengine train`` with no options runs the
# embedded adding problem (T=50), which reaches test MSE < 0.01 in well under two minutes.
# The synthetic tasks keep fixed recipes (policy.FIXED: nothing is decided from the data).
TASK_DEFAULTS = {
    "adding": dict(FIXED, seq_len=50, n_train=8000, n_test=1000, hidden_size=64, epochs=6,
                   batch_size=64, lr=5e-3, warmup=50, target=0.01),
    "copy": dict(FIXED),
}

# The keys a resumed run may change: none of them alters the batches, weights or schedule
# already behind it.
RESUME_OVERRIDES = ("device", "epochs", "eval_batch_size", "patience")
TOKEN_TASKS = ("copy", "imdb", "text")
# recurrent weight matrices per cell (gate blocks of W_ih / W_hh)
_GATES = {"gru": 3, "lstm": 4, "mingru": 2}
_INT64_MAX = 2 ** 63 - 1


def resolve_config(config):
    """Fill a partial configuration with the task's defaults, then the global ones; validate.

    With ``data`` but no ``task``, the task is guessed from the path (``data.guess_name``);
    one text or npz file without ``test_fraction`` gets ``data.default_test_fraction``.
    """
    from .data import default_test_fraction, guess_name
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config: unknown keys {unknown}; known keys are {sorted(DEFAULTS)}")
    if config.get("task") is None and isinstance(config.get("data"), str):
        config["task"] = guess_name(config["data"])
    task = config.get("task", DEFAULTS["task"])
    if config.get("test_fraction") is None:
        config["test_fraction"] = default_test_fraction(task, config.get("data"))
    out = dict(DEFAULTS)
    out.update(TASK_DEFAULTS.get(task, {}))
    if config.get("steps") is not None and config.get("epochs") is None:
        out["epochs"] = None        # a budget of steps replaces the task's epochs
    out.update({k: v for k, v in config.items()})
    validate_config(out)
    return out


def resume_config(saved, overrides=None):
    """The saved configuration of a run with ``overrides`` applied; a key outside
    ``RESUME_OVERRIDES`` may only be given with its saved value."""
    # a run saved before the plan existed trained with the fixed defaults of its keys
    config = dict(FIXED, **saved)
    for k, v in (overrides or {}).items():
        if k not in RESUME_OVERRIDES and config.get(k) != v:
            raise ValueError(f"resume: {k} cannot change when resuming a run "
                             f"(saved {config.get(k)!r}, given {v!r}); only "
                             f"{sorted(RESUME_OVERRIDES)} may")
        config[k] = v
    return config


def _num(name, v, lo, lo_open=False, integer=False, hi=None, hi_open=True):
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(v, bool) or not isinstance(v, ok_type) or (not integer and not math.isfinite(v)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name}: expected {kind} {'>' if lo_open else '>='} {lo}, got {v!r}")
    if (v <= lo) if lo_open else (v < lo):
        raise ValueError(f"{name}: expected a value {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and ((v >= hi) if hi_open else (v > hi)):
        raise ValueError(f"{name}: expected a value {'<' if hi_open else '<='} {hi}, got {v!r}")
    if integer and v > _INT64_MAX:      # every size ends up in an int64 array shape
        raise ValueError(f"{name}: expected an integer <= {_INT64_MAX} (64 bits), got {v!r}")


def _choice(name, v, allowed):
    if v not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {v!r}")


def validate_config(c, complete=False):
    """Raise ValueError naming the first bad hyperparameter (before any data is loaded).

    A key of ``policy.AUTO_KEYS`` may be None (the plan decides it) unless ``complete``."""
    if complete:
        missing = [k for k in AUTO_KEYS if c.get(k) is None and k != "steps"]
        if missing:
            raise ValueError(f"config: {missing} left undecided; expected values for every key")
    _choice("task", c["task"], DATASETS)
    _choice("cell", c["cell"], tuple(CELLS))
    _choice("optimizer", c["optimizer"], OPTIMIZERS)
    _choice("schedule", c["schedule"], SCHEDULES)
    _choice("truncate", c["truncate"], ("head", "tail"))
    _choice("conv_norm", c["conv_norm"], ("batch", "layer"))
    if c["pooling"] is not None:
        _choice("pooling", c["pooling"], POOLINGS)
    for k in ("hidden_size", "num_layers", "embed_dim", "eval_batch_size", "min_count"):
        _num(k, c[k], 1, integer=True)
    for k in ("seq_len", "n_train", "n_test", "max_len", "epochs", "batch_size", "steps",
              "conv_stride", "bucket"):
        if c[k] is not None:
            _num(k, c[k], 1, integer=True)
    for k in ("max_text_bytes", "max_data_bytes"):
        _num(k, c[k], 1, integer=True)
    _num("vocab_size", c["vocab_size"], 2, integer=True)
    for k in ("seed", "input_proj", "bigrams"):
        _num(k, c[k], 0, integer=True)
    for k in ("warmup", "patience", "conv_channels"):
        if c[k] is not None:
            _num(k, c[k], 0, integer=True)
    if c["ensemble"] is not None:
        _num("ensemble", c["ensemble"], 1, integer=True, hi=MAX_MEMBERS, hi_open=False)
    if c["time_budget"] is not None:
        _num("time_budget", c["time_budget"], 0)
    if not isinstance(c["conv_kernels"], (list, tuple)) or not c["conv_kernels"]:
        raise ValueError(f"conv_kernels: expected a non-empty list of kernel sizes, "
                         f"got {c['conv_kernels']!r}")
    for k in c["conv_kernels"]:
        _num("conv_kernels", k, 1, integer=True)
    _num("lr", c["lr"], 0, lo_open=True)
    _num("weight_decay", c["weight_decay"], 0)
    _num("clip", c["clip"], 0)
    _num("dropout", c["dropout"], 0, hi=1)
    if c["val_fraction"] is not None:
        _num("val_fraction", c["val_fraction"], 0, hi=1)
    if c["test_fraction"] is not None:
        _num("test_fraction", c["test_fraction"], 0, lo_open=True, hi=1)
    if c["target"] is not None:
        _num("target", c["target"], 0)
    for k in ("bidirectional", "reset_after", "conv_skip", "series_norm", "channel_norm",
              "augment", "embed_skip", "neighbours"):
        if c[k] is not None and not isinstance(c[k], bool):
            raise ValueError(f"{k}: expected true or false, got {c[k]!r}")
    _forget_bias(c["forget_bias"], c["cell"])
    if c["data"] is not None and not isinstance(c["data"], str):
        raise ValueError(f"data: expected a path string, got {c['data']!r}")
    check_dtype("dtype", c["dtype"])
    check_device(c["device"])
    _check_model_memory(c)


def _check_model_memory(c):
    """A model too large for this machine's memory is refused before anything is allocated:
    a lower bound of its parameters (the recurrent stack, and the embedding of a text task)
    times weights, gradients and two optimizer moments."""
    H, L, D, G = c["hidden_size"], c["num_layers"], 2 if c["bidirectional"] else 1, \
        _GATES.get(c["cell"], 3)
    first = c["embed_dim"] if c["task"] in TOKEN_TASKS else max(c["input_proj"], 1)
    recurrent = 0
    for layer in range(L):
        inp = first if layer == 0 else D * H
        recurrent += D * G * H * (inp + (0 if c["cell"] == "mingru" else H) + 2)
    embedding = ((c["vocab_size"] + c["bigrams"]) * c["embed_dim"]
                 if c["task"] in ("imdb", "text") else 0)
    n = recurrent + embedding
    name, hint = (("hidden_size", "lower --hidden-size or --num-layers") if recurrent >= embedding
                  else ("embed_dim", "lower --embed-dim or --vocab-size"))
    check_fits_memory(name, n * np.dtype(c["dtype"]).itemsize * 4,
                      f"a model of {n:.3g} parameters (weights, gradients, optimizer moments)",
                      hint)


def check_task(task):
    """``task`` if it names a dataset loader, else a one-line ValueError."""
    _choice("task", task, DATASETS)
    return task


def data_config(c):
    """The arguments of ``load_dataset`` that a configuration implies (stored in checkpoints)."""
    return {"name": c["task"], "path": c["data"], "seed": c["seed"], "max_len": c["max_len"],
            "vocab_size": c["vocab_size"], "min_count": c["min_count"], "truncate": c["truncate"],
            "bigrams": c["bigrams"],
            "n_train": c["n_train"], "n_test": c["n_test"], "seq_len": c["seq_len"],
            "test_fraction": c["test_fraction"],
            "max_text_bytes": c["max_text_bytes"], "max_data_bytes": c["max_data_bytes"]}


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
         "reset_after": c["reset_after"], "forget_bias": c["forget_bias"],
         "pooling": c["pooling"], "dtype": c["dtype"],
         "device": c["device"], "seed": c["seed"], "conv_channels": c["conv_channels"],
         "conv_kernels": list(c["conv_kernels"]), "conv_stride": c["conv_stride"],
         "conv_skip": c["conv_skip"], "conv_norm": c["conv_norm"]}
    if x.ndim == 2:
        if train_ds.vocab is not None:
            vocab_size, pad = len(train_ds.vocab), 0
        else:  # synthetic token tasks: every id is a real symbol, no padding row
            hi = max(int(x.max()), int(test_ds.inputs.max()) if test_ds is not None else 0)
            vocab_size, pad = max(hi + 1, 2), None
        m.update(input="tokens", vocab_size=vocab_size, embed_dim=c["embed_dim"], padding_idx=pad,
                 embed_skip=bool(c["embed_skip"]))
    else:
        m.update(input="features", num_features=int(x.shape[2]), input_proj=c["input_proj"])
    return m
