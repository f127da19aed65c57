"""LSTM forward and backward (one layer, one direction) on CUDA: kernels and host launchers.

Same names, argument order and results as ``gruengine.reference.lstm`` (gate order i, f, g, o).
NumPy inputs give NumPy outputs; device-array inputs (x decides) give device-array outputs.

The shape is the GRU's (``gru_kernels``): the input projections of all steps are one GEMM
(``Gx = X W_ihᵀ + b_ih``), then one fused launch per step. A block of (TJ, TB) threads owns
TB batch rows x TJ hidden units; it streams chunks of h_{t-1} and W_hhᵀ through shared memory,
accumulates the four gate products in registers, applies the gate math and writes c_t, h_t and
what backward needs into one (7, B, T, H) store (slots below, zero at padding).

Backward per step is one fused launch too: each block recomputes the gate gradients of its
rows chunk by chunk into shared memory and multiplies them by W_hh for dh_{t-1}; the blocks of
grid column 0 alone store them to dG, so every element has one writer. dc_{t-1} = dc_t ⊙ f is
elementwise. dG is the gradient of the pre-activations, the same for both biases, so
``dx = dG W_ih``, ``dW_ih = dGᵀ X``, ``dW_hh = dGᵀ H_prev`` and the bias gradients (column
sums) run once after the loop over all B*T rows.
"""
import math

from numba import cuda

from . import blas, launch
from .gru_kernels import TB, TJ, TK, sigmoid, time_index

__all__ = ["lstm_forward", "lstm_backward", "lstm_gates"]

# slots of the store (7, B, T, H), indexed [slot, row, time, unit]
I_, F_, G_, O_, C_, CP_, HP_ = 0, 1, 2, 3, 4, 5, 6
STORE_SLOTS = 7


@cuda.jit(cache=True)
def lstm_step_forward_kernel(Gx, WT, b_hh, h_prev, c_prev, h_next, c_next, y, store, lengths,
                             s, reverse):
    # Gx: (B, T, 4H) = x W_ih^T + b_ih   WT: (H, 4H) = W_hh^T   b_hh: (4H,)
    # h_prev, c_prev, h_next, c_next: (B, H)   y: (B, T, H)   store: (7, B, T, H)   lengths: (B,)
    # thread (tx, ty) of block (bx, by) owns unit j = bx*TJ + tx of row b = by*TB + ty
    hs = cuda.shared.array((TB, TK), dtype=Gx.dtype)
    ws = cuda.shared.array((4, TK, TJ), dtype=Gx.dtype)
    B = h_prev.shape[0]
    H = h_prev.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    j = cuda.blockIdx.x * TJ + tx
    b = cuda.blockIdx.y * TB + ty
    zero = Gx.dtype.type(0)
    one = Gx.dtype.type(1)
    acc_i = zero
    acc_f = zero
    acc_g = zero
    acc_o = zero
    for k0 in range(0, H, TK):
        # every thread of the block takes part in the loads and barriers
        for kk in range(tx, TK, TJ):
            k = k0 + kk
            hs[ty, kk] = h_prev[b, k] if (b < B and k < H) else zero
        for g4 in range(4):
            for kk in range(ty, TK, TB):
                k = k0 + kk
                ws[g4, kk, tx] = WT[k, g4 * H + j] if (k < H and j < H) else zero
        cuda.syncthreads()
        for kk in range(TK):
            hv = hs[ty, kk]
            acc_i += hv * ws[0, kk, tx]
            acc_f += hv * ws[1, kk, tx]
            acc_g += hv * ws[2, kk, tx]
            acc_o += hv * ws[3, kk, tx]
        cuda.syncthreads()
    if b >= B or j >= H:
        return
    L = lengths[b]
    hp = h_prev[b, j]
    cp = c_prev[b, j]
    if s >= L:
        # inactive row: the state passes through unchanged
        h_next[b, j] = hp
        c_next[b, j] = cp
        return
    t = time_index(s, L, reverse)
    i = sigmoid(Gx[b, t, j] + acc_i + b_hh[j], one)
    f = sigmoid(Gx[b, t, H + j] + acc_f + b_hh[H + j], one)
    g = math.tanh(Gx[b, t, 2 * H + j] + acc_g + b_hh[2 * H + j])
    o = sigmoid(Gx[b, t, 3 * H + j] + acc_o + b_hh[3 * H + j], one)
    c = f * cp + i * g
    h = o * math.tanh(c)
    store[I_, b, t, j] = i
    store[F_, b, t, j] = f
    store[G_, b, t, j] = g
    store[O_, b, t, j] = o
    store[C_, b, t, j] = c
    store[CP_, b, t, j] = cp
    store[HP_, b, t, j] = hp
    y[b, t, j] = h
    h_next[b, j] = h
    c_next[b, j] = c


