"""The nearest training series in a classifier's own feature space, mixed into its predictions.

    model.neighbours = fit_neighbours(model, train_ds)   # after training, in eval mode
    logp = model.eval().forward(x, lengths)              # log((softmax + vote) / 2)

A trained classifier's head reads one vector per sequence (``SequenceModel.features``). Every
training sequence's vector is stored, scaled to unit length, with its label; in eval mode a
sequence's probabilities become half the model's softmax plus half a one-hot vote for the
label of the training sequence whose vector is closest by cosine similarity. What this adds is
what 1-nearest-neighbour classifiers are good at: a test series that nearly repeats a training
series gets that series' label (docs/benchmarks.md measures it on UCR/UEA sets). The forward
then returns the log of the mixed probabilities, so ``predict_proba`` (a softmax) gives the
mixture back and the loss is its cross-entropy. Training mode never mixes.

In a checkpoint: ``neighbours.features`` (N, D) unit vectors (float32) and
``neighbours.labels`` (N,) int64, beside the model's weights.
"""
import numpy as np

from .batching import make_batch, sorted_batches

__all__ = ["Neighbours", "fit_neighbours", "KEYS"]

KEYS = ("neighbours.features", "neighbours.labels")
BATCH = 64


def _unit(f):
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


class Neighbours:
    """Unit feature vectors (N, D) of the training sequences and their labels (N,)."""

    def __init__(self, features, labels, num_classes):
        f = np.asarray(features)
        y = np.asarray(labels)
        if f.ndim != 2 or y.shape != (f.shape[0],) or f.shape[0] == 0:
            raise ValueError(f"neighbours: expected features (N, D) and labels (N,) with N > 0, "
                             f"got {f.shape} and {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"neighbours: labels must be class ids in [0, {num_classes})")
        if not np.isfinite(f).all():
            raise ValueError("neighbours: features must be finite")
        self.features = np.ascontiguousarray(_unit(f), dtype=np.float32)
        self.labels = y.astype(np.int64)
        self.num_classes = int(num_classes)

    def nearest(self, feats):
        """Index of the closest stored vector (cosine) for each row of ``feats`` (B, D)."""
        return (_unit(feats) @ self.features.T.astype(np.float64)).argmax(axis=1)

    def mix(self, logits, feats):
        """log((softmax(logits) + one-hot vote of the nearest label) / 2), in logits' dtype."""
        z = np.asarray(logits, dtype=np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        p[np.arange(len(p)), self.labels[self.nearest(feats)]] += 1.0
        return np.log(np.maximum(p / 2, np.finfo(np.float64).tiny)).astype(np.asarray(logits).dtype)

    def state_dict(self):
        return {KEYS[0]: self.features.copy(), KEYS[1]: self.labels.copy()}


def fit_neighbours(model, ds):
    """A ``Neighbours`` of every sequence of ``ds`` (inputs as the model reads them, already
    scaled) under ``model`` (a classify SequenceModel), computed in eval mode on the
    evaluation's length-sorted batches; the model is left in eval mode."""
    if model.config.task != "classify":
        raise ValueError("neighbours: only classifiers mix in a nearest neighbour")
    model.eval()
    saved, model.neighbours = model.neighbours, None
    try:
        batches = sorted_batches(np.asarray(ds.lengths), BATCH)
        feats = [model.features(*make_batch(ds, idx, model.dtype)[:2]) for idx in batches]
    finally:
        model.neighbours = saved
    rows = np.empty((len(ds.lengths), feats[0].shape[1]), dtype=feats[0].dtype)
    rows[np.concatenate(batches)] = np.concatenate(feats)
    return Neighbours(rows, ds.targets, model.config.num_outputs)
