"""``@cuda.jit`` kernels of the GRU recurrence (one layer, one direction).

The per-step forward is one fused launch: a block owns a tile of (TB batch rows) x
(TJ hidden units), computes the recurrent products of its r, z and n rows from
shared-memory tiles of h_{t-1} and W_hh^T, then applies the gate math and writes h_t.
The Cho et al. form (reset_after=False) needs r*h of *all* units before the n product,
so it runs as two launches per step (mode 1: r, z; mode 2: n, h).

The backward per step is one fused launch too for reset_after=True (gate backward and
dh_{t-1} = dh_t z + dG_h @ W_hh with the same tiling); the Cho form runs elementwise
launches and GEMMs (``blas.gemm``). Weight gradients are GEMMs after the loop.

The cache is one (6, B, T, H) array: slots below.
"""
import math

from numba import cuda

# slots of the cache array (6, B, T, H)
R_, Z_, N_, HN_, HP_, RH_ = 0, 1, 2, 3, 4, 5
CACHE_SLOTS = 6

# fused step tile: blocks are (TJ, TB) threads; TK is the reduction chunk in shared memory
TJ = 32
TB = 8
TK = 32

MODE_FULL, MODE_RZ, MODE_N = 0, 1, 2


@cuda.jit(device=True)
def sigmoid(a, one):
    return one / (one + math.exp(-a))


@cuda.jit(device=True)
def time_index(s, length, reverse):
    # time index read at step s by a row of this length (valid when s < length)
    return length - 1 - s if reverse else s


@cuda.jit(cache=True)
def gru_step_forward_kernel(Gx, WT, b_hh, src, h_prev, h_next, rh_out, y, cache,
                            lengths, s, reverse, mode):
    # Gx: (B, T, 3H) = x W_ih^T + b_ih   WT: (H, 3H) = W_hh^T   b_hh: (3H,)
    # src: (B, H) vector multiplied by W_hh rows (h_prev, or r*h_prev in MODE_N)
    # h_prev, h_next, rh_out: (B, H)   y: (B, T, H)   cache: (6, B, T, H)   lengths: (B,)
    # mode: MODE_FULL (reset_after), MODE_RZ / MODE_N (the two halves of reset_after=False)
    hs = cuda.shared.array((TB, TK), dtype=Gx.dtype)
    ws = cuda.shared.array((3, TK, TJ), dtype=Gx.dtype)
    B = h_prev.shape[0]
    H = h_prev.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    j = cuda.blockIdx.x * TJ + tx
    b = cuda.blockIdx.y * TB + ty
    zero = Gx.dtype.type(0)
    one = Gx.dtype.type(1)
    g_lo = 2 if mode == MODE_N else 0
    g_hi = 2 if mode == MODE_RZ else 3
    acc_r = zero
    acc_z = zero
    acc_n = zero
    for k0 in range(0, H, TK):
        # every thread of the block takes part in the loads and barriers
        for kk in range(tx, TK, TJ):
            k = k0 + kk
            hs[ty, kk] = src[b, k] if (b < B and k < H) else zero
        for g in range(g_lo, g_hi):
            for kk in range(ty, TK, TB):
                k = k0 + kk
                ws[g, kk, tx] = WT[k, g * H + j] if (k < H and j < H) else zero
        cuda.syncthreads()
        for kk in range(TK):
            hv = hs[ty, kk]
            if g_lo == 0:
                acc_r += hv * ws[0, kk, tx]
                acc_z += hv * ws[1, kk, tx]
            if g_hi == 3:
                acc_n += hv * ws[2, kk, tx]
        cuda.syncthreads()
    if b >= B or j >= H:
        return
    L = lengths[b]
    hp = h_prev[b, j]
    if s >= L:
        # inactive row: the state passes through unchanged
        if mode != MODE_RZ:
            h_next[b, j] = hp
        return
    t = time_index(s, L, reverse)
    if mode == MODE_N:
        hn = acc_n + b_hh[2 * H + j]
        n = math.tanh(Gx[b, t, 2 * H + j] + hn)
        z = cache[Z_, b, t, j]
    else:
        r = sigmoid(Gx[b, t, j] + acc_r + b_hh[j], one)
        z = sigmoid(Gx[b, t, H + j] + acc_z + b_hh[H + j], one)
        cache[R_, b, t, j] = r
        cache[Z_, b, t, j] = z
        cache[HP_, b, t, j] = hp
        if mode == MODE_RZ:
            rh = r * hp
            rh_out[b, j] = rh
            cache[RH_, b, t, j] = rh
            return
        hn = acc_n + b_hh[2 * H + j]
        n = math.tanh(Gx[b, t, 2 * H + j] + r * hn)
    cache[N_, b, t, j] = n
    cache[HN_, b, t, j] = hn
    h = (one - z) * n + z * hp
    y[b, t, j] = h
    h_next[b, j] = h


