"""Numba CPU optimizer kernels over flat buffers.

Same names and argument order as ``gruengine.reference.optim``. Each public name is a thin
host function (scalar coercion, bias corrections) over a module-level
``@njit(parallel=True, cache=True)`` kernel: Adam and SGD are one fused loop over the
buffer with the clipping scale folded in, so a training step reads each array once.

Adam and SGD compute in the buffers' dtype (float32 SIMD for float32 buffers, as PyTorch
does); the reference computes in float64, so float32 results agree with it to a few
float32 ulps and float64 results to float64 rounding. Every ``prange`` iteration writes
only its own element (or its own chunk's partial sum), so results are identical on every
run and for every thread count.

The sum of squares is deterministic by construction: ``sum_of_squares_partials`` reduces
each chunk of a fixed grid on its own (four interleaved accumulators, fixed order) and
``ordered_sum`` adds the partials in chunk order; the grid (``chunk_bounds``, ``CHUNK``,
shared with the reference) does not depend on the number of threads. ``gruengine.optim``
reduces several arrays, or the named ranges of one flat buffer, on the same grid and gets
the same bits.
"""
import math

import numpy as np
from numba import njit, prange

from ...reference.optim import CHUNK, chunk_bounds  # noqa: F401  (the one chunk grid)

__all__ = ["adam_step", "sgd_step", "chunk_bounds", "sum_of_squares_partials", "ordered_sum",
           "sum_of_squares", "scale_inplace", "clamp_inplace"]


# ---------------------------------------------------------------- Adam / AdamW
# Scalars reach the kernels already cast to the buffers' dtype, so float32 buffers run
# float32 SIMD arithmetic, as PyTorch does (float64 math here would cost 3x: no 8-wide
# division or sqrt). Options are chosen by which loop runs, never by a branch inside a
# loop: a branch in the loop body stops LLVM from vectorizing it.

@njit(parallel=True, cache=True)
def _adam_kernel(param, grad, m, v, decay, l2, one_minus_beta1, beta2, one_minus_beta2, eps,
                 grad_scale, step_size, bias_correction2_sqrt):
    # param, grad, m, v: (N,) one dtype; scalars in that dtype; updates param, m, v in place
    # decay = 1 - lr*wd (AdamW) or 1;  l2 = wd (Adam with weight decay) or 0
    n = param.shape[0]
    if l2 != 0:
        for i in prange(n):
            p = param[i]
            g = grad[i] * grad_scale + l2 * p
            m_i = m[i] + one_minus_beta1 * (g - m[i])          # torch's lerp(m, g, 1 - beta1)
            v_i = beta2 * v[i] + one_minus_beta2 * (g * g)
            m[i] = m_i
            v[i] = v_i
            param[i] = p - step_size * (m_i / (np.sqrt(v_i) / bias_correction2_sqrt + eps))
    else:
        for i in prange(n):
            p = param[i] * decay
            g = grad[i] * grad_scale
            m_i = m[i] + one_minus_beta1 * (g - m[i])
            v_i = beta2 * v[i] + one_minus_beta2 * (g * g)
            m[i] = m_i
            v[i] = v_i
            param[i] = p - step_size * (m_i / (np.sqrt(v_i) / bias_correction2_sqrt + eps))


