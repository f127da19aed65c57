"""How a global batch splits over ranks and how the pieces add up to one process's step.

    lo, hi = rows(rank, size, len(idx))              # this rank's contiguous rows of the batch
    t0, sums, said = share_gradient(trainer, idx, lo, hi)

``share_gradient`` leaves in the flat gradient the gradient of rows [lo, hi) of the batch,
weighted by their share of the loss's count, so that the sum over shares tiling the batch is
the gradient of the whole batch's mean loss; its dropout masks are those rows of the masks
the whole batch draws (``RowWindow``). No communication happens here
(``gruengine.distributed`` sums the shares), so one process can check the arithmetic.
"""
import hashlib
import time

import numpy as np

from . import arrays
from .batching import make_batch
from .errors import TrainingDivergedError

__all__ = ["rows", "share_gradient", "RowWindow", "data_digest"]


def rows(rank, size, n):
    """[lo, hi): rank ``rank`` of ``size``'s contiguous share of ``n`` rows; the shares tile
    [0, n), differ in size by at most one, and rank 0's is the first ceil(n / size)."""
    return (rank * n + size - 1) // size, ((rank + 1) * n + size - 1) // size


def share_gradient(trainer, idx, lo, hi):
    """Rows [lo, hi) of the global batch ``idx``: their gradient, weighted by their share of
    the loss's count (examples, or valid steps for tag), in the flat buffer; summed over
    shares that tile the batch it is the gradient of the batch's mean loss.

    Returns (t0, sums, diverged message or None); sums (6,) float64: loss * count, count,
    correct, sq_err, tokens, diverged (1.0 when the forward or backward gave NaN/Inf)."""
    model, ds = trainer.model, trainer.train_ds
    lengths = ds.lengths[idx]
    tag = model.config.task == "tag"
    total = int(lengths.sum()) if tag else len(idx)    # what the batch's mean divides by
    sums = np.zeros(6)
    said = None
    model.params.zero_grad()                           # an empty share adds zeros
    t0 = time.perf_counter()
    if hi > lo:
        x, L, y = make_batch(ds, idx[lo:hi], model.dtype)
        t0 = time.perf_counter()
        trainer._reseed_dropout(RowWindow(lo, len(idx), int(lengths.max())))
        try:
            out, loss = trainer._forward_backward(x, L, y)
        except TrainingDivergedError as e:
            said, sums[5] = str(e), 1.0
        else:
            s = model.score(out, y, L)
            _scale(model.params.grad, (int(L.sum()) if tag else hi - lo) / total)
            sums[:5] = (float(loss) * s["count"], s["count"], s.get("correct", 0),
                        s.get("sq_err", 0.0), int(L.sum()))
    return t0, sums, said


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
    would: dropout masks of a share equal the global batch's masks, for any number of ranks.
    """

    def __init__(self, row0, B, T):
        self.row0, self.B, self.T = int(row0), int(B), int(T)

    def __call__(self, generator):
        g = _WindowedGenerator(generator.bit_generator)
        g.window = self
        return g


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
