"""The GRU recurrence in ONE block: every step of a layer in a single launch.

No launch per step: h (forward), dh and the step's gate gradients (backward) live in shared
memory and ``syncthreads`` separates the phases of a step. For small B*H only (one SM does all
the work), where the per-step launches of the tiled path (``gru_kernels``) cost more than the
arithmetic. Same cache layout as the tiled path, so either backward reads either forward's cache.
"""
import math

from numba import cuda

from .gru_kernels import HN_, HP_, N_, R_, RH_, Z_, sigmoid, time_index

PERSIST_MAX = 1024      # largest B*H (sizes the shared arrays: a compile-time constant)
PERSIST_X2 = 2048       # 2 * PERSIST_MAX, 3 * PERSIST_MAX written out: shared-array shapes
PERSIST_X3 = 3072       # must be literals, not expressions


@cuda.jit(cache=True)
def gru_forward_persistent_kernel(Gx, WT, b_hh, h0, y, cache, h_n, lengths, reverse, reset_after):
    # Gx: (B, T, 3H) = x W_ih^T + b_ih   WT: (H, 3H) = W_hh^T   b_hh: (3H,)   h0, h_n: (B, H)
    # y: (B, T, H) zero-initialised   cache: (6, B, T, H)   lengths: (B,)   launch: ONE block
    # thread i of the block handles items i, i + blockDim, ... of the flattened (B, H)
    hs = cuda.shared.array(PERSIST_X2, dtype=Gx.dtype)          # h_{t-1} / h_t, double buffer
    rhs = cuda.shared.array(PERSIST_MAX, dtype=Gx.dtype)        # r * h_{t-1} (reset_after=False)
    B = h0.shape[0]
    H = h0.shape[1]
    T = Gx.shape[1]
    BH = B * H
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    zero = Gx.dtype.type(0)
    one = Gx.dtype.type(1)
    for i in range(tid, BH, nt):
        b = i // H
        hs[i] = h0[b, i - b * H]
    cuda.syncthreads()
    src = 0
    for s in range(T):
        dst = PERSIST_MAX - src
        for i in range(tid, BH, nt):
            b = i // H
            j = i - b * H
            L = lengths[b]
            hp = hs[src + i]
            if s >= L:
                hs[dst + i] = hp                 # inactive row: the state passes through
                continue
            t = time_index(s, L, reverse)
            row = src + b * H
            acc_r = zero
            acc_z = zero
            acc_n = zero
            for k in range(H):
                hk = hs[row + k]
                acc_r += hk * WT[k, j]
                acc_z += hk * WT[k, H + j]
                if reset_after:
                    acc_n += hk * WT[k, 2 * H + j]
            r = sigmoid(Gx[b, t, j] + acc_r + b_hh[j], one)
            z = sigmoid(Gx[b, t, H + j] + acc_z + b_hh[H + j], one)
            cache[R_, b, t, j] = r
            cache[Z_, b, t, j] = z
            cache[HP_, b, t, j] = hp
            if reset_after:
                hn = acc_n + b_hh[2 * H + j]
                n = math.tanh(Gx[b, t, 2 * H + j] + r * hn)
                h = (one - z) * n + z * hp
                cache[N_, b, t, j] = n
                cache[HN_, b, t, j] = hn
                y[b, t, j] = h
                hs[dst + i] = h
            else:
                rhs[i] = r * hp
                cache[RH_, b, t, j] = r * hp
        cuda.syncthreads()
        if not reset_after:
            # n needs r * h_{t-1} of every unit of the row: a second phase after the barrier
            for i in range(tid, BH, nt):
                b = i // H
                j = i - b * H
                L = lengths[b]
                if s >= L:
                    continue
                t = time_index(s, L, reverse)
                acc = zero
                for k in range(H):
                    acc += rhs[b * H + k] * WT[k, 2 * H + j]
                hn = acc + b_hh[2 * H + j]
                n = math.tanh(Gx[b, t, 2 * H + j] + hn)
                z = cache[Z_, b, t, j]
                h = (one - z) * n + z * hs[src + i]
                cache[N_, b, t, j] = n
                cache[HN_, b, t, j] = hn
                y[b, t, j] = h
                hs[dst + i] = h
            cuda.syncthreads()
        src = dst
    for i in range(tid, BH, nt):
        b = i // H
        h_n[b, i - b * H] = hs[src + i]


