"""Fused GRU gate kernels for one time step (Numba, CPU).

Layout shared by every kernel here (built by ``gruengine.kernels.cpu.gru``):

* rows are sorted by length, descending: sorted row ``b`` is original row ``perm[b]``,
  and the rows active at step ``s`` are the prefix ``b < nb[s]``;
* per-step state lives in *packed* arrays (like a PyTorch PackedSequence): step ``s``
  owns packed rows ``off_s .. off_s + nb[s] - 1``; packed row ``p = off_s + b``;
* ``Hp`` (N, H) holds h_prev of every packed row; the kernel of step ``s`` writes h_t into
  the packed slot of step ``s + 1`` when the row is still active there, so the next step's
  recurrent GEMM reads one contiguous block;
* ``G`` (N, 4H) caches r, z, n and a fourth slot: ``W_hn h + b_hn`` (reset_after) or
  ``r * h_prev`` (reset_before, it is the GEMM operand of the n rows of dW_hh).

Every ``prange`` iteration writes only its own sorted row ``b``: packed row ``off + b``,
original row ``perm[b]`` of y / h_n / dGx / dh_n, and row ``b`` of the dh buffers.
Values below the dtype's smallest normal are flushed to zero (``tiny``), forward and
backward, so a gradient that decays over many steps never enters the slow subnormal path.
``one`` and ``tiny`` arrive as scalars of the array dtype so float32 stays float32.
"""
import math

from numba import njit, prange

__all__ = []


@njit(inline="always")
def _ftz(v, tiny):
    # flush subnormals (and -0 crumbs) to an exact zero
    return v if abs(v) >= tiny else v - v


@njit(inline="always")
def _sigmoid(a, one):
    return one / (one + math.exp(-a))


@njit(inline="always")
def _time(s, length, reverse):
    return length - 1 - s if reverse else s


@njit(parallel=True, cache=True)
def fwd_step_after(s, n, off, nb_next, off_next, Gx, gh, b_ih, b_hh, Hp, G,
                   perm, lengths, reverse, y, h_n, one, tiny):
    # reset_after=True, one step for the n active sorted rows.
    # Gx: (B, T, 3H) = x @ W_ih.T (no bias)  gh: (>=n, 3H) = h_prev @ W_hh.T (no bias)
    # b_ih, b_hh: (3H,)  Hp: (N, H)  G: (N, 4H)  perm, lengths: (B,)  y: (B, T, H)  h_n: (B, H)
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        keep = b < nb_next
        for j in range(H):
            r = _ftz(_sigmoid(Gx[row, t, j] + b_ih[j] + gh[b, j] + b_hh[j], one), tiny)
            z = _ftz(_sigmoid(Gx[row, t, H + j] + b_ih[H + j] + gh[b, H + j] + b_hh[H + j], one), tiny)
            hn = gh[b, 2 * H + j] + b_hh[2 * H + j]
            nn = _ftz(math.tanh(Gx[row, t, 2 * H + j] + b_ih[2 * H + j] + r * hn), tiny)
            h = _ftz((one - z) * nn + z * Hp[p, j], tiny)
            G[p, j] = r
            G[p, H + j] = z
            G[p, 2 * H + j] = nn
            G[p, 3 * H + j] = hn
            y[row, t, j] = h
            if keep:
                Hp[off_next + b, j] = h
            else:
                h_n[row, j] = h


@njit(parallel=True, cache=True)
def fwd_step_before_rz(s, n, off, Gx, gh, b_ih, b_hh, Hp, G, perm, lengths, reverse, one, tiny):
    # reset_after=False, first half: r, z and r * h_prev (operand of the W_hn GEMM).
    # Gx: (B, T, 3H)  gh: (>=n, 2H) = h_prev @ W_hh[:2H].T  Hp: (N, H)  G: (N, 4H)
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        for j in range(H):
            r = _ftz(_sigmoid(Gx[row, t, j] + b_ih[j] + gh[b, j] + b_hh[j], one), tiny)
            z = _ftz(_sigmoid(Gx[row, t, H + j] + b_ih[H + j] + gh[b, H + j] + b_hh[H + j], one), tiny)
            G[p, j] = r
            G[p, H + j] = z
            G[p, 3 * H + j] = _ftz(r * Hp[p, j], tiny)


