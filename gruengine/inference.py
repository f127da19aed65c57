"""Using a model: metrics over a dataset, and loading, evaluating and running checkpoints.

    model, meta = load_model("runs/imdb")                  # its best.npz, in eval mode
    res = evaluate(model, test_ds)                         # {'loss', 'acc' | 'mse', 'n', 'tokens'}
    res = evaluate_checkpoint("runs/imdb/best.npz")        # on the run's own test split
    out = predict_texts("runs/imdb", ["A moving film."])   # [{'label', 'probability', 'probs'}]
    out = predict_series("runs/ucr", x, lengths)           # raw numeric series, scaled here

``world`` (``gruengine.distributed``): the MPI ranks split the batches; rank 0 reads the
checkpoint and gets the results, the same as one process computes.
"""
import os
import time

import numpy as np

from . import checkpoint as ckpt
from .batching import make_batch, sorted_batches
from .config import check_task, load_data
from .distributed import LOCAL, data_digest
from .errors import CheckpointError
from .models import ModelConfig, SequenceModel
from .progress import Progress
from .rundir import BEST
from .run_schema import check_model_meta

TOKEN_TASKS = ("copy", "imdb", "text")      # the loaders whose inputs are token ids
TEXT_TASKS = ("imdb", "text")               # ... built with a vocabulary
SYNTHETIC_TASKS = ("adding", "copy")


def val_metric(task):
    """(name, mode) of the validation metric early stopping watches."""
    return ("mse", "min") if task == "regress" else ("acc", "max")


class MetricSums:
    """Running sums over batches (a training epoch's are saved in checkpoints, so a resumed
    epoch reports the same): the loss weighted by the examples or steps ``score`` counts."""

    def __init__(self, loss_sum=0.0, weight=0, correct=0, sq_err=0.0, count=0, tokens=0,
                 seconds=0.0):
        self.loss_sum, self.weight, self.correct, self.sq_err = loss_sum, weight, correct, sq_err
        self.count, self.tokens, self.seconds = count, tokens, seconds

    def add(self, loss, s, tokens, seconds=0.0):
        """``loss``: the batch's mean loss; ``s``: ``SequenceModel.score`` of the batch."""
        self.loss_sum += loss * s["count"]
        self.weight += s["count"]
        self.correct += s.get("correct", 0)
        self.sq_err += s.get("sq_err", 0.0)
        self.count += s["count"]
        self.tokens += tokens
        self.seconds += seconds

    def loss(self):
        return self.loss_sum / self.weight if self.weight else None

    def sums(self):
        return {"correct": self.correct, "sq_err": self.sq_err, "count": self.count}

    def tok_s(self):
        return self.tokens / self.seconds if self.seconds > 0 else None

    def state_dict(self):
        return {"loss_sum": self.loss_sum, "weight": self.weight, "correct": self.correct,
                "sq_err": self.sq_err, "count": self.count, "tokens": self.tokens,
                "seconds": self.seconds}


def metric_stats(task, loss, sums):
    """{'loss'?, 'mse' (regress) | 'acc'} from ``MetricSums.sums()``; no metric without counts."""
    out = {} if loss is None else {"loss": loss}
    if not sums.get("count"):
        return out
    if task == "regress":
        out["mse"] = sums["sq_err"] / sums["count"]
    else:
        out["acc"] = sums["correct"] / sums["count"]
    return out


def evaluate(model, ds, batch_size=256, quiet=True, desc="eval", stream=None, world=None):
    """Loss and accuracy (classify/tag) or MSE (regress) of ``model`` on ``ds``.

    Returns {'loss': , 'acc': } or {'loss': , 'mse': }, plus 'n' (examples) and 'tokens'.
    ``world``: each rank computes every N-th batch; the per-batch sums are added in batch
    order on every rank, so the result has the same bits for any number of ranks.
    """
    world = world or LOCAL
    was_training = model.training
    model.eval()
    task = model.config.task
    mine = MetricSums()
    batches = sorted_batches(ds.lengths, batch_size)
    rows = np.zeros((len(batches), 5))      # per batch: loss, count, correct, sq_err, tokens
    t0 = time.perf_counter()
    share = world.share(len(batches))
    bar = Progress(len(share), desc=desc, enabled=not quiet, stream=stream)
    try:
        for b in share:
            x, L, y = make_batch(ds, batches[b], model.dtype)
            out = model.forward(x, L)
            loss, _ = model.loss_and_grad(out, y, L)
            s = model.score(out, y, L)
            rows[b] = float(loss), s["count"], s.get("correct", 0), s.get("sq_err", 0.0), L.sum()
            mine.add(float(loss), s, int(L.sum()))
            bar.update(1, **metric_stats(task, mine.loss_sum / max(mine.weight, 1), mine.sums()),
                       tok_s=mine.tokens / max(time.perf_counter() - t0, 1e-9))
    finally:
        bar.close()
        if was_training:
            model.train()
    world.allreduce(rows)                   # each row comes from one rank; the others add 0
    acc = MetricSums()
    for loss, count, correct, sq_err, tokens in rows.tolist():
        acc.add(loss, {"count": int(count), "correct": int(correct), "sq_err": sq_err},
                int(tokens))
    res = {"loss": acc.loss_sum / max(acc.weight, 1), "n": len(ds), "tokens": acc.tokens}
    res.update(metric_stats(task, None, acc.sums()))
    return res