@cuda.jit(cache=True)
def gru_backward_persistent_kernel(dy, dh_n, cache, lengths, reverse, reset_after, W_hh, dGx,
                                   dGh, dh0):
    # dy: (B, T, H)  dh_n, dh0: (B, H)  cache: (6, B, T, H)  lengths: (B,)  W_hh: (3H, H)
    # dGx, dGh: (B, T, 3H) zero-initialised   launch: ONE block
    # per step: phase 1 gate gradients of every (b, j) -> shared gsh (B, 3H) and dGx / dGh;
    # [Cho: phase 1b d(r*h) = da_n @ W_hn and the r gate]; phase 2 dh_{t-1} = ... @ W_hh
    dhs = cuda.shared.array(PERSIST_X2, dtype=dy.dtype)         # dL/dh_t, double buffer
    gsh = cuda.shared.array(PERSIST_X3, dtype=dy.dtype)         # this step's dG_h rows (B, 3H)
    drh = cuda.shared.array(PERSIST_MAX, dtype=dy.dtype)        # d(r*h_{t-1}) (Cho)
    B = dh_n.shape[0]
    H = dh_n.shape[1]
    T = dy.shape[1]
    BH = B * H
    G3 = 3 * H
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    for i in range(tid, BH, nt):
        b = i // H
        dhs[i] = dh_n[b, i - b * H]
    cuda.syncthreads()
    src = 0
    for s in range(T - 1, -1, -1):
        dst = PERSIST_MAX - src
        for i in range(tid, BH, nt):
            b = i // H
            j = i - b * H
            L = lengths[b]
            base = b * G3
            if s >= L:
                gsh[base + j] = zero
                gsh[base + H + j] = zero
                gsh[base + 2 * H + j] = zero
                continue
            t = time_index(s, L, reverse)
            r = cache[R_, b, t, j]
            z = cache[Z_, b, t, j]
            n = cache[N_, b, t, j]
            g = dhs[src + i] + dy[b, t, j]
            da_n = g * (one - z) * (one - n * n)
            da_z = g * (cache[HP_, b, t, j] - n) * z * (one - z)
            dGx[b, t, H + j] = da_z
            dGx[b, t, 2 * H + j] = da_n
            dGh[b, t, H + j] = da_z
            gsh[base + H + j] = da_z
            if reset_after:
                da_r = da_n * cache[HN_, b, t, j] * r * (one - r)
                dGx[b, t, j] = da_r
                dGh[b, t, j] = da_r
                dGh[b, t, 2 * H + j] = da_n * r
                gsh[base + j] = da_r
                gsh[base + 2 * H + j] = da_n * r
            else:
                dGh[b, t, 2 * H + j] = da_n
                gsh[base + 2 * H + j] = da_n
                gsh[base + j] = zero
        cuda.syncthreads()
        if not reset_after:
            # phase 1b reads the n slots of gsh and writes only its r slots and drh
            for i in range(tid, BH, nt):
                b = i // H
                k = i - b * H
                L = lengths[b]
                if s >= L:
                    drh[i] = zero
                    continue
                t = time_index(s, L, reverse)
                base = b * G3 + 2 * H
                acc = zero
                for j in range(H):
                    acc += gsh[base + j] * W_hh[2 * H + j, k]
                r = cache[R_, b, t, k]
                da_r = acc * cache[HP_, b, t, k] * r * (one - r)
                dGx[b, t, k] = da_r
                dGh[b, t, k] = da_r
                gsh[b * G3 + k] = da_r
                drh[i] = acc * r
            cuda.syncthreads()
        rows = 3 * H if reset_after else 2 * H
        for i in range(tid, BH, nt):
            b = i // H
            k = i - b * H
            L = lengths[b]
            if s >= L:
                dhs[dst + i] = dhs[src + i]
                continue
            t = time_index(s, L, reverse)
            base = b * G3
            acc = zero
            for g in range(rows):
                acc += gsh[base + g] * W_hh[g, k]
            out = (dhs[src + i] + dy[b, t, k]) * cache[Z_, b, t, k] + acc
            if not reset_after:
                out += drh[i]
            dhs[dst + i] = out
        cuda.syncthreads()
        src = dst
    for i in range(tid, BH, nt):
        b = i // H
        dh0[b, i - b * H] = dhs[src + i]
