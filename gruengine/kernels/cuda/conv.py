"""The convolutional front end's ops on CUDA: conv1d over time and ReLU (the norms are in
``norm.py``).

Same names, argument order and results as ``gruengine.reference.conv``. The convolution is
im2col + the package's tiled GEMM (``blas.gemm``), like the CPU version: ``cols``
(B*T_out, Cin*K), column ``i*K + k``, so ``W`` (Cout, Cin, K) is read as (Cout, Cin*K).
Every kernel is a grid-stride loop in which each thread owns the outputs it writes (an
element of ``cols``, ``dx`` or the ReLU's output): no atomics, fixed summation orders. NumPy inputs give NumPy outputs,
device-array inputs device arrays (the first array argument decides).
"""
import numpy as np
from numba import cuda

from . import blas, launch

__all__ = [
    "conv1d_forward", "conv1d_backward",
    "relu_forward", "relu_backward",
]


# ----------------------------------------------------------------------------- kernels

@cuda.jit(cache=True)
def im2col_kernel(x, lengths, K, stride, cols):
    # x: (B, T, Cin)  lengths: (B,)  -> cols: (B*T_out, Cin*K), cols[b*T_out + t, i*K + k] =
    # x[b, t*stride + k - pad, i] when that step is in [0, L[b]) and t*stride < L[b], else 0
    B = x.shape[0]
    Cin = x.shape[2]
    T_out = cols.shape[0] // B
    CK = Cin * K
    pad = (K - 1) // 2
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for e in range(start, cols.shape[0] * CK, step):
        r = e // CK
        c = e - r * CK
        b = r // T_out
        t = r - b * T_out
        i = c // K
        k = c - i * K
        L = lengths[b]
        s = t * stride + k - pad
        v = x.dtype.type(0)
        if t * stride < L and s >= 0 and s < L:
            v = x[b, s, i]
        cols[r, c] = v


@cuda.jit(cache=True)
def mask_steps_kernel(src, lengths, stride, dst):
    # src, dst: (B, T, C)  -> dst = src at steps t with t*stride < L[b], else 0 (in place allowed)
    B = src.shape[0]
    T = src.shape[1]
    C = src.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for e in range(start, B * T * C, step):
        b = e // (T * C)
        rem = e - b * T * C
        t = rem // C
        c = rem - t * C
        dst[b, t, c] = src[b, t, c] if t * stride < lengths[b] else src.dtype.type(0)


@cuda.jit(cache=True)
def col2im_kernel(dcols, lengths, K, stride, dx):
    # dcols: (B*T_out, Cin*K) -> dx: (B, T, Cin); thread per dx element gathers every (t, k)
    # with t*stride + k - pad = s and t*stride < L[b]; zero at s >= L[b]
    B = dx.shape[0]
    T = dx.shape[1]
    Cin = dx.shape[2]
    T_out = dcols.shape[0] // B
    pad = (K - 1) // 2
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for e in range(start, B * T * Cin, step):
        b = e // (T * Cin)
        rem = e - b * T * Cin
        s = rem // Cin
        i = rem - s * Cin
        L = lengths[b]
        acc = dx.dtype.type(0)
        if s < L:
            for k in range(K):
                u = s + pad - k
                if u >= 0 and u % stride == 0 and u < L:
                    acc += dcols[b * T_out + u // stride, i * K + k]
        dx[b, s, i] = acc

@cuda.jit(cache=True)
def relu_kernel(x, out):
    # x, out: (n,) flat
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        out[i] = x[i] if x[i] > 0 else x.dtype.type(0)


@cuda.jit(cache=True)
def relu_grad_kernel(dy, y, out):
    # dy, y, out: (n,) flat -> dy where y > 0
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, dy.shape[0], step):
        out[i] = dy[i] if y[i] > 0 else dy.dtype.type(0)


def ptx_signatures(f):
    """name -> argument types of this module's kernels for float type ``f`` (tests/test_ptx.py)."""
    from numba import int64
    v, m, t3, i1, i = f[::1], f[:, ::1], f[:, :, ::1], int64[::1], int64
    return {
        "im2col_kernel": (t3, i1, i, i, m),
        "mask_steps_kernel": (t3, i1, i, t3),
        "col2im_kernel": (m, i1, i, i, t3),
        "relu_kernel": (v, v),
        "relu_grad_kernel": (v, v, v),
    }


# ----------------------------------------------------------------------------- launchers

def _stride(stride):
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
    return int(stride)


