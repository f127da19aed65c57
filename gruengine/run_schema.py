"""The metadata of a checkpoint, checked field by field before anything reads it.

    check_run_meta(meta, path)     # last.npz of a training run: everything a resume reads
    check_model_meta(meta, path)   # any checkpoint a model is loaded from (evaluate, predict)

A schema is a dict of field -> spec; a spec is a ``(description, predicate)`` pair or a nested
schema. The first field that does not fit raises ``CheckpointError`` naming the file and the
field's dotted path (``progress.epoch``), what was expected and what was found. Then the
fields are checked against each other: the progress counters against the optimizer's step
count, and the training configuration against the model configuration.
"""
import math

from .errors import CheckpointError


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


INT0 = ("an integer >= 0", lambda v: _is_int(v) and v >= 0)
INT1 = ("an integer >= 1", lambda v: _is_int(v) and v >= 1)
NUMBER = ("a number", _is_num)
SECONDS = ("a finite number >= 0", lambda v: _is_num(v) and math.isfinite(v) and v >= 0)
BOOL = ("true or false", lambda v: isinstance(v, bool))
STRING = ("a string", lambda v: isinstance(v, str))
OBJECT = ("an object", lambda v: isinstance(v, dict))
STRINGS = ("a list of strings",
           lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v))


def optional(spec):
    """``spec`` or null."""
    return (spec[0] + " or null", lambda v: v is None or spec[1](v))


EPOCH_SUMS = {"loss_sum": NUMBER, "weight": INT0, "correct": INT0, "sq_err": NUMBER,
              "count": INT0, "tokens": INT0, "seconds": SECONDS}
PROGRESS = {"epoch": INT0, "batch": INT0, "step": INT0, "best": optional(NUMBER),
            "best_epoch": optional(INT0), "bad_epochs": INT0, "stopped_early": BOOL,
            "elapsed": SECONDS, "batches_per_epoch": INT1, "epoch_sums": EPOCH_SUMS}
RUN = {"kind": STRING, "model_config": OBJECT, "train_config": OBJECT, "data_config": OBJECT,
       "vocab": optional(OBJECT), "classes": optional(STRINGS),
       "optimizer": {"type": STRING, "step": INT0}, "schedule": OBJECT, "progress": PROGRESS}
MODEL = {"model_config": OBJECT, "train_config": optional(OBJECT),
         "data_config": optional(OBJECT), "vocab": optional(OBJECT),
         "classes": optional(STRINGS)}
# fields a checkpoint may lack: written before the field existed (a run's), or not about the
# model (any checkpoint a model loads from)
RUN_OPTIONAL = {"progress.stopped_early"}
MODEL_OPTIONAL = {"train_config", "data_config", "vocab", "classes"}
# run configuration keys the model configuration repeats (the model is built from the latter)
DEVICES = ("cpu", "cuda", "auto", "reference")
MODEL_KEYS = ("cell", "hidden_size", "num_layers", "bidirectional", "dropout", "reset_after",
              "pooling", "dtype", "seed")


def check(value, schema, path, optional=(), prefix=""):
    """Raise CheckpointError at the first field of ``value`` that ``schema`` does not allow;
    ``optional`` names (dotted) the fields that may be absent."""
    if not isinstance(value, dict):
        raise _field_error(path, prefix.rstrip(".") or "metadata", "an object", value)
    for key, spec in schema.items():
        name = prefix + key
        if key not in value:
            if name in optional:
                continue
            raise CheckpointError(f"checkpoint {path}: metadata field {name} is missing")
        v = value[key]
        if isinstance(spec, dict):
            check(v, spec, path, optional, name + ".")
        elif not spec[1](v):
            raise _field_error(path, name, spec[0], v)


def _field_error(path, name, expected, got):
    shown = repr(got)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CheckpointError(f"checkpoint {path}: metadata field {name}: expected {expected}, "
                           f"got {shown}")


def _wrap(path, field, fn, *args):
    try:
        return fn(*args)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: metadata field {field}: "
                              f"{' '.join(str(e).split())}") from None


def check_model_meta(meta, path):
    """What loading a model reads: a valid model configuration, and the optional vocabulary,
    class names and configurations of the right types."""
    from .models import ModelConfig
    check(meta, MODEL, path, MODEL_OPTIONAL)
    m = meta["model_config"]
    if m.get("device", "cpu") not in DEVICES:
        raise _field_error(path, "model_config.device", f"one of {list(DEVICES)}", m["device"])
    # the device is chosen when the model is loaded (a GPU run loads on the CPU): not here
    _wrap(path, "model_config", lambda d: ModelConfig.from_dict(dict(d, device="cpu")).validate(),
          m)
    if meta.get("vocab") is not None:
        from .data.text import Vocab
        _wrap(path, "vocab", Vocab.from_json, meta["vocab"])


def check_run_meta(meta, path):
    """Everything resuming a run reads, each field alone and then against each other.
    Returns the resolved training configuration."""
    from .config import resolve_config
    check(meta, RUN, path, RUN_OPTIONAL)
    check_model_meta(meta, path)
    p = meta["progress"]
    bpe = p["batches_per_epoch"]
    if p["batch"] > bpe:
        raise _field_error(path, "progress.batch", f"an integer in [0, {bpe}] (batches per "
                           f"epoch)", p["batch"])
    done = p["epoch"] * bpe + p["batch"]
    if p["step"] != done:
        raise _field_error(path, "progress.step", f"{done} (epoch {p['epoch']} x {bpe} batches "
                           f"+ batch {p['batch']})", p["step"])
    if meta["optimizer"]["step"] != done:
        raise _field_error(path, "optimizer.step", f"{done} (the progress counters' step; the "
                           f"weights and the progress disagree)", meta["optimizer"]["step"])
    config = _wrap(path, "train_config", resolve_config, meta["train_config"])
    m = meta["model_config"]
    keys = MODEL_KEYS + (("embed_dim",) if m.get("input") == "tokens" else ("input_proj",))
    for k in keys:
        if k in m and config[k] != m[k]:
            raise CheckpointError(f"checkpoint {path}: metadata field train_config.{k} is "
                                  f"{config[k]!r}, model_config.{k} is {m[k]!r}; the "
                                  f"configurations disagree")
    return config
