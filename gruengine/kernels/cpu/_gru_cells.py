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

Iteration ``b`` writes only its own sorted row: packed row ``off + b``, original row
``perm[b]`` of y / h_n / dGx, and row ``b`` of the dh buffers, so the row loop is race-free
and written as a ``prange``. The kernels are nevertheless compiled serial (``parallel=False``
turns the prange into a range; ``benchmarks/bench_gru_cpu.py --gate-kernels`` builds the
parallel variant from the same source and times both). On the 2-core machine a serial step
kernel (B=64, H=128) takes ~25 us and leaves both cores to OpenBLAS for the per-step GEMM;
the parallel one is faster alone (~12 us) but Numba's OpenMP threads and OpenBLAS's threads
then spin against each other: ~70 us per GEMM + kernel pair with OMP_WAIT_POLICY=passive,
milliseconds with the default busy wait once other processes share the cores.
``error_model="numpy"`` drops the zero-division checks so LLVM vectorizes the gate loops.
Values below ``tiny`` are flushed to zero, forward and backward, so a gradient that decays
over many steps never enters the slow subnormal path, neither here nor in the GEMMs that
take these values (the caller passes tiny = sqrt(smallest normal), see ``gru._scalars``).
``fastmath={"contract"}`` lets LLVM fuse multiply-adds (~20% faster gate loops).
``one`` and ``tiny`` arrive as scalars of the array dtype so float32 stays float32.
"""
from numba import njit, prange

from ._math import ftz, sigmoid_, tanh_

__all__ = []


@njit(inline="always")
def _time(s, length, reverse):
    return length - 1 - s if reverse else s


@njit(inline="always")
def _store_h(b, row, keep, off_next, hrow, Hp, h_n):
    # h_t goes to the packed slot of step s+1 while the row stays active, else to h_n
    if keep:
        Hp[off_next + b, :] = hrow
    else:
        h_n[row, :] = hrow


@njit(cache=True, error_model="numpy", fastmath={"contract"})
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
        gx, ghb, hp, gp, yr = Gx[row, t], gh[b], Hp[p], G[p], y[row, t]
        # short loops over few arrays vectorize best (see bwd_step_after)
        for k in range(2 * H):                                          # r, z
            gp[k] = ftz(sigmoid_(gx[k] + b_ih[k] + ghb[k] + b_hh[k]), tiny)
        for j in range(H):                                              # W_hn h + b_hn
            gp[3 * H + j] = ftz(ghb[2 * H + j] + b_hh[2 * H + j], tiny)
        for j in range(H):                                              # n
            a_n = gx[2 * H + j] + b_ih[2 * H + j] + gp[j] * gp[3 * H + j]
            gp[2 * H + j] = ftz(tanh_(a_n), tiny)
        for j in range(H):                                              # h_t
            z = gp[H + j]
            yr[j] = ftz((one - z) * gp[2 * H + j] + z * hp[j], tiny)
        _store_h(b, row, b < nb_next, off_next, yr, Hp, h_n)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def fwd_step_before_rz(s, n, off, Gx, gh, b_ih, b_hh, Hp, G, perm, lengths, reverse, one, tiny):
    # reset_after=False, first half: r, z and r * h_prev (operand of the W_hn GEMM).
    # Gx: (B, T, 3H)  gh: (>=n, 2H) = h_prev @ W_hh[:2H].T  Hp: (N, H)  G: (N, 4H)
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        gx, ghb, hp, gp = Gx[row, t], gh[b], Hp[p], G[p]
        for j in range(H):
            r = ftz(sigmoid_(gx[j] + b_ih[j] + ghb[j] + b_hh[j]), tiny)
            gp[j] = r
            gp[H + j] = ftz(sigmoid_(gx[H + j] + b_ih[H + j] + ghb[H + j] + b_hh[H + j]), tiny)
            gp[3 * H + j] = ftz(r * hp[j], tiny)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def fwd_step_before_n(s, n, off, nb_next, off_next, Gx, ghn, b_ih, b_hh, Hp, G,
                      perm, lengths, reverse, y, h_n, one, tiny):
    # reset_after=False, second half: n and h_t.  ghn: (>=n, H) = (r * h_prev) @ W_hn.T
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        gx, g_n, hp, gp, yr = Gx[row, t], ghn[b], Hp[p], G[p], y[row, t]
        for j in range(H):
            z = gp[H + j]
            nn = ftz(tanh_(gx[2 * H + j] + b_ih[2 * H + j] + g_n[j] + b_hh[2 * H + j]), tiny)
            gp[2 * H + j] = nn
            yr[j] = ftz((one - z) * nn + z * hp[j], tiny)
        _store_h(b, row, b < nb_next, off_next, yr, Hp, h_n)


@njit(inline="always")
def _dh_in(b, row, t, nb_next, dhz, dhg, dh_n, dy, tiny):
    # dhz[b] <- dL/dh_t of sorted row b: from step s+1 (direct path dhz + GEMM path dhg) or,
    # at the row's last step, from dh_n; plus dy at the time index read at this step.
    g, dyr = dhz[b], dy[row, t]
    if b < nb_next:
        src, src2 = dhz[b], dhg[b]
        for j in range(g.shape[0]):
            g[j] = ftz(src[j] + src2[j] + dyr[j], tiny)
    else:
        src = dh_n[row]
        for j in range(g.shape[0]):
            g[j] = ftz(src[j] + dyr[j], tiny)
    return g


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def bwd_step_after(s, n, off, nb_next, dy, dh_n, Hp, G, perm, lengths, reverse,
                   dhz, dhg, dGx, dGh, db, one, tiny):
    # reset_after=True, one step backward for the n active sorted rows.
    # dy: (B, T, H)  dh_n: (B, H)  Hp: (N, H)  G: (N, 4H)  dhz, dhg: (B, H) sorted rows
    # dGx: (B, T, 3H) (zero at padding, written here at active positions)  dGh: (N, 3H)
    # db: (B, 4H) per-row running sums of da_r, da_z, da_n, da_n * r (the bias gradients).
    # On exit dhz[b] = dL/dh_t * z (direct path to h_prev); the caller puts dGh @ W_hh in dhg.
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        g = _dh_in(b, row, t, nb_next, dhz, dhg, dh_n, dy, tiny)
        hp, gp, dgx, dgh, dbb = Hp[p], G[p], dGx[row, t], dGh[p], db[b]
        # several short loops, each touching few arrays: one long loop storing into five
        # views needed more runtime alias checks than LLVM allows and stayed scalar (2x slower)
        for j in range(H):
            gj = g[j]
            r = gp[j]
            z = gp[H + j]
            nn = gp[2 * H + j]
            da_n = ftz(gj * (one - z) * (one - nn * nn), tiny)
            dgh[j] = ftz(da_n * gp[3 * H + j] * r * (one - r), tiny)       # da_r
            dgh[H + j] = ftz(gj * (hp[j] - nn) * z * (one - z), tiny)     # da_z
            dgh[2 * H + j] = da_n
        for j in range(H):
            g[j] = ftz(g[j] * gp[H + j], tiny)
        for k in range(3 * H):
            v = dgh[k]
            dgx[k] = v
            dbb[k] += v
        for j in range(H):
            v = ftz(dgh[2 * H + j] * gp[j], tiny)                           # da_n * r
            dgh[2 * H + j] = v
            dbb[3 * H + j] += v


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def bwd_step_before_n(s, n, off, nb_next, dy, dh_n, Hp, G, perm, lengths, reverse,
                      dhz, dhg, dGx, dGh, db, one, tiny):
    # reset_after=False, first half: da_n, da_z and the direct path g * z.
    # Same shapes as bwd_step_after.  The caller then forms d(r h) = da_n @ W_hn.
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        g = _dh_in(b, row, t, nb_next, dhz, dhg, dh_n, dy, tiny)
        hp, gp, dgx, dgh, dbb = Hp[p], G[p], dGx[row, t], dGh[p], db[b]
        for j in range(H):                       # short loops: see bwd_step_after
            gj = g[j]
            z = gp[H + j]
            nn = gp[2 * H + j]
            dgh[H + j] = ftz(gj * (hp[j] - nn) * z * (one - z), tiny)     # da_z
            dgh[2 * H + j] = ftz(gj * (one - z) * (one - nn * nn), tiny)  # da_n
        for j in range(H):
            g[j] = g[j] * gp[H + j]
        for k in range(H, 3 * H):
            v = dgh[k]
            dgx[k] = v
            dbb[k] += v
        for j in range(H):
            dbb[3 * H + j] += dgh[2 * H + j]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def bwd_step_before_r(s, n, off, d_rh, Hp, G, perm, lengths, reverse, dhz, dGx, dGh, db,
                      one, tiny):
    # reset_after=False, second half.  d_rh: (>=n, H) = da_n @ W_hn  (gradient of r * h_prev)
    H = Hp.shape[1]
    for b in prange(n):
        row = perm[b]
        t = _time(s, lengths[row], reverse)
        p = off + b
        d, hp, gp, dgx, dgh, g, dbb = d_rh[b], Hp[p], G[p], dGx[row, t], dGh[p], dhz[b], db[b]
        for j in range(H):                       # short loops: see bwd_step_after
            r = gp[j]
            dgh[j] = ftz(d[j] * hp[j] * r * (one - r), tiny)                # da_r
        for j in range(H):
            g[j] = ftz(g[j] + d[j] * gp[j], tiny)
        for j in range(H):
            v = dgh[j]
            dgx[j] = v
            dbb[j] += v


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def sum_rows_scatter(dhz, dhg, perm, out, tiny):
    # out[perm[b]] = dhz[b] + dhg[b]      dhz, dhg, out: (B, H)
    for b in range(dhz.shape[0]):
        o, a, c = out[perm[b]], dhz[b], dhg[b]
        for j in range(o.shape[0]):
            o[j] = ftz(a[j] + c[j], tiny)