@njit(parallel=True, cache=True)
def fwd_step_before_n(s, n, off, nb_next, off_next, Gx, ghn, b_ih, b_hh, Hp, G,
                      perm, lengths, reverse, y, h_n, one, tiny):
    # reset_after=False, second half: n and h_t.  ghn: (>=n, H) = (r * h_prev) @ W_hn.T
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        keep = b < nb_next
        for j in range(H):
            z = G[p, H + j]
            nn = _ftz(math.tanh(Gx[row, t, 2 * H + j] + b_ih[2 * H + j] + ghn[b, j] + b_hh[2 * H + j]), tiny)
            h = _ftz((one - z) * nn + z * Hp[p, j], tiny)
            G[p, 2 * H + j] = nn
            y[row, t, j] = h
            if keep:
                Hp[off_next + b, j] = h
            else:
                h_n[row, j] = h


@njit(inline="always")
def _dh_in(b, j, row, t, nb_next, dhz, dhg, dh_n, dy):
    # dL/dh_t of sorted row b: from step s+1 (direct path + GEMM path) or, at the row's
    # last step, from dh_n; plus dy at the time index read at this step.
    if b < nb_next:
        g = dhz[b, j] + dhg[b, j]
    else:
        g = dh_n[row, j]
    return g + dy[row, t, j]


@njit(parallel=True, cache=True)
def bwd_step_after(s, n, off, nb_next, dy, dh_n, Hp, G, perm, lengths, reverse,
                   dhz, dhg, dGx, dGh, one, tiny):
    # reset_after=True, one step backward for the n active sorted rows.
    # dy: (B, T, H)  dh_n: (B, H)  Hp: (N, H)  G: (N, 4H)  dhz, dhg: (B, H) sorted rows
    # dGx: (B, T, 3H) (zero at padding, written here at active positions)  dGh: (N, 3H)
    # On exit dhz[b] = dL/dh_t * z (direct path to h_prev); the caller adds dGh @ W_hh into dhg.
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        for j in range(H):
            g = _ftz(_dh_in(b, j, row, t, nb_next, dhz, dhg, dh_n, dy), tiny)
            r = G[p, j]
            z = G[p, H + j]
            nn = G[p, 2 * H + j]
            hn = G[p, 3 * H + j]
            da_n = _ftz(g * (one - z) * (one - nn * nn), tiny)
            da_z = _ftz(g * (Hp[p, j] - nn) * z * (one - z), tiny)
            da_r = _ftz(da_n * hn * r * (one - r), tiny)
            dGx[row, t, j] = da_r
            dGx[row, t, H + j] = da_z
            dGx[row, t, 2 * H + j] = da_n
            dGh[p, j] = da_r
            dGh[p, H + j] = da_z
            dGh[p, 2 * H + j] = _ftz(da_n * r, tiny)
            dhz[b, j] = _ftz(g * z, tiny)


@njit(parallel=True, cache=True)
def bwd_step_before_n(s, n, off, nb_next, dy, dh_n, Hp, G, perm, lengths, reverse,
                      dhz, dhg, dGx, dGh, one, tiny):
    # reset_after=False, first half: da_n, da_z and the direct path g * z.
    # Same shapes as bwd_step_after.  The caller then forms d(r h) = da_n @ W_hn.
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        for j in range(H):
            g = _ftz(_dh_in(b, j, row, t, nb_next, dhz, dhg, dh_n, dy), tiny)
            z = G[p, H + j]
            nn = G[p, 2 * H + j]
            da_n = _ftz(g * (one - z) * (one - nn * nn), tiny)
            da_z = _ftz(g * (Hp[p, j] - nn) * z * (one - z), tiny)
            dGx[row, t, H + j] = da_z
            dGx[row, t, 2 * H + j] = da_n
            dGh[p, H + j] = da_z
            dGh[p, 2 * H + j] = da_n
            dhz[b, j] = g * z


@njit(parallel=True, cache=True)
def bwd_step_before_r(s, n, off, d_rh, Hp, G, perm, lengths, reverse, dhz, dGx, dGh, one, tiny):
    # reset_after=False, second half.  d_rh: (>=n, H) = da_n @ W_hn  (gradient of r * h_prev)
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        for j in range(H):
            r = G[p, j]
            da_r = _ftz(d_rh[b, j] * Hp[p, j] * r * (one - r), tiny)
            dGx[row, t, j] = da_r
            dGh[p, j] = da_r
            dhz[b, j] = _ftz(dhz[b, j] + d_rh[b, j] * r, tiny)


@njit(parallel=True, cache=True)
def sum_rows_scatter(dhz, dhg, perm, out):
    # out[perm[b]] = dhz[b] + dhg[b]      dhz, dhg, out: (B, H)
    H = dhz.shape[1]
    for b in prange(dhz.shape[0]):
        row = perm[b]
        for j in range(H):
            out[row, j] = dhz[b, j] + dhg[b, j]
