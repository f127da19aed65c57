"""Optimizer primitives on flat buffers on CUDA: Adam(W), SGD, the sums of squares of the
global norm, in-place scaling and clamping for clipping.

Same names, argument order and semantics as ``gruengine.reference.optim`` (PyTorch's):
Adam and SGD in float64, stored back in the buffers' dtype; scale and clamp in the array's
dtype. Updates are in place: device arrays are updated on the device; NumPy arrays are
copied over, updated and copied back into the same NumPy arrays.

``sum_of_squares_partials`` reduces each chunk of the grid in one block (a float64 tree sum,
deterministic for a given ``launch.THREADS_PER_BLOCK``) and returns the partials to the host
(a few numbers: one per ``CHUNK`` elements), where ``ordered_sum`` adds them in order, as on
the CPU. The chunk grid is the reference's (``chunk_bounds``).
"""
import math

import numpy as np
from numba import cuda, float64

from ...reference.optim import CHUNK, chunk_bounds, ordered_sum  # noqa: F401  (host side, shared)
from . import blas, launch

__all__ = ["adam_step", "sgd_step", "chunk_bounds", "sum_of_squares_partials", "ordered_sum",
           "sum_of_squares", "scale_inplace", "clamp_inplace"]


@cuda.jit(cache=True)
def adam_kernel(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, grad_scale,
                step_size, sqrt_bc2):
    # param, grad, m, v: (N,) ; step_size = lr / (1 - beta1**step), sqrt_bc2 = sqrt(1 - beta2**step)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        p = float64(param[i])
        g = float64(grad[i]) * grad_scale
        if weight_decay != 0.0:
            if decoupled:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m_old = float64(m[i])
        m_new = m_old + (1.0 - beta1) * (g - m_old)
        v_new = beta2 * float64(v[i]) + (1.0 - beta2) * (g * g)
        denom = math.sqrt(v_new) / sqrt_bc2 + eps
        param[i] = p - step_size * (m_new / denom)
        m[i] = m_new
        v[i] = v_new


@cuda.jit(cache=True)
def sgd_kernel(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay, grad_scale,
               first_step):
    # param, grad: (N,)  buf: (N,) momentum buffer (a dummy when momentum == 0)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, param.shape[0], stride):
        p = float64(param[i])
        g = float64(grad[i]) * grad_scale
        if weight_decay != 0.0:
            g = g + weight_decay * p
        if momentum != 0.0:
            if first_step:
                b = g
            else:
                b = momentum * float64(buf[i]) + (1.0 - dampening) * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] = p - lr * g


@cuda.jit(cache=True)
def sum_of_squares_partials_kernel(x, starts, stops, partial):
    # x: (N,) ; starts, stops: (C,) int64 ; partial: (C,) float64 ; block c reduces chunk c
    c = cuda.blockIdx.x
    acc = 0.0
    for i in range(starts[c] + cuda.threadIdx.x, stops[c], cuda.blockDim.x):
        v = float64(x[i])
        acc += v * v
    launch.block_reduce_store(acc, partial)


@cuda.jit(cache=True)
def scale_kernel(a, scale):
    # a: (N,) ; a *= scale, with scale in a's dtype (NumPy's `a *= float` rounds the same way)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.shape[0], stride):
        a[i] = a[i] * scale


@cuda.jit(cache=True)
def clamp_kernel(a, limit):
    # a: (N,) ; a = min(max(a, -limit), limit); NaN stays NaN (both comparisons are false)
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.shape[0], stride):
        v = a[i]
        if v > limit:
            a[i] = limit
        elif v < -limit:
            a[i] = -limit


def _check_flat(name, a, n, dt):
    launch.check_input(name, a, (n,), dt)


