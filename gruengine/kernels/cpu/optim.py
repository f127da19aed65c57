"""Numba CPU optimizer kernels over flat buffers.

Same names and argument order as ``gruengine.reference.optim``. Each public name is a thin
host function (scalar coercion, bias corrections) over a module-level
``@njit(parallel=True, cache=True)`` kernel: Adam and SGD are one fused loop over the
buffer with the clipping scale folded in, so a training step reads each array once.

Arithmetic is float64, stored back in the arrays' dtype. Every ``prange`` iteration
writes only its own element (or its own chunk's partial sum), so results are identical
on every run and for every thread count.

``sum_of_squares`` is deterministic by construction: the buffer is cut into chunks of
``CHUNK`` elements at fixed positions, each chunk is reduced on its own (four interleaved
accumulators, fixed order), and the partial sums are added in chunk order. The chunk
grid does not depend on the number of threads. ``chunk_bounds`` / ``chunk_sums`` /
``ordered_sum`` expose the pieces so ``gruengine.optim`` can reduce several arrays, or
the named segments of one flat buffer, on the same grid and get the same bits.
"""
import math

import numpy as np
from numba import njit, prange

__all__ = ["adam_step", "sgd_step", "sum_of_squares"]

CHUNK = 8192  # elements per partial sum of sum_of_squares; fixed so results never depend on threads


# ---------------------------------------------------------------- Adam / AdamW

@njit(parallel=True, cache=True)
def _adam_kernel(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                 grad_scale, step_size, bias_correction2_sqrt):
    # param, grad, m, v: (N,) same dtype; scalars float64; updates param, m, v in place
    decay = 1.0 - lr * weight_decay
    one_minus_beta1 = 1.0 - beta1
    one_minus_beta2 = 1.0 - beta2
    for i in prange(param.shape[0]):
        p = np.float64(param[i])
        g = grad[i] * grad_scale
        if weight_decay != 0.0:
            if decoupled:
                p = p * decay
            else:
                g = g + weight_decay * p
        m_i = m[i] + one_minus_beta1 * (g - m[i])
        v_i = beta2 * v[i] + one_minus_beta2 * (g * g)
        m[i] = m_i
        v[i] = v_i
        param[i] = p - step_size * (m_i / (math.sqrt(v_i) / bias_correction2_sqrt + eps))


def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, grad_scale):
    # param, grad, m, v: (N,) C-contiguous, one dtype   step: 1-based count after increment
    step = int(step)
    beta1 = float(beta1)
    beta2 = float(beta2)
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    step_size = float(lr) / bias_correction1
    _adam_kernel(param, grad, m, v, float(lr), beta1, beta2, float(eps), float(weight_decay),
                 bool(decoupled), float(grad_scale), step_size, math.sqrt(bias_correction2))


# ---------------------------------------------------------------- SGD

@njit(parallel=True, cache=True)
def _sgd_kernel(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay,
                grad_scale, first_step):
    # param, grad: (N,)   buf: (N,) momentum buffer, or (0,) when momentum == 0
    one_minus_dampening = 1.0 - dampening
    for i in prange(param.shape[0]):
        p = np.float64(param[i])
        g = grad[i] * grad_scale
        if weight_decay != 0.0:
            g = g + weight_decay * p
        if momentum != 0.0:
            if first_step:
                b = g
            else:
                b = momentum * buf[i] + one_minus_dampening * g
            buf[i] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        param[i] = p - lr * g


def sgd_step(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay, grad_scale, first_step):
    # param, grad: (N,) C-contiguous   buf: (N,) or None when momentum == 0
    if buf is None:
        if momentum != 0.0:
            raise ValueError("buf: expected an array of the parameters' shape when momentum != 0, got None")
        buf = np.empty(0, dtype=param.dtype)
    _sgd_kernel(param, grad, buf, float(lr), float(momentum), float(dampening), bool(nesterov),
                float(weight_decay), float(grad_scale), bool(first_step))


# ---------------------------------------------------------------- sum of squares

@njit(parallel=True, cache=True)
def _chunk_sums_kernel(x, starts, stops, out):
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


def chunk_bounds(offset, size):
    """Chunk grid of one segment ``[offset, offset + size)``: (starts, stops) int64 arrays."""
    starts = np.arange(offset, offset + size, CHUNK, dtype=np.int64)
    stops = np.minimum(starts + CHUNK, offset + size)
    return starts, stops


def chunk_sums(x, starts, stops):
    # x: (N,)   -> (C,) float64 partial sums of squares over the given chunks
    out = np.empty(starts.shape[0], dtype=np.float64)
    _chunk_sums_kernel(x, starts, stops, out)
    return out


def sum_of_squares(grad):
    # grad: (N,) C-contiguous   -> float
    starts, stops = chunk_bounds(0, grad.shape[0])
    return float(ordered_sum(chunk_sums(grad, starts, stops)))