def _conv_args(x, W, lengths, stride):
    launch.check_input("x", x, (None, None, None))
    dt = launch.check_float("x", x)
    B, T, Cin = x.shape
    launch.check_input("W", W, (None, Cin, None), dt)
    Cout, _, K = W.shape
    s = _stride(stride)
    return dt, B, T, Cin, Cout, K, s, -(-T // s), launch.lengths_to_device(lengths, B, T)


def _im2col(x_d, lengths_d, K, s, T_out, dt):
    B, _, Cin = x_d.shape
    cols = cuda.device_array((B * T_out, Cin * K), dtype=dt)
    blocks, tpb = launch.grid_1d(cols.size)
    im2col_kernel[blocks, tpb](x_d, lengths_d, K, s, cols)
    return cols


def conv1d_forward(x, W, b, lengths, stride=1):
    """Length-aware 1-D convolution over time: x (B, T, Cin), W (Cout, Cin, K), b (Cout,) or
    None -> y (B, ceil(T/stride), Cout), zero past each row's ceil(L/stride) steps."""
    on_device = launch.is_device_array(x)
    dt, B, T, Cin, Cout, K, s, T_out, lengths_d = _conv_args(x, W, lengths, stride)
    if b is not None:
        launch.check_input("b", b, (Cout,), dt)
    x_d = launch.as_device(x)
    cols = _im2col(x_d, lengths_d, K, s, T_out, dt)
    y = cuda.device_array((B, T_out, Cout), dtype=dt)
    blas.gemm(cols, launch.as_device(W).reshape(Cout, Cin * K), y.reshape(B * T_out, Cout),
              bias=None if b is None else launch.as_device(b), trans_b=True)
    blocks, tpb = launch.grid_1d(y.size)
    mask_steps_kernel[blocks, tpb](y, lengths_d, s, y)
    return launch.to_output(y, on_device)


def conv1d_backward(dy, x, W, lengths, stride=1):
    """-> dx (B, T, Cin), dW (Cout, Cin, K), db (Cout,); dy past ceil(L/stride) is ignored."""
    on_device = launch.is_device_array(dy)
    dt, B, T, Cin, Cout, K, s, T_out, lengths_d = _conv_args(x, W, lengths, stride)
    launch.check_input("dy", dy, (B, T_out, Cout), dt)
    g = cuda.device_array((B, T_out, Cout), dtype=dt)
    blocks, tpb = launch.grid_1d(g.size)
    mask_steps_kernel[blocks, tpb](launch.as_device(dy), lengths_d, s, g)
    g2 = g.reshape(B * T_out, Cout)
    cols = _im2col(launch.as_device(x), lengths_d, K, s, T_out, dt)
    dW = cuda.device_array((Cout, Cin, K), dtype=dt)
    blas.gemm(g2, cols, dW.reshape(Cout, Cin * K), trans_a=True)
    db = cuda.device_array((Cout,), dtype=dt)
    blas.colsum(g2, db)
    dcols = cuda.device_array((B * T_out, Cin * K), dtype=dt)
    blas.gemm(g2, launch.as_device(W).reshape(Cout, Cin * K), dcols)
    dx = cuda.device_array((B, T, Cin), dtype=dt)
    blocks, tpb = launch.grid_1d(dx.size)
    col2im_kernel[blocks, tpb](dcols, lengths_d, K, s, dx)
    return tuple(launch.to_output(a, on_device) for a in (dx, dW, db))

def _flat(name, a):
    launch.check_input(name, a, (None,) * len(a.shape))
    dt = launch.check_float(name, a)
    return launch.as_device(a).reshape(int(np.prod(a.shape))), dt


def relu_forward(x):
    """max(x, 0), any shape."""
    on_device = launch.is_device_array(x)
    x_d, dt = _flat("x", x)
    out = cuda.device_array(tuple(x.shape), dtype=dt)
    if out.size:
        blocks, tpb = launch.grid_1d(out.size)
        relu_kernel[blocks, tpb](x_d, out.reshape(out.size))
    return launch.to_output(out, on_device)


def relu_backward(dy, y):
    """dy where y > 0, else 0 (y: relu_forward's output)."""
    on_device = launch.is_device_array(dy)
    dy_d, dt = _flat("dy", dy)
    launch.check_input("y", y, tuple(dy.shape), dt)
    out = cuda.device_array(tuple(dy.shape), dtype=dt)
    if out.size:
        blocks, tpb = launch.grid_1d(out.size)
        relu_grad_kernel[blocks, tpb](dy_d, launch.as_device(y).reshape(out.size),
                                      out.reshape(out.size))
    return launch.to_output(out, on_device)