def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, grad_scale):
    """One Adam (``decoupled=False``) or AdamW step; updates ``param``, ``m``, ``v`` in place."""
    launch.check_input("param", param, (None,))
    dt = launch.check_float("param", param)
    n = param.shape[0]
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        _check_flat(name, a, n, dt)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step: expected an integer >= 1 (1-based, after increment), got {step!r}")
    step_size = float(lr) / (1.0 - float(beta1) ** int(step))
    sqrt_bc2 = math.sqrt(1.0 - float(beta2) ** int(step))
    arrays = [param, grad, m, v]
    dev = [launch.as_device(a) for a in arrays]
    if n:
        blocks, tpb = launch.grid_1d(n)
        adam_kernel[blocks, tpb](*dev, float(lr), float(beta1), float(beta2), float(eps),
                                 float(weight_decay), bool(decoupled), float(grad_scale),
                                 step_size, sqrt_bc2)
    _copy_back((param, m, v), (dev[0], dev[2], dev[3]))


def sgd_step(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay, grad_scale,
             first_step):
    """One SGD step (PyTorch semantics); updates ``param`` and ``buf`` in place."""
    launch.check_input("param", param, (None,))
    dt = launch.check_float("param", param)
    n = param.shape[0]
    _check_flat("grad", grad, n, dt)
    use_buf = float(momentum) != 0.0
    if use_buf:
        if buf is None:
            raise ValueError("buf: expected a momentum buffer of shape "
                             f"({n},) when momentum != 0, got None")
        _check_flat("buf", buf, n, dt)
    p_d, g_d = launch.as_device(param), launch.as_device(grad)
    b_d = launch.as_device(buf) if use_buf else blas._dummy(dt)
    if n:
        blocks, tpb = launch.grid_1d(n)
        sgd_kernel[blocks, tpb](p_d, g_d, b_d, float(lr), float(momentum), float(dampening),
                                bool(nesterov), float(weight_decay), float(grad_scale),
                                bool(first_step))
    _copy_back((param, buf) if use_buf else (param,), (p_d, b_d) if use_buf else (p_d,))


def sum_of_squares_partials(x, starts, stops):
    """(C,) float64 NumPy array: the sum of ``x[starts[c]:stops[c]] ** 2`` for each chunk c."""
    launch.check_input("x", x, (None,))
    launch.check_float("x", x)
    launch.check_input("starts", starts, (None,), np.int64)
    n_chunks = starts.shape[0]
    launch.check_input("stops", stops, (n_chunks,), np.int64)
    if n_chunks == 0:
        return np.zeros(0, dtype=np.float64)
    tpb = launch.reduce_threads()
    partial = cuda.device_array(n_chunks, dtype=np.float64)
    sum_of_squares_partials_kernel[n_chunks, tpb](launch.as_device(x), launch.as_device(starts),
                                                  launch.as_device(stops), partial)
    return partial.copy_to_host()


def sum_of_squares(grad):
    """sum(grad**2) as a Python float, accumulated in float64 on the chunk grid."""
    launch.check_input("grad", grad, (None,))
    return ordered_sum(sum_of_squares_partials(grad, *chunk_bounds(0, grad.shape[0])))


def _copy_back(hosts, devs):
    # NumPy callers: write the updated device copies back into their own arrays
    for h, d in zip(hosts, devs):
        if isinstance(h, np.ndarray):
            d.copy_to_host(h)


def _elementwise_inplace(kernel, a, value):
    # kernel(flat a, value in a's dtype) over a contiguous device array of any shape; a NumPy
    # array (any strides) is copied over and the result copied back into it
    d = launch.as_device(a)
    flat = d.reshape(d.size) if len(d.shape) != 1 else d
    if flat.shape[0]:
        blocks, tpb = launch.grid_1d(flat.shape[0])
        kernel[blocks, tpb](flat, flat.dtype.type(value))
    if isinstance(a, np.ndarray):
        a[...] = d.copy_to_host()
    return a


def scale_inplace(a, scale):
    """a *= scale in place (gradient clipping by norm), scale rounded to a's dtype first."""
    return _elementwise_inplace(scale_kernel, a, scale)


def clamp_inplace(a, limit):
    """Clamp a to [-limit, limit] in place (gradient clipping by value); NaN stays NaN."""
    return _elementwise_inplace(clamp_kernel, a, limit)


def ptx_signatures(f):
    """name -> argument types of the kernels ``ptx.signatures()`` does not list itself."""
    from numba import int64
    return {"sum_of_squares_partials_kernel": (f[::1], int64[::1], int64[::1], float64[::1])}
