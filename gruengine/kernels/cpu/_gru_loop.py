"""The GRU recurrence on the CPU: the whole time loop of a block of batch rows in one call.

Layout (built by ``gruengine.kernels.cpu.gru``, see ``_packed``):

* rows are sorted by length, descending: sorted row ``b`` is original row ``perm[b]``, and
  the rows active at step ``s`` are the prefix ``b < nb[s]``;
* per-step arrays are *packed* (like a PyTorch PackedSequence): step ``s`` owns packed rows
  ``off[s] .. off[s] + nb[s] - 1``, packed row ``p = off[s] + b``;
* ``Xp`` (N, I): the inputs; ``Hp`` (N, H): h_prev of every packed row; ``G`` (N, 4H): r, z,
  n and ``W_hn h + b_hn`` (reset_after) or ``r * h_prev`` (reset_before);
  ``dA`` (N, 4H): da_r, da_z, da_n and ``da_n * r`` (reset_after; unused when reset_before).

The batch rows are cut into blocks (``bounds``); the recurrence of a row reads only that row,
so every block runs all its steps on one thread with no synchronisation, and the blocks run in
parallel (``prange``). Per step a block runs, tile by tile of MR rows, the (rows, I) x (I, 3H)
input product and the (rows, H) x (H, 3H) recurrent product into one tile of accumulators on
the ``_simd`` micro-kernel (the weights packed once per call into panels of the three gates of
``lanes`` hidden units), then the gate maths of those rows. Backward, per step the gate
backward row by row, the (rows, 3H) x (3H, H) product for dh_prev and the (rows, 3H) x (3H, I)
product for the rows' input gradients. Iteration ``c`` writes
only the rows of block ``c``: the packed rows of its sorted rows, original rows ``perm[b]`` of
y / h_n, rows ``b`` of the dh buffers and of ``db``. A row's values never depend on its block
(the micro-kernel's k order is fixed), so the results are the same for every thread count.

Gate loops are short, touch few arrays and index block views (``_blocks``): a loop storing
into many arrays needs more runtime alias checks than LLVM allows and stays scalar. Values
below ``tiny`` are flushed to zero, forward and backward (``tiny`` = sqrt(smallest normal),
see ``gru._scalars``).
"""
import numpy as np
from numba import njit, prange

from ._gemm import tile
from ._math import ftz, sigmoid_, tanh_
from ._simd import lanes, microkernel

__all__ = []

_mk3 = microkernel(3)      # W_hh panels of r, z, n (reset_after)
_mk2 = microkernel(2)      # r, z (reset_before)
_mk1 = microkernel(1)      # n from r * h_prev (reset_before)
MR = min(_mk3.MR, _mk2.MR, _mk1.MR)

_FLAGS = dict(cache=True, error_model="numpy", fastmath={"contract"})


@njit(inline="always")
def _time(s, length, reverse):
    return length - 1 - s if reverse else s


@njit(inline="always")
def _rows_at(s, nb, r0, r1):
    # rows of block [r0, r1) active at step s
    return max(0, min(nb[s], r1) - r0)


@njit(inline="always")
def _store_h(b, row, s, nb, off, yrow, Hp, h_n):
    # h_t goes to the packed slot of step s+1 while the row stays active, else to h_n
    H = Hp.shape[1]
    if b < nb[s + 1]:
        dst = Hp[off[s + 1] + b]
        for j in range(H):
            dst[j] = yrow[j]
    else:
        dst = h_n[row]
        for j in range(H):
            dst[j] = yrow[j]


@njit(inline="always")
def _blocks(a, n, H):
    # the first n blocks of H elements of a, as views: indexing a view by the loop index
    # keeps the loads contiguous (a[k * H + j] with a signed runtime H compiles to gathers
    # behind Numba's negative-index wraparound, ~6x slower)
    if n == 2:
        return a[:H], a[H:2 * H], a[:0], a[:0]
    if n == 3:
        return a[:H], a[H:2 * H], a[2 * H:3 * H], a[:0]
    return a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:4 * H]


# ---------------------------------------------------------------- forward

@njit(inline="always")
def _zero_block(S, mr, c0, n):
    # S[i, c0:c0+n] = 0 for the tile's rows
    for i in range(mr):
        row = S[i]
        for j in range(c0, c0 + n):
            row[j] = 0


