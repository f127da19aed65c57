"""How a global batch splits over ranks and how the pieces add up to one process's step.

    lo, hi = rows(rank, size, len(idx))              # this rank's contiguous rows of the batch
    t0, sums, said = share_gradient(trainer, idx, lo, hi, reduce)

``share_gradient`` leaves in the flat gradient the gradient of rows [lo, hi) of the batch,
weighted by their share of the loss's count, so that the sum over shares tiling the batch is
the gradient of the whole batch's mean loss. What a row sees is what it sees in the whole
batch: its dropout masks are those rows of the masks the whole batch draws (``RowWindow``),
its augmentation is its row of the whole batch's, and batch normalisation in a convolutional
front end uses the whole batch's statistics (``BatchStatsSync``, through ``reduce``: the
only communication here; ``gruengine.distributed`` sums the shares), so one process can
check the arithmetic.
"""
import hashlib
import time

import numpy as np

from . import arrays
from .batching import make_batch
from .errors import TrainingDivergedError

__all__ = ["rows", "share_gradient", "RowWindow", "BatchStatsSync", "data_digest"]


def rows(rank, size, n):
    """[lo, hi): rank ``rank`` of ``size``'s contiguous share of ``n`` rows; the shares tile
    [0, n), differ in size by at most one, and rank 0's is the first ceil(n / size)."""
    return (rank * n + size - 1) // size, ((rank + 1) * n + size - 1) // size


def share_gradient(trainer, idx, lo, hi, reduce=None):
    """Rows [lo, hi) of the global batch ``idx``: their gradient, weighted by their share of
    the loss's count (examples, or valid steps for tag), in the flat buffer; summed over
    shares that tile the batch it is the gradient of the batch's mean loss. ``reduce``: sums
    a float64 array over the ranks in place; needed (every rank calls it the same number of
    times, an empty share too) when the model has a batch-normalised front end.

    Returns (t0, sums, diverged message or None); sums (6,) float64: loss * count, count,
    correct, sq_err, tokens, diverged (1.0 when the forward or backward gave NaN/Inf)."""
    model, ds = trainer.model, trainer.train_ds
    augment = trainer.config.get("augment")
    if augment:      # the whole batch's draws (cheap next to a step), then this share's rows
        X, lengths, Y = trainer.batch_inputs(idx)
    else:
        lengths = ds.lengths[idx]
    tag = model.config.task == "tag"
    total = int(lengths.sum()) if tag else len(idx)    # what the batch's mean divides by
    sums = np.zeros(6)
    said = None
    model.params.zero_grad()                           # an empty share adds zeros
    fe = model.modules.get("frontend")
    sync = None
    if reduce is not None and fe is not None and fe.norm == "batch":
        share = int(lengths[lo:hi].sum()) if tag else hi - lo
        sync = fe.sync = BatchStatsSync(reduce, share / total, fe.channels)
    t0 = time.perf_counter()
    try:
        if hi > lo:
            if augment:
                L = np.ascontiguousarray(lengths[lo:hi])
                T = int(L.max())
                x, y = np.ascontiguousarray(X[lo:hi, :T]), Y[lo:hi]
                y = np.ascontiguousarray(y[:, :T]) if tag else y
            else:
                x, L, y = make_batch(ds, idx[lo:hi], model.dtype)
            t0 = time.perf_counter()
            steps = _steps_after_frontend(fe, int(lengths.max()))
            trainer._reseed_dropout(RowWindow(lo, len(idx), steps))
            try:
                out, loss = trainer._forward_backward(x, L, y)
            except TrainingDivergedError as e:
                said, sums[5] = str(e), 1.0
            else:
                s = model.score(out, y, L)
                _scale(model.params.grad, (int(L.sum()) if tag else hi - lo) / total)
                sums[:5] = (float(loss) * s["count"], s["count"], s.get("correct", 0),
                            s.get("sq_err", 0.0), int(L.sum()))
    finally:
        if sync is not None:
            sync.finish()        # the collectives this rank skipped, with zeros
            fe.sync = None
    return t0, sums, said