@cuda.jit(cache=True)
def gru_step_backward_kernel(dy, dh, cache, lengths, s, reverse, dGx, dGh, dG_step, base,
                             d_rh, mode):
    # reset_after=False (Cho et al.): elementwise part of one backward step, two launches:
    # MODE_RZ (z and n gates), a GEMM d_rh = da_n @ W_hn, then MODE_N (the r gate);
    # dh_{t-1} = base + dG_step @ W_hh[:2H] is a GEMM after MODE_N.
    # dy: (B, T, H)  dh: (B, H) dL/dh after step s  cache: (6, B, T, H)  lengths: (B,)
    # dGx, dGh: (B, T, 3H) gradients of the input / recurrent pre-activations (zero at padding)
    # dG_step: (B, 3H) this step's dGh rows (zero for inactive rows), fed to the dh GEMM
    # base: (B, H) the part of dL/dh_{t-1} that does not go through W_hh
    # d_rh: (B, H) dL/d(r*h_prev) (MODE_N only, from the GEMM between the two launches)
    # mode: MODE_RZ, then MODE_N
    B = dh.shape[0]
    H = dh.shape[1]
    one = dy.dtype.type(1)
    zero = dy.dtype.type(0)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, B * H, stride):
        b = i // H
        j = i - b * H
        L = lengths[b]
        if s >= L:
            if mode != MODE_N:
                dG_step[b, j] = zero
                dG_step[b, H + j] = zero
                dG_step[b, 2 * H + j] = zero
                base[b, j] = dh[b, j]
            continue
        t = time_index(s, L, reverse)
        r = cache[R_, b, t, j]
        if mode == MODE_N:
            hp = cache[HP_, b, t, j]
            drh = d_rh[b, j]
            da_r = drh * hp * r * (one - r)
            dGx[b, t, j] = da_r
            dGh[b, t, j] = da_r
            dG_step[b, j] = da_r
            base[b, j] += drh * r
            continue
        z = cache[Z_, b, t, j]
        n = cache[N_, b, t, j]
        hp = cache[HP_, b, t, j]
        g = dh[b, j] + dy[b, t, j]
        da_n = g * (one - z) * (one - n * n)
        da_z = g * (hp - n) * z * (one - z)
        dGx[b, t, H + j] = da_z
        dGx[b, t, 2 * H + j] = da_n
        dGh[b, t, H + j] = da_z
        dG_step[b, H + j] = da_z
        base[b, j] = g * z
        # da_r needs W_hn^T da_n over all units: a GEMM between this launch and MODE_N
        dGh[b, t, 2 * H + j] = da_n
        dG_step[b, 2 * H + j] = da_n
        dG_step[b, j] = zero


@cuda.jit(cache=True)
def gru_step_backward_fused_kernel(dy, dh, cache, lengths, s, reverse, W_hh, dGx, dGh, dh_next):
    # reset_after=True only. One launch per step: the gate backward and
    # dh_{t-1} = dh_t * z + dG_h @ W_hh, mirroring gru_step_forward_kernel's tiling.
    # dy: (B, T, H)  dh: (B, H) dL/dh after step s  cache: (6, B, T, H)  lengths: (B,)
    # W_hh: (3H, H)  dGx, dGh: (B, T, 3H) (zero at padding)  dh_next: (B, H)
    # block (TJ, TB) owns dh_next[b, k] for TB rows b and TJ units k; it recomputes the
    # gate gradients of its rows chunk by chunk (cheap next to the product) and only the
    # blocks of column 0 store them to dGx / dGh, so every element has one writer.
    gs = cuda.shared.array((3, TB, TK), dtype=dy.dtype)
    ws = cuda.shared.array((3, TK, TJ), dtype=dy.dtype)
    B = dh.shape[0]
    H = dh.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    k = cuda.blockIdx.x * TJ + tx
    b = cuda.blockIdx.y * TB + ty
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    active = False
    t = 0
    if b < B:
        L = lengths[b]
        active = s < L
        if active:
            t = time_index(s, L, reverse)
    store = cuda.blockIdx.x == 0
    acc = zero
    for j0 in range(0, H, TK):
        for kk in range(tx, TK, TJ):
            j = j0 + kk
            if active and j < H:
                r = cache[R_, b, t, j]
                z = cache[Z_, b, t, j]
                n = cache[N_, b, t, j]
                g = dh[b, j] + dy[b, t, j]
                da_n = g * (one - z) * (one - n * n)
                da_z = g * (cache[HP_, b, t, j] - n) * z * (one - z)
                da_r = da_n * cache[HN_, b, t, j] * r * (one - r)
                gs[0, ty, kk] = da_r
                gs[1, ty, kk] = da_z
                gs[2, ty, kk] = da_n * r
                if store:
                    dGx[b, t, j] = da_r
                    dGx[b, t, H + j] = da_z
                    dGx[b, t, 2 * H + j] = da_n
                    dGh[b, t, j] = da_r
                    dGh[b, t, H + j] = da_z
                    dGh[b, t, 2 * H + j] = da_n * r
            else:
                gs[0, ty, kk] = zero
                gs[1, ty, kk] = zero
                gs[2, ty, kk] = zero
        for g3 in range(3):
            for kk in range(ty, TK, TB):
                j = j0 + kk
                ws[g3, kk, tx] = W_hh[g3 * H + j, k] if (j < H and k < H) else zero
        cuda.syncthreads()
        for kk in range(TK):
            acc += (gs[0, ty, kk] * ws[0, kk, tx] + gs[1, ty, kk] * ws[1, kk, tx]
                    + gs[2, ty, kk] * ws[2, kk, tx])
        cuda.syncthreads()
    if b >= B or k >= H:
        return
    if active:
        dh_next[b, k] = (dh[b, k] + dy[b, t, k]) * cache[Z_, b, t, k] + acc
    else:
        dh_next[b, k] = dh[b, k]