@cuda.jit(device=True)
def lstm_gate_grads(dh, dc, dy, store, b, t, j, one):
    # pre-activation gradients of unit j of row b at time t, and dL/dc_t (all paths)
    i = store[I_, b, t, j]
    f = store[F_, b, t, j]
    g = store[G_, b, t, j]
    o = store[O_, b, t, j]
    dh_t = dh[b, j] + dy[b, t, j]
    tc = math.tanh(store[C_, b, t, j])
    dc_t = dc[b, j] + dh_t * o * (one - tc * tc)
    da_i = dc_t * g * i * (one - i)
    da_f = dc_t * store[CP_, b, t, j] * f * (one - f)
    da_g = dc_t * i * (one - g * g)
    da_o = dh_t * tc * o * (one - o)
    return da_i, da_f, da_g, da_o, dc_t


@cuda.jit(cache=True)
def lstm_step_backward_kernel(dy, dh, dc, store, lengths, s, reverse, W_hh, dG, dh_next,
                              dc_next):
    # dy: (B, T, H)   dh, dc: (B, H) dL/dh, dL/dc after step s   store: (7, B, T, H)
    # lengths: (B,)   W_hh: (4H, H)   dG: (B, T, 4H) pre-activation gradients (zero at padding)
    # dh_next, dc_next: (B, H) dL/dh, dL/dc before step s
    # block (TJ, TB) owns dh_next[b, k] for TB rows b and TJ units k:
    # dh_{t-1}[b, k] = sum over gates q and units j of dG[b, q*H + j] W_hh[q*H + j, k]
    gs = cuda.shared.array((4, TB, TK), dtype=dy.dtype)
    ws = cuda.shared.array((4, TK, TJ), dtype=dy.dtype)
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
    store_dG = cuda.blockIdx.x == 0
    acc = zero
    for j0 in range(0, H, TK):
        for kk in range(tx, TK, TJ):
            j = j0 + kk
            if active and j < H:
                da_i, da_f, da_g, da_o, _ = lstm_gate_grads(dh, dc, dy, store, b, t, j, one)
                gs[0, ty, kk] = da_i
                gs[1, ty, kk] = da_f
                gs[2, ty, kk] = da_g
                gs[3, ty, kk] = da_o
                if store_dG:
                    dG[b, t, j] = da_i
                    dG[b, t, H + j] = da_f
                    dG[b, t, 2 * H + j] = da_g
                    dG[b, t, 3 * H + j] = da_o
            else:
                gs[0, ty, kk] = zero
                gs[1, ty, kk] = zero
                gs[2, ty, kk] = zero
                gs[3, ty, kk] = zero
        for q in range(4):
            for kk in range(ty, TK, TB):
                j = j0 + kk
                ws[q, kk, tx] = W_hh[q * H + j, k] if (j < H and k < H) else zero
        cuda.syncthreads()
        for kk in range(TK):
            acc += (gs[0, ty, kk] * ws[0, kk, tx] + gs[1, ty, kk] * ws[1, kk, tx]
                    + gs[2, ty, kk] * ws[2, kk, tx] + gs[3, ty, kk] * ws[3, kk, tx])
        cuda.syncthreads()
    if b >= B or k >= H:
        return
    if active:
        _, _, _, _, dc_t = lstm_gate_grads(dh, dc, dy, store, b, t, k, one)
        dh_next[b, k] = acc
        dc_next[b, k] = dc_t * store[F_, b, t, k]
    else:
        dh_next[b, k] = dh[b, k]
        dc_next[b, k] = dc[b, k]