def against_target(metric, value, target):
    """{'target', 'passed'} of a test result against ``target`` (an MSE below it, an accuracy
    at or above it); {} without a target."""
    if target is None:
        return {}
    return {"target": target, "passed": bool(value < target if metric == "mse" else
                                             value >= target)}


def baseline(task, train_ds, test_ds):
    """What a model that ignores its input scores on the test set: the training mean (regress,
    as MSE) or the most frequent training class (classify/tag, as accuracy)."""
    if task == "regress":
        mean = train_ds.targets.mean(axis=0, dtype=np.float64)
        return {"mse": float(((test_ds.targets - mean) ** 2).mean())}
    if task == "classify":
        top = np.bincount(train_ds.targets, minlength=train_ds.num_classes).argmax()
        return {"acc": float((test_ds.targets == top).mean())}
    mask = SequenceModel.step_mask(train_ds.lengths, *train_ds.targets.shape)
    top = np.bincount(train_ds.targets[mask], minlength=train_ds.num_classes).argmax()
    tmask = SequenceModel.step_mask(test_ds.lengths, *test_ds.targets.shape)
    return {"acc": float((test_ds.targets[tmask] == top).mean())}


def _checkpoint_path(path):
    # a run folder stands for its best.npz
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, BEST)):
        path = os.path.join(path, BEST)
    return path


def load_model(path, device=None, world=None):
    """A SequenceModel (an ``EnsembleModel`` for an ensemble's best.npz) and its checkpoint
    metadata from a .npz (best.npz or last.npz), or from a run folder (its best.npz).

    ``device``: 'cpu', 'cuda' or 'auto' places the model there; None keeps the device the
    checkpoint was trained on, or 'cpu' when that was 'cuda' and no GPU is usable here, so a
    checkpoint written on one device loads on the other with the same weights.
    ``world``: rank 0 reads the file and sends it to the others."""
    world, loaded = world or LOCAL, None
    with world.agreed():
        if world.rank == 0:
            path = _checkpoint_path(path)
            loaded = ckpt.load_checkpoint(path)
            check_model_meta(loaded[1], path)
    arrays, meta = world.bcast(loaded)
    with world.agreed():
        return _build_model(path, arrays, meta, device)


def _build_model(path, arrays, meta, device):
    from .backend import check_device, cuda_available
    mcfg = dict(meta["model_config"])
    if device is not None:
        mcfg["device"] = check_device(device)
    elif mcfg.get("device") == "cuda" and not cuda_available():
        mcfg["device"] = "cpu"
    try:
        if meta.get("ensemble") is not None:        # several members, probabilities averaged
            from .ensemble import EnsembleModel, unpack
            k, states = unpack(arrays, meta, path)
            members = [SequenceModel(ModelConfig.from_dict(mcfg)) for _ in range(k)]
            for m, state in zip(members, states):
                m.load_state_dict(state)
            return EnsembleModel(members).eval(), meta
        model = SequenceModel(ModelConfig.from_dict(mcfg))
        model.load_state_dict(ckpt.split_arrays(arrays, "model"))
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {' '.join(str(e).split())}") from None
    model.eval()
    return model, meta


def vocab_from_meta(meta):
    """The ``Vocab`` a checkpoint's metadata stores, or None (not a text model)."""
    if meta.get("vocab") is None:
        return None
    from .data.text import Vocab
    return Vocab.from_json(meta["vocab"])


def evaluate_checkpoint(path, data=None, task=None, batch_size=256, quiet=True, device=None,
                        world=None):
    """Evaluate a checkpoint on the test split of its own data configuration, or of
    ``data`` (a path) / ``task`` (a dataset name) when given. Returns ``evaluate``'s dict
    plus 'metric' and 'task'. ``device``: see ``load_model``. ``world``: every rank loads
    the data (refused unless all loaded the same) and evaluates its share of it."""
    world = world or LOCAL
    model, meta = load_model(path, device, world)
    with world.agreed():
        ds = _test_split(model, meta, path, data, task)
    if world.size > 1:
        world.check_same({"test data": data_digest(ds)})
    res = evaluate(model, ds, batch_size, quiet=quiet or world.rank != 0, desc="test",
                   world=world)
    res["metric"], res["task"] = val_metric(model.config.task)[0], model.config.task
    return res


