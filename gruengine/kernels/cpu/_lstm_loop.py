"""The LSTM recurrence on the CPU: the whole time loop of a block of batch rows in one call.

The layout is the GRU's (``_gru_loop``, ``_packed``): rows sorted by length, packed per
step, blocks of sorted rows running their recurrences in parallel with no synchronisation.

* ``Xp`` (N, I): the packed inputs; ``Hp``, ``Cp`` (N, H): h_prev and c_prev of every packed
  row; ``Acts`` (N, 5H): i, f, g, o and tanh(c_t) (one scratch row per block in inference);
* ``dA`` (N, 4H): da_i, da_f, da_g, da_o (the gradients of the gate pre-activations).

Per step a block runs the (rows, I) x (I, 4H) and (rows, H) x (H, 4H) products into one tile of
accumulators on the micro-kernel (W_ih and W_hh packed into panels of the four gates of
``lanes`` hidden units) and the gate maths row by row; backward,
the gate backward row by row, the (rows, 4H) x (4H, H) product for dh_prev and the
(rows, 4H) x (4H, I) product for the rows' input gradients. Iteration
``c`` writes only the rows of block ``c``. Gate loops index block views (see
``_gru_loop._blocks``). Values below ``tiny`` are flushed to zero.
"""
import numpy as np
from numba import njit, prange

from ._gemm import MR as GMR, tile
from ._gru_loop import _blocks, _rows_at, _rows_gemm, _time
from ._math import ftz, sigmoid_, tanh_
from ._simd import lanes, microkernel

__all__ = []

_mk4 = microkernel(4)      # W_hh panels of i, f, g, o
MR = _mk4.MR

_FLAGS = dict(cache=True, error_model="numpy", fastmath={"contract"})


@njit(inline="always")
def _copy(src, dst):
    for j in range(src.shape[0]):
        dst[j] = src[j]


@njit(**_FLAGS)
def _gates(S, i, bias, cp, act, yrow, cnew, tiny):
    # S: (MR, 4*HP) W [x h] for i, f, g, o (gate blocks HP apart)   bias: (4H,) b_ih + b_hh
    # cp: (H,) c_prev   act: (5H,) <- i, f, g, o, tanh(c)   yrow <- h   cnew: (H,) <- c
    H = cp.shape[0]
    HP = S.shape[1] // 4
    s_i, s_f, s_g, s_o = _blocks(S[i], 4, HP)
    b_i, b_f, b_g, b_o = _blocks(bias, 4, H)
    a_i, a_f, a_g, a_o = _blocks(act, 4, H)
    a_tc = act[4 * H:]
    for j in range(H):
        a_i[j] = ftz(sigmoid_(s_i[j] + b_i[j]), tiny)
        a_f[j] = ftz(sigmoid_(s_f[j] + b_f[j]), tiny)
        a_g[j] = ftz(tanh_(s_g[j] + b_g[j]), tiny)
        a_o[j] = ftz(sigmoid_(s_o[j] + b_o[j]), tiny)
    for j in range(H):
        c = ftz(a_f[j] * cp[j] + a_i[j] * a_g[j], tiny)
        cnew[j] = c
        a_tc[j] = ftz(tanh_(c), tiny)
    for j in range(H):
        yrow[j] = ftz(a_o[j] * a_tc[j], tiny)


@njit(**_FLAGS)
def _fwd_block(r0, r1, nb, off, Xp, Wx, Wh, bias, Hp, Cp, Acts, keep, perm, lengths, reverse,
               y, h_n, c_n, tiny):
    # Wx: (HT, I, 4*VW), Wh: (HT, H, 4*VW) panels: W[jt, k, g*VW + u] = W[g*H + jt*VW + u, k],
    # zero past H. keep: store the activations in Acts (training), else Acts is a scratch row
    H = Hp.shape[1]
    I = Xp.shape[1]
    VW = lanes(Hp)
    HT = Wh.shape[0]
    HP = HT * VW
    NR = 4 * VW
    S = np.empty((MR, 4 * HP), Hp.dtype)
    cnew = np.empty(H, Hp.dtype)
    for s in range(nb.shape[0] - 1):
        n = _rows_at(s, nb, r0, r1)
        if n == 0:
            break
        o = off[s] + r0
        for i0 in range(0, n, MR):
            mr = min(MR, n - i0)
            for jt in range(HT):
                _mk4(Xp, (o + i0) * I, I, 1, mr, Wx, jt * I * NR, NR, I,
                     S, jt * VW, 4 * HP, HP, NR, False)
                _mk4(Hp, (o + i0) * H, H, 1, mr, Wh, jt * H * NR, NR, H,
                     S, jt * VW, 4 * HP, HP, NR, True)
            for i in range(mr):
                b = r0 + i0 + i
                p = o + i0 + i
                row = perm[b]
                yrow = y[row, _time(s, lengths[row], reverse)]
                _gates(S, i, bias, Cp[p], Acts[p if keep else 0], yrow, cnew, tiny)
                if b < nb[s + 1]:       # the state moves to the packed rows of step s+1
                    _copy(yrow, Hp[off[s + 1] + b])
                    _copy(cnew, Cp[off[s + 1] + b])
                else:
                    _copy(yrow, h_n[row])
                    _copy(cnew, c_n[row])


