"""Plain NumPy optimizer primitives on flat buffers: the executable specification.

``gruengine.kernels.cpu.optim`` and ``gruengine.kernels.cuda.optim`` expose the same names
and argument order and are tested against these. ``gruengine.optim`` needs nothing else:

- ``adam_step``, ``sgd_step``: one update of a flat buffer in place;
- ``sum_of_squares_partials(x, starts, stops)``: float64 sums of squares over a chunk grid,
  ``ordered_sum(partials)``: their left-to-right sum, so the global gradient norm has the
  same bits however the parameters are laid out (``chunk_bounds`` cuts one parameter's range
  into ``CHUNK``-sized chunks from its own start); ``sum_of_squares`` of one array;
- ``scale_inplace``, ``clamp_inplace``: the two gradient clippings.

Semantics are PyTorch's (torch.optim.Adam, AdamW, SGD, nn.utils.clip_grad_*):

- Adam: ``weight_decay`` adds ``weight_decay * param`` to the gradient (L2).
  AdamW (``decoupled=True``): ``param *= 1 - lr * weight_decay`` before the Adam update.
- bias corrections use the 1-based ``step``; ``eps`` is added after ``sqrt(v_hat)``.
- SGD: momentum buffer ``buf = grad`` on the first step, then
  ``buf = momentum * buf + (1 - dampening) * grad``; Nesterov uses ``grad + momentum * buf``.
- ``grad_scale`` multiplies the gradient before anything else: global-norm clipping
  folded into the step.

Adam and SGD do their arithmetic in float64 and store back in the arrays' dtype (float32 or
float64); the sums of squares accumulate in float64; ``scale_inplace`` and ``clamp_inplace``
work in the array's dtype (as NumPy's ``*=`` and torch's clipping do), so every backend gives
the same bits for them. The Numba CPU Adam and SGD compute float32 buffers in float32 (as
PyTorch does, for SIMD speed), so they agree with this to a few float32 ulps; float64
agrees to rounding.
No validation here: ``gruengine.optim`` validates.
"""
import math

import numpy as np

__all__ = ["adam_step", "sgd_step", "chunk_bounds", "sum_of_squares_partials", "ordered_sum",
           "sum_of_squares", "scale_inplace", "clamp_inplace"]

CHUNK = 8192  # elements per partial sum of squares; fixed, so no result depends on threads or blocks


def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, grad_scale):
    # param, grad, m, v: (N,)   step: 1-based count after increment   -> None (in place)
    p = param.astype(np.float64)
    g = grad.astype(np.float64) * grad_scale
    if weight_decay != 0.0:
        if decoupled:
            p = p * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    m_old = m.astype(np.float64)
    v_old = v.astype(np.float64)
    m_new = m_old + (1.0 - beta1) * (g - m_old)   # torch's lerp(m, g, 1 - beta1)
    v_new = beta2 * v_old + (1.0 - beta2) * (g * g)
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    step_size = lr / bias_correction1
    denom = np.sqrt(v_new) / math.sqrt(bias_correction2) + eps
    param[...] = p - step_size * (m_new / denom)
    m[...] = m_new
    v[...] = v_new


def sgd_step(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay, grad_scale, first_step):
    # param, grad: (N,)   buf: (N,) momentum buffer (unused, may be None, when momentum == 0)
    p = param.astype(np.float64)
    g = grad.astype(np.float64) * grad_scale
    if weight_decay != 0.0:
        g = g + weight_decay * p
    if momentum != 0.0:
        if first_step:
            b = g
        else:
            b = momentum * buf.astype(np.float64) + (1.0 - dampening) * g
        buf[...] = b
        g = g + momentum * b if nesterov else b
    param[...] = p - lr * g


def chunk_bounds(offset, size):
    """Chunk grid of one parameter at ``[offset, offset + size)``: (starts, stops) int64 arrays."""
    starts = np.arange(offset, offset + size, CHUNK, dtype=np.int64)
    stops = np.minimum(starts + CHUNK, offset + size)
    return starts, stops


def sum_of_squares_partials(x, starts, stops):
    # x: (N,)   starts, stops: (C,) int64   -> (C,) float64, [c] = sum(x[starts[c]:stops[c]]**2)
    x = x.astype(np.float64)
    return np.array([np.sum(x[a:b] * x[a:b]) for a, b in zip(starts, stops)], dtype=np.float64)


def ordered_sum(partials):
    # partials: (C,) float64   -> float, added left to right (a fixed order, so fixed bits)
    total = 0.0
    for p in partials.tolist():
        total += p
    return total


def sum_of_squares(grad):
    # grad: (N,)   -> float, accumulated in float64
    g = grad.astype(np.float64)
    return float(np.sum(g * g))


def scale_inplace(a, scale):
    # a: any shape; a *= scale with scale rounded to a's dtype first (NumPy's ``a *= float``)
    a *= a.dtype.type(scale)
    return a


def clamp_inplace(a, limit):
    # a: any shape; a = min(max(a, -limit), limit) in a's dtype; NaN stays NaN
    lim = a.dtype.type(limit)
    np.minimum(np.maximum(a, -lim, out=a), lim, out=a)
    return a