def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, grad_scale):
    # param, grad, m, v: (N,) C-contiguous, one dtype   step: 1-based count after increment
    dt = param.dtype.type
    step, lr, beta1, beta2 = int(step), float(lr), float(beta1), float(beta2)
    weight_decay = float(weight_decay)
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    l2 = 0.0 if decoupled else weight_decay
    step_size = lr / (1.0 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    _adam_kernel(param, grad, m, v, dt(decay), dt(l2), dt(1.0 - beta1), dt(beta2), dt(1.0 - beta2),
                 dt(eps), dt(grad_scale), dt(step_size), dt(bias_correction2_sqrt))


# ---------------------------------------------------------------- SGD

@njit(parallel=True, cache=True)
def _sgd_kernel(param, grad, buf, lr, momentum, one_minus_dampening, weight_decay, grad_scale,
                first_step, coef_g, coef_b):
    # param, grad: (N,)   buf: (N,) momentum buffer, or (0,) when momentum == 0
    # scalars in the buffers' dtype. The step direction is coef_g * g + coef_b * buf:
    # (1, momentum) for Nesterov, (0, 1) for heavy ball; both exact for finite values
    # (0 * g adds a zero, weight_decay = 0 likewise), so the loops stay branch-free.
    n = param.shape[0]
    if momentum == 0:
        for i in prange(n):
            p = param[i]
            param[i] = p - lr * (grad[i] * grad_scale + weight_decay * p)
    elif first_step:
        for i in prange(n):
            p = param[i]
            g = grad[i] * grad_scale + weight_decay * p
            buf[i] = g                                          # torch: buf = clone(grad)
            param[i] = p - lr * (coef_g * g + coef_b * g)
    else:
        for i in prange(n):
            p = param[i]
            g = grad[i] * grad_scale + weight_decay * p
            b = momentum * buf[i] + one_minus_dampening * g
            buf[i] = b
            param[i] = p - lr * (coef_g * g + coef_b * b)


def sgd_step(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay, grad_scale, first_step):
    # param, grad: (N,) C-contiguous   buf: (N,) or None when momentum == 0
    dt = param.dtype.type
    momentum = float(momentum)
    if buf is None:
        if momentum != 0.0:
            raise ValueError("buf: expected an array of the parameters' shape when momentum != 0, got None")
        buf = np.empty(0, dtype=param.dtype)
    coef_g, coef_b = (1.0, momentum) if nesterov else (0.0, 1.0)
    _sgd_kernel(param, grad, buf, dt(lr), dt(momentum), dt(1.0 - float(dampening)), dt(weight_decay),
                dt(grad_scale), bool(first_step), dt(coef_g), dt(coef_b))


# ---------------------------------------------------------------- sum of squares

@njit(parallel=True, cache=True)
def _partials_kernel(x, starts, stops, out):
    # x: (N,)   starts, stops: (C,) int64 chunk bounds   out: (C,) float64 partial sums
    for c in prange(starts.shape[0]):
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        i = starts[c]
        stop = stops[c]
        while i + 4 <= stop:
            x0 = np.float64(x[i])
            x1 = np.float64(x[i + 1])
            x2 = np.float64(x[i + 2])
            x3 = np.float64(x[i + 3])
            a0 += x0 * x0
            a1 += x1 * x1
            a2 += x2 * x2
            a3 += x3 * x3
            i += 4
        while i < stop:
            xi = np.float64(x[i])
            a0 += xi * xi
            i += 1
        out[c] = (a0 + a1) + (a2 + a3)


@njit(cache=True)
def ordered_sum(partials):
    # partials: (C,) float64   -> float, added left to right (the fixed order)
    total = 0.0
    for c in range(partials.shape[0]):
        total += partials[c]
    return total


def sum_of_squares_partials(x, starts, stops):
    # x: (N,) C-contiguous   starts, stops: (C,) int64   -> (C,) float64 partial sums of squares
    out = np.empty(starts.shape[0], dtype=np.float64)
    _partials_kernel(x, starts, stops, out)
    return out


def sum_of_squares(grad):
    # grad: (N,) C-contiguous   -> float
    starts, stops = chunk_bounds(0, grad.shape[0])
    return float(ordered_sum(sum_of_squares_partials(grad, starts, stops)))


# ---------------------------------------------------------------- clipping in place

@njit(parallel=True, cache=True)
def _scale_kernel(a, scale):
    # a: (N,) ; a *= scale, scale in a's dtype
    for i in prange(a.shape[0]):
        a[i] = a[i] * scale


@njit(parallel=True, cache=True)
def _clamp_kernel(a, limit):
    # a: (N,) ; a = min(max(a, -limit), limit); NaN stays NaN (both comparisons are false)
    for i in prange(a.shape[0]):
        v = a[i]
        if v > limit:
            a[i] = limit
        elif v < -limit:
            a[i] = -limit


# A strided array (clip_grad_* accept any writeable array) has no flat view for the kernels;
# NumPy's ufuncs do the same one operation per element in a's dtype there: the same bits.

def scale_inplace(a, scale):
    """a *= scale in place (gradient clipping by norm), scale rounded to a's dtype first."""
    scale = a.dtype.type(scale)
    if a.flags.c_contiguous:
        _scale_kernel(a.reshape(-1), scale)
    else:
        np.multiply(a, scale, out=a)
    return a


def clamp_inplace(a, limit):
    """Clamp a to [-limit, limit] in place (gradient clipping by value); NaN stays NaN."""
    limit = a.dtype.type(limit)
    if a.flags.c_contiguous:
        _clamp_kernel(a.reshape(-1), limit)
    else:
        np.minimum(np.maximum(a, -limit, out=a), limit, out=a)
    return a