@njit(parallel=True, **_FLAGS)
def fwd(bounds, nb, off, Xp, Wx, Wh, bias, Hp, Cp, Acts, keep, perm, lengths, reverse, y, h_n,
        c_n, tiny):
    # bounds: (C+1,) sorted-row bounds of the blocks; Acts: (N, 5H) when keep, else (C, 5H)
    for c in prange(bounds.shape[0] - 1):
        Ac = Acts if keep else Acts[c:c + 1]
        _fwd_block(bounds[c], bounds[c + 1], nb, off, Xp, Wx, Wh, bias, Hp, Cp, Ac, keep, perm,
                   lengths, reverse, y, h_n, c_n, tiny)


@njit(**_FLAGS)
def _gates_bwd(dh, dc, act, cp, da, dbb, one, tiny):
    # dh: (H,) dL/dh_t   dc: (H,) dL/dc_t from step s+1, left as dL/dc_prev
    # act: (5H,) i, f, g, o, tanh(c)   cp: (H,) c_prev   da: (4H,) <- da_i, da_f, da_g, da_o
    H = dh.shape[0]
    a_i, a_f, a_g, a_o = _blocks(act, 4, H)
    a_tc = act[4 * H:]
    d_i, d_f, d_g, d_o = _blocks(da, 4, H)
    for j in range(H):
        tc = a_tc[j]
        o = a_o[j]
        d_o[j] = ftz(dh[j] * tc * o * (one - o), tiny)
        dc[j] = ftz(dc[j] + dh[j] * o * (one - tc * tc), tiny)
    for j in range(H):
        dct = dc[j]
        i = a_i[j]
        f = a_f[j]
        g = a_g[j]
        d_i[j] = ftz(dct * g * i * (one - i), tiny)
        d_f[j] = ftz(dct * cp[j] * f * (one - f), tiny)
        d_g[j] = ftz(dct * i * (one - g * g), tiny)
        dc[j] = ftz(dct * f, tiny)
    for k in range(4 * H):
        dbb[k] += da[k]


@njit(**_FLAGS)
def _bwd_block(r0, r1, nb, off, dy, dh_n, dc_n, Cp, Acts, W_hh, W_ih, perm, lengths, reverse,
               dh, dc, dA, dXp, db, one, tiny):
    H = Cp.shape[1]
    NR = 3 * lanes(Cp)
    for s in range(nb.shape[0] - 2, -1, -1):
        n = _rows_at(s, nb, r0, r1)
        if n == 0:
            continue
        o = off[s] + r0
        for i in range(n):
            b = r0 + i
            row = perm[b]
            g, d, dyrow = dh[b], dc[b], dy[row, _time(s, lengths[row], reverse)]
            if b < nb[s + 1]:           # dh[b] holds dA_{s+1} @ W_hh, dc[b] dL/dc_t
                for j in range(H):
                    g[j] = ftz(g[j] + dyrow[j], tiny)
            else:                       # the row's last step: the final-state gradients
                src, srcc = dh_n[row], dc_n[row]
                for j in range(H):
                    g[j] = ftz(src[j] + dyrow[j], tiny)
                for j in range(H):
                    d[j] = srcc[j]
            _gates_bwd(g, d, Acts[o + i], Cp[o + i], dA[o + i], db[b], one, tiny)
        # dh = dA @ W_hh (the LSTM's h_prev reaches h_t only through the gates)
        for j0 in range(0, H, NR):
            nc = min(NR, H - j0)
            for i0 in range(0, n, GMR):
                tile(min(GMR, n - i0), dA, (o + i0) * 4 * H, 4 * H, 1, W_hh, j0, H, 4 * H,
                     dh, (r0 + i0) * H + j0, H, nc, False)
        _rows_gemm(n, o, 4 * H, dA, W_ih, dXp)          # the rows' dX = dA @ W_ih


@njit(parallel=True, **_FLAGS)
def bwd(bounds, nb, off, dy, dh_n, dc_n, Cp, Acts, W_hh, W_ih, perm, lengths, reverse, dh, dc,
        dA, dXp, db, one, tiny):
    # dh, dc: (B, H) by sorted row; dXp: (N, I) packed input gradients;
    # db: (B, 4H) per-row bias-gradient sums
    for c in prange(bounds.shape[0] - 1):
        _bwd_block(bounds[c], bounds[c + 1], nb, off, dy, dh_n, dc_n, Cp, Acts, W_hh, W_ih,
                   perm, lengths, reverse, dh, dc, dA, dXp, db, one, tiny)
