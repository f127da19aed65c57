"""Plain NumPy optimizer steps on flat buffers: the executable specification.

``gruengine.kernels.cpu.optim`` exposes the same names and argument order and is tested
against these. Semantics are PyTorch's (torch.optim.Adam, AdamW, SGD):

- Adam: ``weight_decay`` adds ``weight_decay * param`` to the gradient (L2).
  AdamW (``decoupled=True``): ``param *= 1 - lr * weight_decay`` before the Adam update.
- bias corrections use the 1-based ``step``; ``eps`` is added after ``sqrt(v_hat)``.
- SGD: momentum buffer ``buf = grad`` on the first step, then
  ``buf = momentum * buf + (1 - dampening) * grad``; Nesterov uses ``grad + momentum * buf``.
- ``grad_scale`` multiplies the gradient before anything else: global-norm clipping
  folded into the step.

Arithmetic is done in float64 and stored back in the arrays' dtype (float32 or float64).
The Numba CPU kernels compute float32 buffers in float32 (as PyTorch does, for SIMD
speed), so they agree with this to a few float32 ulps; float64 agrees to rounding.
No validation here: ``gruengine.optim`` validates.
"""
import math

import numpy as np

__all__ = ["adam_step", "sgd_step", "sum_of_squares"]


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


def sum_of_squares(grad):
    # grad: (N,)   -> float, accumulated in float64
    g = grad.astype(np.float64)
    return float(np.sum(g * g))
