"""Scalar helpers of the CPU cell kernels (GRU, LSTM, minGRU): activations and the flush.

Activations are chosen by dtype at compile time.

float64 uses libm (``math.tanh``, ``math.exp``): the float64 path is the accuracy path.
float32 uses a rational approximation of tanh built from +, *, / and min/max only, so
LLVM vectorizes the gate loops (Numba's libm calls are scalar without SVML, and they were
~3/4 of the step time). The coefficients were fitted for this project by iteratively
reweighted least squares on tanh(x)/x as a [4/4] rational in x*x over |x| <= 9; evaluated
in float32 the maximum error over the real line is 3.2e-7 (under 3 ulp). Beyond |x| = 9,
tanh(x) rounds to +-1 in float32, so the input is clamped there.
sigmoid(a) = 0.5 + 0.5 * tanh(a / 2) in float32 (absolute error < 2e-7). In float64 the
exp(-a) of a very negative a overflows to inf and the sigmoid is an exact 0 (Numba raises no
floating-point warnings), so the plain form is safe there.

Numba's ``cache=True`` keys a kernel on its own file: after editing this module, delete the
``__pycache__`` of ``gruengine/kernels/cpu`` so the kernels that inline these helpers recompile.
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

__all__ = ["tanh_", "sigmoid_", "tanh32", "sigmoid32", "ftz"]

_P = (1.0, 0.1338398681895865, 0.0034990038651862587, 2.0661391221906007e-05,
      1.3420001160739516e-08)
_Q = (1.0, 0.4671730830206172, 0.025890235974155504, 0.00032910511309336714,
      7.804802526514195e-07)
_P1, _P2, _P3, _P4 = (np.float32(c) for c in _P[1:])
_Q1, _Q2, _Q3, _Q4 = (np.float32(c) for c in _Q[1:])
_CLAMP = np.float32(9.0)
_ONE32 = np.float32(1.0)
_HALF32 = np.float32(0.5)


@njit(inline="always")
def ftz(v, tiny):
    # flush values below tiny to an exact zero in v's dtype (branch-free select); inf and
    # NaN pass through
    return v if abs(v) >= tiny else v - v


@njit(inline="always")
def tanh32(x):
    # x: float32 scalar -> float32, branch-free (min/max select)
    x = min(max(x, -_CLAMP), _CLAMP)
    u = x * x
    p = _ONE32 + u * (_P1 + u * (_P2 + u * (_P3 + u * _P4)))
    q = _ONE32 + u * (_Q1 + u * (_Q2 + u * (_Q3 + u * _Q4)))
    t = x * p / q
    return min(max(t, -_ONE32), _ONE32)


@njit(inline="always")
def sigmoid32(a):
    return _HALF32 + _HALF32 * tanh32(_HALF32 * a)


def tanh_(x):
    """tanh, dispatched on the scalar type inside njit code."""
    return math.tanh(x)


def sigmoid_(a):
    """Logistic sigmoid, dispatched on the scalar type inside njit code."""
    return 1.0 / (1.0 + math.exp(-a))


@overload(tanh_, inline="always")
def _tanh_impl(x):
    if x == types.float32:
        return lambda x: tanh32(x)
    return lambda x: math.tanh(x)


@overload(sigmoid_, inline="always")
def _sigmoid_impl(a):
    if a == types.float32:
        return lambda a: sigmoid32(a)
    return lambda a: 1.0 / (1.0 + math.exp(-a))