def _test_split(model, meta, path, data, task):
    dcfg = dict(meta.get("data_config") or {})
    if not dcfg:
        raise CheckpointError(f"checkpoint {path}: metadata has no data_config")
    vocab = vocab_from_meta(meta)
    if task is not None and check_task(task) != dcfg.get("name"):
        reads = "token ids" if model.config.input == "tokens" else "feature sequences"
        if (task in TOKEN_TASKS) != (model.config.input == "tokens"):
            raise ValueError(f"task: the checkpoint {path} reads {reads} (trained on "
                             f"{dcfg.get('name')!r}); {task!r} data does not fit it")
        dcfg["name"] = task
        # options of the training loader that the new one does not take
        if task not in SYNTHETIC_TASKS:
            dcfg["seq_len"] = None
        if task not in TEXT_TASKS:
            dcfg["max_len"], vocab = None, None
    from .data import default_test_fraction
    if data is not None:
        dcfg["path"] = os.fspath(data)
        dcfg["test_fraction"] = default_test_fraction(dcfg["name"], dcfg["path"])
    elif task is not None:
        dcfg["test_fraction"] = default_test_fraction(dcfg["name"], dcfg.get("path"))
    ds = scale_dataset(meta, load_data(dcfg, vocab=vocab)["test"])
    _check_fits(model, ds, path)
    return ds


def scaler_from_meta(meta):
    """The input ``Scaler`` a checkpoint's metadata stores, or None (inputs go in as they are)."""
    if meta.get("scaling") is None:
        return None
    from .data.scaling import Scaler
    return Scaler.from_json(meta["scaling"])


def scale_dataset(meta, ds):
    """``ds`` with the checkpoint's input scaling applied (statistics of its training split)."""
    scaler = scaler_from_meta(meta)
    return ds if scaler is None else scaler.transform(ds)


def _check_fits(model, ds, path):
    c = model.config
    if ds.task is not None and ds.task != c.task:
        raise ValueError(f"data: the checkpoint {path} was trained for task {c.task!r}, "
                         f"the data is a {ds.task!r} task")
    if c.input == "features" and (ds.inputs.ndim != 3 or ds.inputs.shape[2] != c.num_features):
        raise ValueError(f"data: the model reads {c.num_features} features per step, the data "
                         f"has inputs of shape {ds.inputs.shape}")
    if c.input == "tokens" and ds.inputs.ndim != 2:
        raise ValueError(f"data: the model reads token ids, the data has inputs of shape "
                         f"{ds.inputs.shape}")


def predict_texts(path, texts, batch_size=256, device=None, world=None):
    """Classify ``texts`` (list of str) with a text checkpoint.

    Returns one dict per text: {'label', 'probability', 'probs'} (classify) or
    {'value'} (regress), in input order. ``world``: the texts of rank 0 (the others pass
    None) are split by batches over the ranks; rank 0 returns every result, the others None.
    """
    from .data.text import encode_texts
    world = world or LOCAL
    model, meta = load_model(path, device, world)
    texts = world.bcast(texts)
    with world.agreed():
        vocab = vocab_from_meta(meta)
        if vocab is None or model.config.input != "tokens":
            raise ValueError(f"predict: the checkpoint {path} was not trained on text (task "
                             f"{meta.get('data_config', {}).get('name')!r}); use gruengine "
                             f"evaluate")
        if model.config.task == "tag":
            raise ValueError("predict: per-step (tag) models are not supported by predict")
        if not texts:
            raise ValueError("texts: expected at least one input text, got none")
    tc = meta.get("train_config") or {}
    ids, lengths = encode_texts(list(texts), vocab, tc.get("max_len"), tc.get("truncate", "head"))
    return _predict(model, meta, ids, lengths, batch_size, world)


