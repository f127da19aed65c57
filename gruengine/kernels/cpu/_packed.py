"""Packed sequences on the CPU: the layout every cell's kernels share, and its host helpers.

Rows are sorted by length, descending (``perm``: sorted row -> original row), so the rows
active at step ``s`` are a prefix of ``nb[s]`` rows; step ``s`` owns the packed rows
``off[s] .. off[s] + nb[s] - 1`` (like a PyTorch PackedSequence). A step reads time index
``t = s`` (forward) or ``t = lengths[row] - 1 - s`` (reverse). The per-step products then run
on contiguous blocks of rows, and padding costs nothing.

``Packing`` holds that layout for one call; ``gather`` / ``scatter`` move (B, T, F) arrays in
and out of it (one pass, parallel over steps), ``row_blocks`` cuts the sorted rows into the
blocks that run their recurrences in parallel, and ``gate_panels`` lays a recurrent weight
out for the micro-kernel.
"""
import numba
import numpy as np
from numba import njit, prange

from ._simd import vector_width

__all__ = ["Packing", "gather", "scatter", "row_blocks", "gate_panels"]


class Packing:
    """The packed layout of a batch: perm, nb (steps+1,), off (steps+1,), steps, N rows."""

    __slots__ = ("lengths", "perm", "nb", "off", "steps", "N", "full")

    def __init__(self, lengths, T):
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        self.lengths = lengths
        self.perm = np.argsort(-lengths, kind="stable").astype(np.int64)
        self.steps = steps = int(lengths.max())
        # nb[s] = #{rows with length > s}; nb[steps] = 0 closes the last step
        nb = np.bincount(lengths, minlength=steps + 1)[::-1].cumsum()[::-1][1:]
        self.nb = np.append(nb, 0).astype(np.int64)
        self.off = np.concatenate([[0], np.cumsum(self.nb)]).astype(np.int64)
        self.N = int(self.off[steps])
        self.full = self.N == lengths.shape[0] * T        # no padding anywhere


@njit(parallel=True, cache=True)
def _gather(x, perm, lengths, nb, off, reverse, out):
    # out[off[s] + b] = x[perm[b], t(s, b)]      x: (B, T, F)  out: (N, F)
    for sp in prange(nb.shape[0] - 1):
        s = np.int64(sp)            # a prange index may be unsigned: keep t signed
        for b in range(nb[s]):
            row = perm[b]
            t = lengths[row] - 1 - s if reverse else s
            src, dst = x[row, t], out[off[s] + b]
            for f in range(src.shape[0]):
                dst[f] = src[f]


@njit(parallel=True, cache=True)
def _scatter(src, perm, lengths, nb, off, reverse, out):
    # out[perm[b], t(s, b)] = src[off[s] + b]   (the inverse of _gather; padding untouched)
    for sp in prange(nb.shape[0] - 1):
        s = np.int64(sp)            # a prange index may be unsigned: keep t signed
        for b in range(nb[s]):
            row = perm[b]
            t = lengths[row] - 1 - s if reverse else s
            a, dst = src[off[s] + b], out[row, t]
            for f in range(a.shape[0]):
                dst[f] = a[f]


def gather(x, pk, reverse):
    """(B, T, F) -> packed (N, F)."""
    out = np.empty((pk.N, x.shape[2]), x.dtype)
    _gather(np.ascontiguousarray(x), pk.perm, pk.lengths, pk.nb, pk.off, bool(reverse), out)
    return out


def scatter(src, pk, reverse, T):
    """Packed (N, F) -> (B, T, F), zero at padding."""
    B = pk.lengths.shape[0]
    out = (np.empty if pk.full else np.zeros)((B, T, src.shape[1]), src.dtype)
    _scatter(src, pk.perm, pk.lengths, pk.nb, pk.off, bool(reverse), out)
    return out


def row_blocks(pk, mr):
    """Bounds (C+1,) of the blocks of sorted rows whose recurrences run in parallel: one block
    per Numba thread, whole tiles of ``mr`` rows each, cut so that every block has about the
    same number of (step, row) pairs (the longest rows come first). A row's results do not
    depend on its block, so neither do they on the thread count."""
    B = pk.lengths.shape[0]
    tiles = (B + mr - 1) // mr
    C = max(1, min(numba.get_num_threads(), tiles))
    work = np.add.reduceat(pk.lengths[pk.perm], np.arange(0, B, mr))      # per tile
    cum = np.cumsum(work)
    cuts = [0]
    for c in range(1, C):
        t = int(np.searchsorted(cum, cum[-1] * c / C)) + 1                # tiles in blocks < c
        t = min(max(t, cuts[-1] // mr + 1), tiles - (C - c))              # >= one tile each
        cuts.append(t * mr)
    cuts.append(B)
    return np.asarray(cuts, dtype=np.int64)


def gate_panels(W, gates, H):
    """W (len(gates)*?, K) with gate blocks of H rows -> panels (HT, K, len(gates)*VW):
    panel[jt, k, g*VW + u] = W[gates[g]*H + jt*VW + u, k], zero for units past H.
    One panel is the P operand of a micro-kernel tile of the gates of VW hidden units."""
    VW = vector_width(W.dtype)
    HT = (H + VW - 1) // VW
    K = W.shape[1]
    pad = np.zeros((len(gates), HT * VW, K), W.dtype)
    for g, gate in enumerate(gates):
        pad[g, :H] = W[gate * H:(gate + 1) * H]
    return np.ascontiguousarray(pad.reshape(len(gates), HT, VW, K).transpose(1, 3, 0, 2)
                                .reshape(HT, K, len(gates) * VW))