def _steps_after_frontend(fe, T):
    # time steps of the whole batch where the dropout masks are drawn (after the strides)
    for s in (fe.strides if fe is not None else ()):
        T = (T + s - 1) // s
    return T


def _scale(grad, factor):
    if arrays.is_device(grad):
        from .backend import get_kernels
        get_kernels("cuda").scale_inplace(grad, factor)
    else:
        grad *= grad.dtype.type(factor)


def data_digest(*datasets):
    """A short digest of datasets' inputs, targets and lengths (None entries skipped)."""
    h = hashlib.blake2b(digest_size=8)
    for ds in datasets:
        if ds is None:
            continue
        for a in (ds.inputs, ds.targets, ds.lengths):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.data)
    return h.hexdigest()


class RowWindow:
    """Rows [row0, row0 + n) of a global batch of ``B`` rows and ``T`` steps.

    ``window(generator)`` is a Generator on the same bits whose ``random((n, t, F))`` (or
    ``(n, F)``) returns exactly these rows (cut to ``t <= T`` steps) of what
    ``generator.random((B, T, F))`` would return, and leaves its state where that draw
    would. ``layers.dropout_mask`` draws one seed from the generator and hashes each
    element's index (``keep_mask``): a windowed generator gives the whole batch's seed, and
    ``keep_mask`` the rows of the whole batch's mask. Either way the dropout masks of a share
    equal the global batch's, for any number of ranks.
    """

    def __init__(self, row0, B, T):
        self.row0, self.B, self.T = int(row0), int(B), int(T)

    def __call__(self, generator):
        g = _WindowedGenerator(generator.bit_generator)
        g.window = self
        return g

    def keep_mask(self, shape, seed, threshold, scale, dtype):
        """Rows [row0, row0 + n) (cut to ``t`` steps) of the dropout mask of the whole
        (B, T, F) (or (B, F)) batch that ``kernels.cpu.ops.dropout_keep_mask`` draws from
        ``seed``; ``shape`` (n, t, F) or (n, F)."""
        from .kernels.cpu.ops import _GOLDEN, dropout_keep_mask
        shape = tuple(int(v) for v in shape)
        if len(shape) not in (2, 3) or shape[0] > self.B - self.row0 \
                or (len(shape) == 3 and shape[1] > self.T):
            raise ValueError(f"shape: expected (rows <= {self.B - self.row0}, steps <= "
                             f"{self.T}[, features]), got {shape}")
        full = (shape[0], self.T, shape[2]) if len(shape) == 3 else shape
        per_row = int(np.prod(full[1:]))
        mask = np.empty(int(np.prod(full)), dtype=dtype)
        # element i of the whole mask hashes seed + i * golden (mod 2**64): these rows start
        # at i = row0 * per_row
        start = (int(seed) + self.row0 * per_row * int(_GOLDEN)) % 2**64
        dropout_keep_mask(np.uint64(start), threshold, scale, mask)
        mask = mask.reshape(full)
        return np.ascontiguousarray(mask[:, :shape[1]]) if len(shape) == 3 else mask


class _WindowedGenerator(np.random.Generator):
    # random() of float64 takes one 64-bit PCG64 draw per value, row-major: row b of a
    # (B, T, F) draw is draws [b*T*F, (b+1)*T*F), so skipping rows is bit_generator.advance
    def random(self, size=None, dtype=np.float64, out=None):
        w = self.window
        shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size or ())
        if out is not None or np.dtype(dtype) != np.float64 or len(shape) not in (2, 3) \
                or shape[0] > w.B - w.row0 or (len(shape) == 3 and shape[1] > w.T):
            raise ValueError(f"size: expected a float64 draw of (rows <= {w.B - w.row0}, "
                             f"steps <= {w.T}[, features]), got {size!r}")
        full = (w.T,) + shape[2:] if len(shape) == 3 else shape[1:]
        per_row = int(np.prod(full))
        bits = self.bit_generator
        bits.advance(w.row0 * per_row)
        draw = super().random((shape[0],) + full)
        bits.advance((w.B - w.row0 - shape[0]) * per_row)
        return np.ascontiguousarray(draw[:, :shape[1]]) if len(shape) == 3 else draw


