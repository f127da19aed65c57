"""Training-time augmentation of numeric sequences (on the host, per batch).

    x, lengths = augment_batch(x, lengths, rng)     # x (B, T, F) float, lengths (B,)

Three transforms of time-series practice (Le Guennec et al. 2016; Um et al. 2017), each row
independently:

* **scaling**: every channel multiplied by a factor drawn from N(1, ``SCALE_SD``);
* **jitter**: N(0, ``JITTER_SD``) noise added to every valid value (inputs are standardised,
  so the noise is relative to unit variance);
* **window slicing**: with probability ``SLICE_P``, a window of a random ``[SLICE_MIN, 1]``
  fraction of the row's length, at a random offset, replaces the row (moved to step 0, its
  length shortened). The model reads whole series at test time; with mean pooling a slice
  looks like a shorter series of the same kind.

``rng`` is a ``numpy.random.Generator``; the trainer seeds one per batch from (seed, epoch,
batch), so a resumed run draws the same augmentations. Padding stays zero.
"""
import numpy as np

__all__ = ["augment_batch"]

SCALE_SD = 0.1
JITTER_SD = 0.03
SLICE_P = 0.5
SLICE_MIN = 0.8


def augment_batch(x, lengths, rng):
    """Augmented copies of ``x`` (B, T, F) and ``lengths`` (B,) (see the module docstring)."""
    x = np.array(x, copy=True)
    lengths = np.array(lengths, dtype=np.int64, copy=True)
    B, T, F = x.shape
    scale = rng.normal(1.0, SCALE_SD, size=(B, 1, F))
    noise = rng.normal(0.0, JITTER_SD, size=(B, T, F))
    do_slice = rng.random(B) < SLICE_P
    frac = rng.uniform(SLICE_MIN, 1.0, size=B)
    offset_u = rng.random(B)
    x = (x * scale + noise).astype(x.dtype)
    for b in range(B):                       # one row at a time: windows differ per row
        L = int(lengths[b])
        if do_slice[b] and L > 2:
            w = max(2, int(round(frac[b] * L)))
            s = int(offset_u[b] * (L - w + 1))
            x[b, :w] = x[b, s:s + w].copy()
            lengths[b] = L = w
        x[b, L:] = 0
    return x, lengths