def ptx_signatures(f):
    """name -> argument types of this module's kernels for float type ``f`` (tests/test_ptx.py)."""
    from numba import boolean, int64
    m, t3, t4 = f[:, ::1], f[:, :, ::1], f[:, :, :, ::1]
    return {
        "lstm_step_forward_kernel": (t3, m, f[::1], m, m, m, m, t3, t4, int64[::1], int64,
                                     boolean),
        "lstm_step_backward_kernel": (t3, m, m, t4, int64[::1], int64, boolean, m, t3, m, m),
    }


# ----------------------------------------------------------------------------- host launchers

def _copy(a_d):
    out = cuda.device_array(a_d.shape, dtype=a_d.dtype)
    out.copy_to_device(a_d)
    return out


def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, reverse=False):
    """LSTM over a batch of sequences on the GPU.

    Parameters
    ----------
    x : (B, T, I) float32 or float64 ; h0, c0 : (B, H) ; W_ih : (4H, I) ; W_hh : (4H, H)
    b_ih, b_hh : (4H,) ; lengths : (B,) int64 in [1, T] (None: all T)
    reverse : bool, run each row from its last valid step back to t = 0

    Returns
    -------
    y : (B, T, H), zero at padding ; h_n, c_n : (B, H) ; cache : dict for ``lstm_backward``
    """
    on_device = launch.is_device_array(x)
    dt, B, T, I, H, lengths_d = launch.check_cell_inputs("lstm", x, (h0, c0),
                                                         (W_ih, W_hh, b_ih, b_hh), lengths)
    x_d, h0_d, c0_d, W_ih_d, W_hh_d, b_ih_d, b_hh_d = (launch.as_device(a) for a in
                                                        (x, h0, c0, W_ih, W_hh, b_ih, b_hh))
    # all input projections at once: Gx (B*T, 4H) = X W_ih^T + b_ih
    Gx = cuda.device_array((B, T, 4 * H), dtype=dt)
    blas.gemm(x_d.reshape(B * T, I), W_ih_d, Gx.reshape(B * T, 4 * H), bias=b_ih_d,
              trans_b=True)
    WT = blas.transpose(W_hh_d)                      # (H, 4H): coalesced reads per gate row
    y = blas.zeros((B, T, H), dt)
    store = blas.zeros((STORE_SLOTS, B, T, H), dt)   # zero at padding: backward reads it
    h_a, c_a = _copy(h0_d), _copy(c0_d)
    h_b = cuda.device_array((B, H), dtype=dt)
    c_b = cuda.device_array((B, H), dtype=dt)
    grid = ((H + TJ - 1) // TJ, (B + TB - 1) // TB)
    rev = bool(reverse)
    for s in range(T):
        lstm_step_forward_kernel[grid, (TJ, TB)](Gx, WT, b_hh_d, h_a, c_a, h_b, c_b, y, store,
                                                 lengths_d, s, rev)
        h_a, h_b = h_b, h_a
        c_a, c_b = c_b, c_a
    cache = {"store": store, "y": y, "reverse": rev, "shape": (B, T, I, H),
             "on_device": on_device}
    return (launch.to_output(y, on_device), launch.to_output(h_a, on_device),
            launch.to_output(c_a, on_device), cache)


def _check_cache(cache, shape, reverse):
    if not isinstance(cache, dict) or "store" not in cache or cache.get("shape") != shape:
        raise ValueError("cache: expected the cache lstm_forward (cuda) returned for these "
                         f"shapes, got {type(cache).__name__}")
    if cache["reverse"] != bool(reverse):
        raise ValueError(f"cache: built with reverse={cache['reverse']}, "
                         f"got reverse={bool(reverse)}")


def lstm_backward(dy, dh_n, dc_n, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, cache,
                  reverse=False):
    """Backward through ``lstm_forward`` (BPTT) on the GPU.

    Parameters
    ----------
    dy : (B, T, H) ; dh_n, dc_n : (B, H) ; the forward's arguments ; cache : from ``lstm_forward``

    Returns
    -------
    dx (B, T, I), dh0 (B, H), dc0 (B, H), dW_ih (4H, I), dW_hh (4H, H), db_ih (4H,), db_hh (4H,)
    (db_ih and db_hh are equal: both biases add to the same pre-activation)
    """
    on_device = launch.is_device_array(x)
    dt, B, T, I, H, lengths_d = launch.check_cell_inputs("lstm", x, (h0, c0),
                                                         (W_ih, W_hh, b_ih, b_hh), lengths)
    launch.check_cell_gradients("lstm", dy, (dh_n, dc_n), (B, T, I, H), dt)
    _check_cache(cache, (B, T, I, H), reverse)
    store = cache["store"]
    dy_d, dh_d, dc_d, x_d, W_ih_d, W_hh_d = (launch.as_device(a) for a in
                                             (dy, dh_n, dc_n, x, W_ih, W_hh))
    G4 = 4 * H
    dG = blas.zeros((B, T, G4), dt)
    dh_a, dc_a = _copy(dh_d), _copy(dc_d)
    dh_b = cuda.device_array((B, H), dtype=dt)
    dc_b = cuda.device_array((B, H), dtype=dt)
    grid = ((H + TJ - 1) // TJ, (B + TB - 1) // TB)
    rev = bool(reverse)
    for s in range(T - 1, -1, -1):
        lstm_step_backward_kernel[grid, (TJ, TB)](dy_d, dh_a, dc_a, store, lengths_d, s, rev,
                                                  W_hh_d, dG, dh_b, dc_b)
        dh_a, dh_b = dh_b, dh_a
        dc_a, dc_b = dc_b, dc_a
    # dx and the weight gradients: one GEMM each over all B*T rows (zero rows at padding)
    dG2 = dG.reshape(B * T, G4)
    dx = cuda.device_array((B, T, I), dtype=dt)
    blas.gemm(dG2, W_ih_d, dx.reshape(B * T, I))
    dW_ih = cuda.device_array((G4, I), dtype=dt)
    blas.gemm(dG2, x_d.reshape(B * T, I), dW_ih, trans_a=True)
    dW_hh = cuda.device_array((G4, H), dtype=dt)
    blas.gemm(dG2, store[HP_].reshape(B * T, H), dW_hh, trans_a=True)
    db_ih = cuda.device_array((G4,), dtype=dt)
    blas.colsum(dG2, db_ih)
    db_hh = _copy(db_ih)
    return tuple(launch.to_output(a, on_device)
                 for a in (dx, dh_a, dc_a, dW_ih, dW_hh, db_ih, db_hh))


def lstm_gates(cache):
    """Per-time activations kept by ``lstm_forward``: dict of "i", "f", "g", "o", "c", "h",
    each (B, T, H), zero past each row's length. NumPy arrays, or device arrays when the
    forward ran on device arrays."""
    if not isinstance(cache, dict) or "store" not in cache:
        raise ValueError(f"cache: expected the cache lstm_forward (cuda) returned, "
                         f"got {type(cache).__name__}")
    store, on_device = cache["store"], cache["on_device"]
    gates = {k: launch.gate_output(store[slot], on_device)
             for k, slot in (("i", I_), ("f", F_), ("g", G_), ("o", O_), ("c", C_))}
    gates["h"] = launch.gate_output(cache["y"], on_device)
    return gates