def _predict(model, meta, inputs, lengths, batch_size, world):
    """One dict per row of ``inputs`` (already scaled), in input order, on rank 0 (the
    others compute their share of the batches and get None)."""
    classes = meta.get("classes") or [str(i) for i in range(model.config.num_outputs)]
    mine = {}
    batches = sorted_batches(lengths, batch_size)
    for b in world.share(len(batches)):
        idx = batches[b]
        L = np.ascontiguousarray(lengths[idx])
        x = np.ascontiguousarray(inputs[idx, :int(L.max())])
        p = model.predict_proba(model.forward(x, L))
        for row, i in enumerate(idx.tolist()):   # formatting results, one dict per row
            if model.config.task == "regress":
                mine[i] = {"value": [float(v) for v in p[row]]}
            else:
                k = int(p[row].argmax())
                mine[i] = {"label": str(classes[k]), "probability": float(p[row, k]),
                           "probs": {str(classes[j]): float(p[row, j]) for j in range(p.shape[1])}}
    parts = world.gather(mine)
    if parts is None:
        return None
    out = [None] * len(inputs)
    for part in parts:
        for i, r in part.items():
            out[i] = r
    return out


def checkpoint_to_safetensors(checkpoint, path):
    """``gruengine export CKPT model.safetensors``: a checkpoint's (a .npz, or a run folder:
    its best.npz) model weights and metadata -> ``path``; returns the path."""
    from .safetensors import save_checkpoint_safetensors
    checkpoint = _checkpoint_path(checkpoint)
    arrays, meta = ckpt.load_checkpoint(checkpoint)
    if "model_config" not in meta:
        raise CheckpointError(f"checkpoint {checkpoint}: metadata has no model_config")
    if meta.get("ensemble") is not None:
        raise ValueError(f"checkpoint {checkpoint}: an ensemble of several models; a "
                         f".safetensors file holds one: export a member's best.npz (the "
                         f"run's member-1/, ...), or the whole ensemble to .onnx")
    return save_checkpoint_safetensors(path, ckpt.split_arrays(arrays, "model"), meta)


def predict_series(path, inputs, lengths=None, batch_size=256, device=None, world=None):
    """Classify (or regress) raw numeric series with a feature checkpoint.

    ``inputs`` (N, T, F) numbers as the training data were read (the checkpoint's input
    scaling is applied here), ``lengths`` (N,) or None (all T). Returns one dict per series,
    as ``predict_texts``: {'label', 'probability', 'probs'} or {'value'}. ``world``: as
    ``predict_texts`` (rank 0's inputs; rank 0 gets every result, the others None)."""
    world = world or LOCAL
    model, meta = load_model(path, device, world)
    inputs, lengths = world.bcast((inputs, lengths))
    return _predict_features(model, meta, path, inputs, lengths, batch_size, world)


def _predict_features(model, meta, path, inputs, lengths, batch_size, world):
    from ._checks import check_array, check_lengths
    with world.agreed():
        if model.config.input != "features":
            raise ValueError(f"predict: the checkpoint {path} reads token ids; use "
                             f"predict_texts")
        if model.config.task == "tag":
            raise ValueError("predict: per-step (tag) models are not supported by predict")
        inputs = np.asarray(inputs)
        if inputs.ndim == 2:
            inputs = inputs[:, :, None]
        check_array("inputs", inputs, (None, None, None))
        lengths = check_lengths("lengths", lengths, *inputs.shape[:2])
        scaler = scaler_from_meta(meta)
        if scaler is not None:
            x = scaler.transform_arrays(inputs, lengths)
        else:
            x = np.where(np.arange(inputs.shape[1])[None, :, None] < lengths[:, None, None],
                         inputs, 0)
        _check_fits(model, _Rows(x), path)
    return _predict(model, meta, np.ascontiguousarray(x, dtype=model.dtype), lengths, batch_size,
                    world)


def predict_data(path, data, task=None, batch_size=256, device=None, world=None):
    """``predict_series`` on the test split of ``data`` (a path the checkpoint's loader
    reads, e.g. a UCR folder or file pair); its labels are not used. ``world``: every rank
    loads the data (refused unless all loaded the same); rank 0 gets the results."""
    world = world or LOCAL
    model, meta = load_model(path, device, world)
    with world.agreed():
        dcfg = dict(meta.get("data_config") or {})
        from .data import default_test_fraction
        if task is not None:
            dcfg["name"] = check_task(task)
        dcfg["path"] = os.fspath(data)
        dcfg["test_fraction"] = default_test_fraction(dcfg["name"], dcfg["path"])
        ds = load_data(dcfg, vocab=vocab_from_meta(meta))["test"]
        if ds.inputs.ndim != 3:
            raise ValueError(f"data: {data} holds token ids; use predict_texts")
    if world.size > 1:
        world.check_same({"data": data_digest(ds)})
    return _predict_features(model, meta, path, ds.inputs, ds.lengths, batch_size, world)


class _Rows:
    """What ``_check_fits`` reads of a dataset, for bare arrays."""
    task = None

    def __init__(self, x):
        self.inputs = x
