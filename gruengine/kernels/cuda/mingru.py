"""minGRU (one layer, one direction) on CUDA: kernels and host launchers.

Same names, argument order and results as ``gruengine.reference.mingru`` and
``gruengine.kernels.cpu.mingru``. NumPy inputs give NumPy outputs; device-array inputs (x
decides) give device-array outputs.

The gates read only x_t, so both pre-activations of all steps are GEMMs before the scan:
``Gz = X W_zᵀ + b_z`` and ``Gh = X W_hᵀ + b_h`` (the tiled ``blas.gemm``; two products
instead of one stacked one, so device weights need no concatenation). What is left is a
recurrence without matrix products, independent per (row, unit): one thread per (b, j)
walks the time axis (grid-stride over B*H; j fastest, so every step's loads and stores are
coalesced along the hidden axis):

    forward    h_t = h_{t-1} + z_t (h̃_t - h_{t-1})       (a convex combination: stable)
    backward   d = dh_t + dy_t ;  dGz_t = d (h̃_t - h_{t-1}) z_t (1 - z_t) ;
               dGh_t = d z_t g'(k_t) ;  dh_{t-1} = d (1 - z_t)

The scan runs in the storage dtype (the CPU kernel scans in float64; on GPUs float64 is
slow, and the linear form needs no log-space range). ``dx = dGz W_z + dGh W_h``, ``dW_z =
dGzᵀ X``, ``dW_h = dGhᵀ X`` and the bias gradients (column sums) follow over all B*T rows.
"""
from numba import cuda

from . import blas, launch
from .gru_kernels import sigmoid, time_index

__all__ = ["mingru_forward", "mingru_backward", "mingru_gates"]


@cuda.jit(device=True)
def candidate(k, one, half):
    # h̃ = g(k) = k + 1/2 for k >= 0, σ(k) below; and g'(k). one, half: the dtype's 1 and 1/2
    if k >= 0:
        return k + half, one
    s = sigmoid(k, one)
    return s, s * (one - s)


@cuda.jit(cache=True)
def mingru_scan_forward_kernel(Gz, Gh, h0, lengths, reverse, y, h_n):
    # Gz, Gh: (B, T, H) pre-activations of z and h̃, time order   h0, h_n: (B, H)
    # lengths: (B,)   y: (B, T, H), written at t < lengths[b] only (zero-filled by the caller)
    B = h0.shape[0]
    H = h0.shape[1]
    one = Gz.dtype.type(1)
    half = Gz.dtype.type(0.5)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, B * H, stride):
        b = e // H
        j = e - b * H
        L = lengths[b]
        h = h0[b, j]
        for s in range(L):
            t = time_index(s, L, reverse)
            z = sigmoid(Gz[b, t, j], one)
            ht, _ = candidate(Gh[b, t, j], one, half)
            h = h + z * (ht - h)
            y[b, t, j] = h
        h_n[b, j] = h


@cuda.jit(cache=True)
def mingru_scan_backward_kernel(Gz, Gh, h0, y, dy, dh_n, lengths, reverse, dGz, dGh, dh0):
    # Gz, Gh, y, dy: (B, T, H) time order   h0, dh_n, dh0: (B, H)   lengths: (B,)
    # dGz, dGh: (B, T, H) pre-activation gradients, written at t < lengths[b] only
    B = h0.shape[0]
    H = h0.shape[1]
    one = Gz.dtype.type(1)
    half = Gz.dtype.type(0.5)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, B * H, stride):
        b = e // H
        j = e - b * H
        L = lengths[b]
        dh = dh_n[b, j]
        for s in range(L - 1, -1, -1):
            t = time_index(s, L, reverse)
            h_prev = h0[b, j] if s == 0 else y[b, time_index(s - 1, L, reverse), j]
            z = sigmoid(Gz[b, t, j], one)
            ht, dg = candidate(Gh[b, t, j], one, half)
            d = dh + dy[b, t, j]
            dGz[b, t, j] = d * (ht - h_prev) * z * (one - z)
            dGh[b, t, j] = d * z * dg
            dh = d * (one - z)
        dh0[b, j] = dh