@njit(**_FLAGS)
def _gates_after(S, i, bias, hp, gp, yrow, one, tiny):
    # S: (MR, 4*HP) blocks HP apart: W_hn h, W_r [x h], W_z [x h], W_in x
    # bias: (4H,) [b_ir+b_hr, b_iz+b_hz, b_in, b_hn]   hp: (H,) h_prev
    # gp: (4H,) <- r, z, n, W_hn h + b_hn
    H = hp.shape[0]
    s_hn, s_r, s_z, s_xn = _blocks(S[i], 4, S.shape[1] // 4)
    b_r, b_z, b_in, b_hn = _blocks(bias, 4, H)
    r_, z_, n_, hn_ = _blocks(gp, 4, H)
    for j in range(H):
        r = ftz(sigmoid_(s_r[j] + b_r[j]), tiny)
        hn = ftz(s_hn[j] + b_hn[j], tiny)
        r_[j] = r
        z_[j] = ftz(sigmoid_(s_z[j] + b_z[j]), tiny)
        n_[j] = ftz(tanh_(s_xn[j] + b_in[j] + r * hn), tiny)
        hn_[j] = hn
    for j in range(H):
        z = z_[j]
        yrow[j] = ftz((one - z) * n_[j] + z * hp[j], tiny)


@njit(**_FLAGS)
def _fwd_after_block(r0, r1, nb, off, Xp, Wx, Wh, bias, Hp, G, keep, perm, lengths, reverse,
                     y, h_n, one, tiny):
    # Wx: (HT, I, 3*VW) panels of W_ir, W_iz, W_in;  Wh: (HT, H, 3*VW) of W_hn, W_hr, W_hz:
    # panel[jt, k, g*VW + u] = W[gate_g*H + jt*VW + u, k], zero past H. The x and h products
    # of a tile land in S blocks [W_hn h | r | z | W_in x]: h writes blocks 0-2, x adds
    # into 1-3 (block 3 zeroed first). keep: store the gates in G (training), else G is one
    # scratch row (inference)
    H = Hp.shape[1]
    I = Xp.shape[1]
    VW = lanes(Hp)
    HT = Wh.shape[0]
    HP = HT * VW
    NR = 3 * VW
    S = np.empty((MR, 4 * HP), Hp.dtype)
    for s in range(nb.shape[0] - 1):
        n = _rows_at(s, nb, r0, r1)
        if n == 0:
            break
        o = off[s] + r0
        for i0 in range(0, n, MR):
            mr = min(MR, n - i0)
            _zero_block(S, mr, 3 * HP, HP)
            for jt in range(HT):
                _mk3(Hp, (o + i0) * H, H, 1, mr, Wh, jt * H * NR, NR, H,
                     S, jt * VW, 4 * HP, HP, NR, False)
                _mk3(Xp, (o + i0) * I, I, 1, mr, Wx, jt * I * NR, NR, I,
                     S, HP + jt * VW, 4 * HP, HP, NR, True)
            for i in range(mr):
                b = r0 + i0 + i
                p = o + i0 + i
                row = perm[b]
                yrow = y[row, _time(s, lengths[row], reverse)]
                _gates_after(S, i, bias, Hp[p], G[p if keep else 0], yrow, one, tiny)
                _store_h(b, row, s, nb, off, yrow, Hp, h_n)


@njit(parallel=True, **_FLAGS)
def fwd_after(bounds, nb, off, Xp, Wx, Wh, bias, Hp, G, keep, perm, lengths, reverse, y, h_n,
              one, tiny):
    # reset_after=True; bounds: (C+1,) sorted-row bounds of the blocks; G: (N, 4H) when
    # keep, else (C, 4H): one scratch row per block
    for c in prange(bounds.shape[0] - 1):
        Gc = G if keep else G[c:c + 1]
        _fwd_after_block(bounds[c], bounds[c + 1], nb, off, Xp, Wx, Wh, bias, Hp, Gc, keep,
                         perm, lengths, reverse, y, h_n, one, tiny)


@njit(**_FLAGS)
def _gates_before_rz(S, i, bias, hp, gp, one, tiny):
    # S: (MR, 4*HP) blocks: W_r [x h], W_z [x h], W_in x, W_hn (r h)
    # gp <- r, z and r * h_prev (block 3)
    H = hp.shape[0]
    s_r, s_z, _, _ = _blocks(S[i], 2, S.shape[1] // 4)
    b_r, b_z, _, _ = _blocks(bias, 2, H)
    r_, z_, _, rh_ = _blocks(gp, 4, H)
    for j in range(H):
        r = ftz(sigmoid_(s_r[j] + b_r[j]), tiny)
        r_[j] = r
        z_[j] = ftz(sigmoid_(s_z[j] + b_z[j]), tiny)
        rh_[j] = ftz(r * hp[j], tiny)


@njit(**_FLAGS)
def _gates_before_n(S, i, bias, hp, gp, yrow, one, tiny):
    # S blocks 2, 3: W_in x, W_hn (r h)   gp <- n;  yrow <- h_t
    H = hp.shape[0]
    _, _, s_xn, s_hn = _blocks(S[i], 4, S.shape[1] // 4)
    _, _, b_in, b_hn = _blocks(bias, 4, H)
    _, z_, n_, _ = _blocks(gp, 3, H)
    for j in range(H):
        n_[j] = ftz(tanh_(s_xn[j] + s_hn[j] + b_in[j] + b_hn[j]), tiny)
    for j in range(H):
        z = z_[j]
        yrow[j] = ftz((one - z) * n_[j] + z * hp[j], tiny)


@njit(**_FLAGS)
def _fwd_before_block(r0, r1, nb, off, Xp, Wx, Wrz, Wn, bias, Hp, G, keep, perm, lengths,
                      reverse, y, h_n, one, tiny):
    # Wx: (HT, I, 3*VW) panels of W_ir, W_iz, W_in;  Wrz: (HT, H, 2*VW) of W_hr, W_hz;
    # Wn: (HT, H, VW) of W_hn. A tile's S blocks: [r | z | W_in x | W_hn (r h)]
    H = Hp.shape[1]
    I = Xp.shape[1]
    VW = lanes(Hp)
    HT = Wn.shape[0]
    HP = HT * VW
    S = np.empty((MR, 4 * HP), Hp.dtype)
    for s in range(nb.shape[0] - 1):
        n = _rows_at(s, nb, r0, r1)
        if n == 0:
            break
        o = off[s] + r0
        for i0 in range(0, n, MR):
            mr = min(MR, n - i0)
            for jt in range(HT):
                _mk3(Xp, (o + i0) * I, I, 1, mr, Wx, jt * I * 3 * VW, 3 * VW, I,
                     S, jt * VW, 4 * HP, HP, 3 * VW, False)
                _mk2(Hp, (o + i0) * H, H, 1, mr, Wrz, jt * H * 2 * VW, 2 * VW, H,
                     S, jt * VW, 4 * HP, HP, 2 * VW, True)
            for i in range(mr):
                p = o + i0 + i
                _gates_before_rz(S, i, bias, Hp[p], G[p if keep else i], one, tiny)
            # A = r * h_prev: block 3 of the gate rows of this tile
            gr = (o + i0) * 4 * H if keep else 0
            for jt in range(HT):
                _mk1(G, gr + 3 * H, 4 * H, 1, mr, Wn, jt * H * VW, VW, H,
                     S, 3 * HP + jt * VW, 4 * HP, HP, VW, False)
            for i in range(mr):
                b = r0 + i0 + i
                p = o + i0 + i
                row = perm[b]
                yrow = y[row, _time(s, lengths[row], reverse)]
                _gates_before_n(S, i, bias, Hp[p], G[p if keep else i], yrow, one, tiny)
                _store_h(b, row, s, nb, off, yrow, Hp, h_n)


@njit(parallel=True, **_FLAGS)
def fwd_before(bounds, nb, off, Xp, Wx, Wrz, Wn, bias, Hp, G, keep, perm, lengths, reverse, y,
               h_n, one, tiny):
    # reset_after=False; G: (N, 4H) when keep, else (C*MR, 4H): MR scratch rows per block
    # (the r * h_prev rows of a tile are a GEMM operand)
    for c in prange(bounds.shape[0] - 1):
        Gc = G if keep else G[c * MR:(c + 1) * MR]
        _fwd_before_block(bounds[c], bounds[c + 1], nb, off, Xp, Wx, Wrz, Wn, bias, Hp, Gc,
                          keep, perm, lengths, reverse, y, h_n, one, tiny)


# ---------------------------------------------------------------- backward

@njit(**_FLAGS)
def _dh_in(b, row, s, nb, dhz, dhg, dh_n, dyrow, tiny):
    # dhz[b] <- dL/dh_t: from step s+1 (direct path dhz + GEMM path dhg) or, at the row's
    # last step, from dh_n; plus dy at the time index read at this step
    g = dhz[b]
    if b < nb[s + 1]:
        src = dhg[b]
        for j in range(g.shape[0]):
            g[j] = ftz(g[j] + src[j] + dyrow[j], tiny)
    else:
        src = dh_n[row]
        for j in range(g.shape[0]):
            g[j] = ftz(src[j] + dyrow[j], tiny)
    return g


@njit(**_FLAGS)
def _gates_bwd_after(g, gp, hp, da, dbb, one, tiny):
    # g: (H,) dL/dh_t, left as g * z (the direct path to h_prev)   gp: (4H,) r, z, n, hn
    # da: (4H,) <- da_r, da_z, da_n, da_n * r   dbb: (4H,) += da
    H = g.shape[0]
    r_, z_, n_, hn_ = _blocks(gp, 4, H)
    d_r, d_z, d_n, d_nr = _blocks(da, 4, H)
    for j in range(H):
        gj = g[j]
        r = r_[j]
        z = z_[j]
        nn = n_[j]
        da_n = ftz(gj * (one - z) * (one - nn * nn), tiny)
        d_r[j] = ftz(da_n * hn_[j] * r * (one - r), tiny)
        d_z[j] = ftz(gj * (hp[j] - nn) * z * (one - z), tiny)
        d_n[j] = da_n
        d_nr[j] = ftz(da_n * r, tiny)
    for j in range(H):
        g[j] = ftz(g[j] * z_[j], tiny)
    for k in range(4 * H):
        dbb[k] += da[k]


@njit(inline="always")
def _rows_gemm(n, o, K, dA, W, dst):
    # dst[o + i] = dA[o + i, 0:K] @ W[0:K]   (i < n; W row-major (K, cols), dst (N, cols))
    F = W.shape[1]
    NR = 3 * lanes(W)
    ld = dA.shape[1]
    for j0 in range(0, F, NR):
        nc = min(NR, F - j0)
        for i0 in range(0, n, MR):
            tile(min(MR, n - i0), dA, (o + i0) * ld, ld, 1, W, j0, F, K,
                 dst, (o + i0) * F + j0, F, nc, False)


@njit(inline="always")
def _dh_gemm(n, o, r0, ka, kb, W, wb, dA, dst):
    # dst[r0 + i] = dA[o + i, 0:2H] @ W[0:2H] + dA[o + i, ka:ka+kb] @ W[wb:wb+kb]   (i < n)
    H = W.shape[1]
    NR = 3 * lanes(W)
    for j0 in range(0, H, NR):
        nc = min(NR, H - j0)
        for i0 in range(0, n, MR):
            mr = min(MR, n - i0)
            tile(mr, dA, (o + i0) * 4 * H, 4 * H, 1, W, j0, H, 2 * H,
                 dst, (r0 + i0) * H + j0, H, nc, False)
            tile(mr, dA, (o + i0) * 4 * H + ka, 4 * H, 1, W, wb * H + j0, H, kb,
                 dst, (r0 + i0) * H + j0, H, nc, True)


@njit(**_FLAGS)
def _bwd_after_block(r0, r1, nb, off, dy, dh_n, Hp, G, W_hh, W_ih, perm, lengths, reverse,
                     dhz, dhg, dA, dXp, db, one, tiny):
    H = Hp.shape[1]
    for s in range(nb.shape[0] - 2, -1, -1):
        n = _rows_at(s, nb, r0, r1)
        if n == 0:
            continue
        o = off[s] + r0
        for i in range(n):
            b = r0 + i
            row = perm[b]
            g = _dh_in(b, row, s, nb, dhz, dhg, dh_n,
                       dy[row, _time(s, lengths[row], reverse)], tiny)
            _gates_bwd_after(g, G[o + i], Hp[o + i], dA[o + i], db[b], one, tiny)
        # dhg = [da_r, da_z] @ W_hh[:2H] + (da_n * r) @ W_hh[2H:];  dX = [da_r, da_z, da_n] @ W_ih
        _dh_gemm(n, o, r0, 3 * H, H, W_hh, 2 * H, dA, dhg)
        _rows_gemm(n, o, 3 * H, dA, W_ih, dXp)


@njit(parallel=True, **_FLAGS)
def bwd_after(bounds, nb, off, dy, dh_n, Hp, G, W_hh, W_ih, perm, lengths, reverse, dhz, dhg,
              dA, dXp, db, one, tiny):
    # reset_after=True. dhz, dhg: (B, H) by sorted row; dXp: (N, I) packed input gradients;
    # db: (B, 4H) per-row bias-gradient sums
    for c in prange(bounds.shape[0] - 1):
        _bwd_after_block(bounds[c], bounds[c + 1], nb, off, dy, dh_n, Hp, G, W_hh, W_ih, perm,
                         lengths, reverse, dhz, dhg, dA, dXp, db, one, tiny)


@njit(**_FLAGS)
def _gates_bwd_before_zn(g, gp, hp, da, one, tiny):
    # da <- da_z, da_n (blocks 1, 2); g left as g * z
    H = g.shape[0]
    _, z_, n_, _ = _blocks(gp, 3, H)
    _, d_z, d_n, _ = _blocks(da, 3, H)
    for j in range(H):
        gj = g[j]
        z = z_[j]
        nn = n_[j]
        d_z[j] = ftz(gj * (hp[j] - nn) * z * (one - z), tiny)
        d_n[j] = ftz(gj * (one - z) * (one - nn * nn), tiny)
    for j in range(H):
        g[j] = g[j] * z_[j]


@njit(**_FLAGS)
def _gates_bwd_before_r(d, g, gp, hp, da, dbb, one, tiny):
    # d: (H,) gradient of r * h_prev = da_n @ W_hn   da <- da_r (block 0); g += d * r
    H = g.shape[0]
    r_ = gp[:H]
    d_r = da[:H]
    for j in range(H):
        r = r_[j]
        d_r[j] = ftz(d[j] * hp[j] * r * (one - r), tiny)
    for j in range(H):
        g[j] = ftz(g[j] + d[j] * r_[j], tiny)
    for k in range(3 * H):
        dbb[k] += da[k]


@njit(**_FLAGS)
def _bwd_before_block(r0, r1, nb, off, dy, dh_n, Hp, G, W_hh, W_ih, perm, lengths, reverse,
                      dhz, dhg, d_rh, dA, dXp, db, one, tiny):
    H = Hp.shape[1]
    NR = 3 * lanes(Hp)
    for s in range(nb.shape[0] - 2, -1, -1):
        n = _rows_at(s, nb, r0, r1)
        if n == 0:
            continue
        o = off[s] + r0
        for i in range(n):
            b = r0 + i
            row = perm[b]
            g = _dh_in(b, row, s, nb, dhz, dhg, dh_n,
                       dy[row, _time(s, lengths[row], reverse)], tiny)
            _gates_bwd_before_zn(g, G[o + i], Hp[o + i], dA[o + i], one, tiny)
        # d_rh = da_n @ W_hn
        for j0 in range(0, H, NR):
            nc = min(NR, H - j0)
            for i0 in range(0, n, MR):
                tile(min(MR, n - i0), dA, (o + i0) * 4 * H + 2 * H, 4 * H, 1, W_hh,
                     2 * H * H + j0, H, H, d_rh, (r0 + i0) * H + j0, H, nc, False)
        for i in range(n):
            b = r0 + i
            _gates_bwd_before_r(d_rh[b], dhz[b], G[o + i], Hp[o + i], dA[o + i], db[b], one,
                                tiny)
        # dhg = [da_r, da_z] @ W_hh[:2H]
        for j0 in range(0, H, NR):
            nc = min(NR, H - j0)
            for i0 in range(0, n, MR):
                tile(min(MR, n - i0), dA, (o + i0) * 4 * H, 4 * H, 1, W_hh, j0, H, 2 * H,
                     dhg, (r0 + i0) * H + j0, H, nc, False)
        _rows_gemm(n, o, 3 * H, dA, W_ih, dXp)


@njit(parallel=True, **_FLAGS)
def bwd_before(bounds, nb, off, dy, dh_n, Hp, G, W_hh, W_ih, perm, lengths, reverse, dhz, dhg,
               d_rh, dA, dXp, db, one, tiny):
    # reset_after=False; d_rh: (B, H) scratch by sorted row
    for c in prange(bounds.shape[0] - 1):
        _bwd_before_block(bounds[c], bounds[c + 1], nb, off, dy, dh_n, Hp, G, W_hh, W_ih, perm,
                          lengths, reverse, dhz, dhg, d_rh, dA, dXp, db, one, tiny)


@njit(cache=True, error_model="numpy")
def sum_rows_scatter(dhz, dhg, perm, out, tiny):
    # out[perm[b]] = dhz[b] + dhg[b]      dhz, dhg, out: (B, H)
    for b in range(dhz.shape[0]):
        o, a, c = out[perm[b]], dhz[b], dhg[b]
        for j in range(o.shape[0]):
            o[j] = ftz(a[j] + c[j], tiny)