class BatchStatsSync:
    """Batch normalisation of a front end over the whole global batch while each rank holds
    its share (``conv.ConvFrontEnd.sync``): the statistics and the two sums the backward
    needs are added over the ranks with ``reduce``, in float64.

    ``weight`` is the share's weight in the batch's loss (its gradient is scaled by it
    afterwards): the backward's sums are weighted by it before they are added, and the
    share's input gradient is computed on its own (unweighted) scale. Each block takes two
    reductions forward (count and sum, then the centred sum of squares) and one backward;
    ``finish`` makes the ones this rank did not (an empty share, a diverged one) with zeros,
    so every rank makes the same collective calls."""

    def __init__(self, reduce, weight, channels):
        self.reduce, self.weight = reduce, float(weight)
        sizes = [(c + 1, c) for c in channels]
        self._plan = [n for pair in sizes for n in pair] + [2 * c for c in reversed(channels)]
        self._done = 0
        self.n = {}

    def _sum(self, a):
        a = np.ascontiguousarray(a, dtype=np.float64)
        if a.size != self._plan[self._done]:
            raise RuntimeError(f"batch-norm reduction {self._done}: expected "
                               f"{self._plan[self._done]} numbers, got {a.size}")
        self._done += 1
        self.reduce(a)
        return a

    def stats(self, k, z, L):
        """(mean, biased var) (C,) float64 of block k's output ``z`` over every valid step
        of the global batch; the global count is kept for ``backward``."""
        rows_ = _valid_rows(z, L)
        first = self._sum(np.concatenate([[rows_.shape[0]], rows_.sum(axis=0)]))
        n = self.n[k] = int(round(first[0]))
        mean = first[1:] / max(n, 1)
        var = self._sum(((rows_ - mean) ** 2).sum(axis=0)) / max(n, 1)
        return mean, var

    def backward(self, k, dy, z, gamma, mean, rstd, L):
        """Block k's batch-norm backward with the global batch's sums -> (dx, dgamma,
        dbeta) of this share (dgamma, dbeta: its own rows' sums)."""
        from . import arrays
        dy, z = arrays.to_host(dy), arrays.to_host(z)
        B, T, C = z.shape
        valid = (np.arange(T)[None, :] < np.asarray(L)[:, None])[..., None]
        g = np.where(valid, dy, 0).astype(np.float64)
        mean, rstd = (arrays.to_host(a).astype(np.float64) for a in (mean, rstd))
        xhat = np.where(valid, (z - mean) * rstd, 0.0)
        dbeta, dgamma = g.sum(axis=(0, 1)), (g * xhat).sum(axis=(0, 1))
        both = self._sum(np.concatenate([dbeta, dgamma]) * self.weight)
        scale = self.weight * self.n[k]           # global sums on this share's scale
        gam = arrays.to_host(gamma).astype(np.float64)
        dx = gam * rstd * (g - both[:C] / scale - xhat * both[C:] / scale)
        dx = np.where(valid, dx, 0).astype(z.dtype)
        return dx, dgamma.astype(z.dtype), dbeta.astype(z.dtype)

    def finish(self):
        while self._done < len(self._plan):
            self._sum(np.zeros(self._plan[self._done]))


def _valid_rows(z, L):
    # (N valid, C) float64 rows of z (B, T, C) at steps before each row's length
    from . import arrays
    z = arrays.to_host(z)
    valid = np.arange(z.shape[1])[None, :] < np.asarray(L)[:, None]
    return z[valid].astype(np.float64)