@cuda.jit(cache=True)
def mingru_gates_kernel(Gz, Gh, lengths, z, h_tilde):
    # Gz, Gh, z, h_tilde: (B, T, H)   lengths: (B,) ; z, h_tilde zero at t >= lengths[b]
    B = Gz.shape[0]
    T = Gz.shape[1]
    H = Gz.shape[2]
    zero = Gz.dtype.type(0)
    one = Gz.dtype.type(1)
    half = Gz.dtype.type(0.5)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, B * T * H, stride):
        b = e // (T * H)
        r = e - b * T * H
        t = r // H
        j = r - t * H
        if t < lengths[b]:
            z[b, t, j] = sigmoid(Gz[b, t, j], one)
            ht, _ = candidate(Gh[b, t, j], one, half)
            h_tilde[b, t, j] = ht
        else:
            z[b, t, j] = zero
            h_tilde[b, t, j] = zero


def ptx_signatures(f):
    """name -> argument types of this module's kernels for float type ``f`` (tests/test_ptx.py)."""
    from numba import boolean, int64
    m, t3, i1 = f[:, ::1], f[:, :, ::1], int64[::1]
    return {
        "mingru_scan_forward_kernel": (t3, t3, m, i1, boolean, t3, m),
        "mingru_scan_backward_kernel": (t3, t3, m, t3, t3, m, i1, boolean, t3, t3, m),
        "mingru_gates_kernel": (t3, t3, i1, t3, t3),
    }


# ----------------------------------------------------------------------------- host launchers

def mingru_forward(x, h0, W_z, W_h, b_z, b_h, lengths, reverse=False):
    """minGRU over a batch of sequences on the GPU.

    Parameters
    ----------
    x : (B, T, I) float32 or float64 ; h0 : (B, H) ; W_z, W_h : (H, I) ; b_z, b_h : (H,)
    lengths : (B,) int64 in [1, T] (None: all T)
    reverse : bool, run each row from its last valid step back to t = 0

    Returns
    -------
    y : (B, T, H), zero at padding ; h_n : (B, H) ; cache : dict for ``mingru_backward``
    """
    on_device = launch.is_device_array(x)
    dt, B, T, I, H, lengths_d = launch.check_cell_inputs("mingru", x, (h0,), (W_z, W_h, b_z, b_h),
                                                         lengths)
    x_d, h0_d, W_z_d, W_h_d, b_z_d, b_h_d = (launch.as_device(a) for a in
                                              (x, h0, W_z, W_h, b_z, b_h))
    x2 = x_d.reshape(B * T, I)
    Gz = cuda.device_array((B, T, H), dtype=dt)
    Gh = cuda.device_array((B, T, H), dtype=dt)
    blas.gemm(x2, W_z_d, Gz.reshape(B * T, H), bias=b_z_d, trans_b=True)
    blas.gemm(x2, W_h_d, Gh.reshape(B * T, H), bias=b_h_d, trans_b=True)
    y = blas.zeros((B, T, H), dt)
    h_n = cuda.device_array((B, H), dtype=dt)
    blocks, tpb = launch.grid_1d(B * H)
    mingru_scan_forward_kernel[blocks, tpb](Gz, Gh, h0_d, lengths_d, bool(reverse), y, h_n)
    cache = {"Gz": Gz, "Gh": Gh, "y": y, "lengths": lengths_d, "reverse": bool(reverse),
             "shape": (B, T, I, H), "on_device": on_device}
    return launch.to_output(y, on_device), launch.to_output(h_n, on_device), cache


