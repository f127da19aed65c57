"""GRU forward and backward (one layer, one direction) on CUDA: host launchers.

Same names, argument order and results as ``gruengine.reference.gru``. NumPy inputs give
NumPy outputs; device-array inputs (x decides) give device-array outputs. The cache is a
dict of device arrays private to this backend.
"""
from numba import cuda

from . import blas, launch
from .gru_kernels import (CACHE_SLOTS, HP_, MODE_FULL, MODE_N, MODE_RZ, N_, R_, RH_, TB, TJ,
                          Z_, gru_step_backward_fused_kernel, gru_step_backward_kernel,
                          gru_step_forward_kernel)
from .gru_persistent import (PERSIST_MAX, gru_backward_persistent_kernel,
                             gru_forward_persistent_kernel)

__all__ = ["gru_forward", "gru_backward", "gru_gates"]


def _persistent(B, H):
    # the one-block path: no per-step launches, for layers small enough for one SM
    if not B * H <= min(int(launch.PERSISTENT_MAX_BH), PERSIST_MAX):
        return False
    if not 1 <= int(launch.PERSISTENT_THREADS) <= 1024:
        raise ValueError(f"PERSISTENT_THREADS: expected an integer in [1, 1024], "
                         f"got {launch.PERSISTENT_THREADS}")
    return True


def gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reset_after=True, reverse=False):
    """GRU over a batch of sequences on the GPU.

    Parameters
    ----------
    x : (B, T, I) float32 or float64 ; h0 : (B, H) ; W_ih : (3H, I) ; W_hh : (3H, H)
    b_ih, b_hh : (3H,) ; lengths : (B,) int64 in [1, T] (None: all T)
    reset_after : bool, the cuDNN/PyTorch form (True) or Cho et al. 2014 (False)
    reverse : bool, run each row from its last valid step back to t = 0

    Returns
    -------
    y : (B, T, H), zero at padding ; h_n : (B, H) ; cache : dict for ``gru_backward``
    """
    on_device = launch.is_device_array(x)
    dt, B, T, I, H, lengths_d = launch.check_cell_inputs("gru", x, (h0,), (W_ih, W_hh, b_ih, b_hh),
                                                         lengths)
    x_d, h0_d, W_ih_d, W_hh_d, b_ih_d, b_hh_d = (launch.as_device(a) for a in
                                                  (x, h0, W_ih, W_hh, b_ih, b_hh))
    # all input projections at once: Gx (B*T, 3H) = X W_ih^T + b_ih
    Gx = cuda.device_array((B, T, 3 * H), dtype=dt)
    blas.gemm(x_d.reshape(B * T, I), W_ih_d, Gx.reshape(B * T, 3 * H), bias=b_ih_d,
              trans_b=True)
    WT = blas.transpose(W_hh_d)                      # (H, 3H): coalesced reads per gate row
    y = blas.zeros((B, T, H), dt)
    store = blas.zeros((CACHE_SLOTS, B, T, H), dt)   # zero at padding: backward reads it
    cache = {"store": store, "y": y, "reset_after": bool(reset_after), "reverse": bool(reverse),
             "shape": (B, T, I, H), "on_device": on_device}
    if _persistent(B, H):
        h_n = cuda.device_array((B, H), dtype=dt)
        gru_forward_persistent_kernel[1, int(launch.PERSISTENT_THREADS)](
            Gx, WT, b_hh_d, h0_d, y, store, h_n, lengths_d, bool(reverse), bool(reset_after))
        return launch.to_output(y, on_device), launch.to_output(h_n, on_device), cache
    h_a = cuda.device_array((B, H), dtype=dt)
    h_a.copy_to_device(h0_d)
    h_b = cuda.device_array((B, H), dtype=dt)
    rh = cuda.device_array((B, H), dtype=dt)
    # configured once: the loop below is launch-bound at small sizes
    step = gru_step_forward_kernel[((H + TJ - 1) // TJ, (B + TB - 1) // TB), (TJ, TB)]
    rev = bool(reverse)
    for s in range(T):
        if reset_after:
            step(Gx, WT, b_hh_d, h_a, h_a, h_b, rh, y, store, lengths_d, s, rev, MODE_FULL)
        else:
            step(Gx, WT, b_hh_d, h_a, h_a, h_b, rh, y, store, lengths_d, s, rev, MODE_RZ)
            step(Gx, WT, b_hh_d, rh, h_a, h_b, rh, y, store, lengths_d, s, rev, MODE_N)
        h_a, h_b = h_b, h_a
    return launch.to_output(y, on_device), launch.to_output(h_a, on_device), cache


def gru_backward(dy, dh_n, x, h0, W_ih, W_hh, b_ih, b_hh, lengths, cache,
                 reset_after=True, reverse=False):
    """Backward through ``gru_forward`` (BPTT) on the GPU.

    Parameters
    ----------
    dy : (B, T, H) ; dh_n : (B, H) ; the forward's arguments ; cache : from ``gru_forward``

    Returns
    -------
    dx (B, T, I), dh0 (B, H), dW_ih (3H, I), dW_hh (3H, H), db_ih (3H,), db_hh (3H,)
    """
    on_device = launch.is_device_array(x)
    dt, B, T, I, H, lengths_d = launch.check_cell_inputs("gru", x, (h0,), (W_ih, W_hh, b_ih, b_hh),
                                                         lengths)
    launch.check_cell_gradients("gru", dy, (dh_n,), (B, T, I, H), dt)
    if not isinstance(cache, dict) or "store" not in cache or cache.get("shape") != (B, T, I, H):
        raise ValueError("cache: expected the cache gru_forward (cuda) returned for these shapes, "
                         f"got {type(cache).__name__}")
    if cache["reset_after"] != bool(reset_after) or cache["reverse"] != bool(reverse):
        raise ValueError(f"cache: built with reset_after={cache['reset_after']}, "
                         f"reverse={cache['reverse']}, got reset_after={bool(reset_after)}, "
                         f"reverse={bool(reverse)}")
    store = cache["store"]
    dy_d, dh_d, x_d, W_ih_d, W_hh_d = (launch.as_device(a) for a in (dy, dh_n, x, W_ih, W_hh))
    G3 = 3 * H
    dGx = blas.zeros((B, T, G3), dt)
    dGh = blas.zeros((B, T, G3), dt)
    if _persistent(B, H):
        dh0 = cuda.device_array((B, H), dtype=dt)
        gru_backward_persistent_kernel[1, int(launch.PERSISTENT_THREADS)](
            dy_d, dh_d, store, lengths_d, bool(reverse), bool(reset_after), W_hh_d, dGx, dGh, dh0)
        return _weight_gradients(dGx, dGh, dh0, store, x_d, W_ih_d, reset_after, on_device)
    dG_step = cuda.device_array((B, G3), dtype=dt)
    d_rh = cuda.device_array((B, H), dtype=dt)
    dh_a = cuda.device_array((B, H), dtype=dt)
    dh_a.copy_to_device(dh_d)
    dh_b = cuda.device_array((B, H), dtype=dt)
    # configured once: the loop below is launch-bound at small sizes
    fused = gru_step_backward_fused_kernel[((H + TJ - 1) // TJ, (B + TB - 1) // TB), (TJ, TB)]
    gates = gru_step_backward_kernel[launch.grid_1d(B * H)]
    dG_n, W_n = dG_step[:, 2 * H:], W_hh_d[2 * H:]
    dG_rz, W_rz = dG_step[:, :2 * H], W_hh_d[:2 * H]
    rev = bool(reverse)
    for s in range(T - 1, -1, -1):
        if reset_after:
            # one launch: gate backward + the dh_{t-1} product
            fused(dy_d, dh_a, store, lengths_d, s, rev, W_hh_d, dGx, dGh, dh_b)
        else:
            gates(dy_d, dh_a, store, lengths_d, s, rev, dGx, dGh, dG_step, dh_b, d_rh, MODE_RZ)
            blas.gemm(dG_n, W_n, d_rh)
            gates(dy_d, dh_a, store, lengths_d, s, rev, dGx, dGh, dG_step, dh_b, d_rh, MODE_N)
            blas.gemm(dG_rz, W_rz, dh_b, accumulate=True)
        dh_a, dh_b = dh_b, dh_a
    return _weight_gradients(dGx, dGh, dh_a, store, x_d, W_ih_d, reset_after, on_device)


def _weight_gradients(dGx, dGh, dh0, store, x_d, W_ih_d, reset_after, on_device):
    # dx and the weight gradients: one GEMM each over all B*T rows (zero rows at padding)
    B, T, G3 = dGx.shape
    H = G3 // 3
    I = x_d.shape[2]
    dt = dGx.dtype
    dGx2 = dGx.reshape(B * T, G3)
    dGh2 = dGh.reshape(B * T, G3)
    Hp2 = store[HP_].reshape(B * T, H)
    dx = cuda.device_array((B, T, I), dtype=dt)
    blas.gemm(dGx2, W_ih_d, dx.reshape(B * T, I))
    dW_ih = cuda.device_array((G3, I), dtype=dt)
    blas.gemm(dGx2, x_d.reshape(B * T, I), dW_ih, trans_a=True)
    dW_hh = cuda.device_array((G3, H), dtype=dt)
    if reset_after:
        blas.gemm(dGh2, Hp2, dW_hh, trans_a=True)
    else:
        blas.gemm(dGh2[:, :2 * H], Hp2, dW_hh[:2 * H], trans_a=True)
        blas.gemm(dGh2[:, 2 * H:], store[RH_].reshape(B * T, H), dW_hh[2 * H:], trans_a=True)
    db_ih = cuda.device_array((G3,), dtype=dt)
    blas.colsum(dGx2, db_ih)
    db_hh = cuda.device_array((G3,), dtype=dt)
    blas.colsum(dGh2, db_hh)
    return tuple(launch.to_output(a, on_device) for a in (dx, dh0, dW_ih, dW_hh, db_ih, db_hh))


def gru_gates(cache):
    """Per-time values kept by ``gru_forward``: dict of "r", "z", "n" (the gates) and "h"
    (the hidden state), each (B, T, H), zero past each row's length. NumPy arrays, or device
    arrays when the forward ran on device arrays."""
    if not isinstance(cache, dict) or "store" not in cache or "y" not in cache:
        raise ValueError(f"cache: expected the cache gru_forward (cuda) returned, "
                         f"got {type(cache).__name__}")
    store, on_device = cache["store"], cache["on_device"]
    gates = {k: launch.gate_output(store[slot], on_device)
             for k, slot in (("r", R_), ("z", Z_), ("n", N_))}
    gates["h"] = launch.gate_output(cache["y"], on_device)
    return gates
