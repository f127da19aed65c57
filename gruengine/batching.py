"""Batches of a Dataset: a reproducible shuffled order for training, a sorted one for
evaluation, and the validation split.

Every batch holds sequences of similar length, trimmed to its longest one, so little of each
recurrence runs on padding.
"""
import numpy as np


def epoch_batches(lengths, batch_size, seed, epoch, bucket=50):
    """Index arrays of the batches of one epoch, a function of (seed, epoch) only.

    Shuffle, sort each chunk of ``bucket`` batches by length (longest first) so a batch holds
    sequences of similar length, then shuffle the order of the batches.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, 11, epoch])
    perm = rng.permutation(n)
    chunk = batch_size * bucket
    batches = []
    for s in range(0, n, chunk):          # one iteration per chunk of batches
        idx = perm[s:s + chunk]
        idx = idx[np.argsort(-lengths[idx], kind="stable")]
        batches.extend(idx[i:i + batch_size] for i in range(0, len(idx), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def sorted_batches(lengths, batch_size):
    """Evaluation batches: by length, longest first (little padding, no randomness)."""
    idx = np.argsort(-lengths, kind="stable")
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


def make_batch(ds, idx, dtype):
    """Rows ``idx`` of ``ds`` trimmed to the batch's longest sequence."""
    lengths = np.ascontiguousarray(ds.lengths[idx])
    T = int(lengths.max())
    x = ds.inputs[idx, :T]
    if x.ndim == 3:
        x = x.astype(dtype, copy=False)
    y = ds.targets[idx]
    if ds.task == "tag":
        y = y[:, :T]
    return np.ascontiguousarray(x), lengths, np.ascontiguousarray(y)


def split_validation(ds, fraction, seed):
    """(train, val) carved from ``ds`` with the seed; val is None when fraction is 0."""
    n = len(ds)
    n_val = int(round(fraction * n))
    if fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    if n_val <= 0:
        return ds, None
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return ds.subset(np.sort(perm[n_val:])), ds.subset(np.sort(perm[:n_val]))