def mingru_backward(dy, dh_n, x, h0, W_z, W_h, b_z, b_h, lengths, cache, reverse=False):
    """Backward through ``mingru_forward`` on the GPU.

    Parameters
    ----------
    dy : (B, T, H) ; dh_n : (B, H) ; the forward's arguments ; cache : from ``mingru_forward``

    Returns
    -------
    dx (B, T, I), dh0 (B, H), dW_z (H, I), dW_h (H, I), db_z (H,), db_h (H,)
    """
    on_device = launch.is_device_array(x)
    dt, B, T, I, H, lengths_d = launch.check_cell_inputs("mingru", x, (h0,), (W_z, W_h, b_z, b_h),
                                                         lengths)
    launch.check_cell_gradients("mingru", dy, (dh_n,), (B, T, I, H), dt)
    if not isinstance(cache, dict) or "Gz" not in cache or cache.get("shape") != (B, T, I, H):
        raise ValueError("cache: expected the cache mingru_forward (cuda) returned for these "
                         f"shapes, got {type(cache).__name__}")
    if cache["reverse"] != bool(reverse):
        raise ValueError(f"cache: built with reverse={cache['reverse']}, "
                         f"got reverse={bool(reverse)}")
    dy_d, dh_d, x_d, h0_d, W_z_d, W_h_d = (launch.as_device(a) for a in
                                           (dy, dh_n, x, h0, W_z, W_h))
    dGz = blas.zeros((B, T, H), dt)
    dGh = blas.zeros((B, T, H), dt)
    dh0 = cuda.device_array((B, H), dtype=dt)
    blocks, tpb = launch.grid_1d(B * H)
    mingru_scan_backward_kernel[blocks, tpb](cache["Gz"], cache["Gh"], h0_d, cache["y"], dy_d,
                                             dh_d, lengths_d, bool(reverse), dGz, dGh, dh0)
    # one GEMM each over all B*T rows (zero rows at padding)
    x2 = x_d.reshape(B * T, I)
    dGz2 = dGz.reshape(B * T, H)
    dGh2 = dGh.reshape(B * T, H)
    dx = cuda.device_array((B, T, I), dtype=dt)
    dx2 = dx.reshape(B * T, I)
    blas.gemm(dGz2, W_z_d, dx2)
    blas.gemm(dGh2, W_h_d, dx2, accumulate=True)
    dW_z = cuda.device_array((H, I), dtype=dt)
    blas.gemm(dGz2, x2, dW_z, trans_a=True)
    dW_h = cuda.device_array((H, I), dtype=dt)
    blas.gemm(dGh2, x2, dW_h, trans_a=True)
    db_z = cuda.device_array((H,), dtype=dt)
    blas.colsum(dGz2, db_z)
    db_h = cuda.device_array((H,), dtype=dt)
    blas.colsum(dGh2, db_h)
    return tuple(launch.to_output(a, on_device) for a in (dx, dh0, dW_z, dW_h, db_z, db_h))


def mingru_gates(cache):
    """dict of "z" (update gate), "h" (hidden state), "h_tilde" (candidate g(W_h x + b_h)),
    each (B, T, H), zero past each row's length. NumPy arrays, or device arrays when the
    forward ran on device arrays."""
    if not isinstance(cache, dict) or "Gz" not in cache:
        raise ValueError(f"cache: expected the cache mingru_forward (cuda) returned, "
                         f"got {type(cache).__name__}")
    Gz, y = cache["Gz"], cache["y"]
    B, T, H = Gz.shape
    z = cuda.device_array((B, T, H), dtype=Gz.dtype)
    h_tilde = cuda.device_array((B, T, H), dtype=Gz.dtype)
    blocks, tpb = launch.grid_1d(B * T * H)
    mingru_gates_kernel[blocks, tpb](Gz, cache["Gh"], cache["lengths"], z, h_tilde)
    on_device = cache["on_device"]
    return {"z": launch.to_output(z, on_device), "h": launch.gate_output(y, on_device),
            "h_tilde": launch.to_output(h_tilde, on_device)}
