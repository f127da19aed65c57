"""Scalar helpers of the CPU cell kernels (GRU, LSTM, minGRU): activations and the flush.

Activations are chosen by dtype at compile time.

float64 uses ``exp64``, exp of a non-positive argument from Cody-Waite range reduction, a
degree-13 Taylor polynomial on |r| <= ln2/2 (truncation < 1e-17) and 2**k built from its bits:
within 2 ulp of libm's exp, and made of +, *, floor and a bit cast only, so the float64 gate
loops vectorize too (with ``math.tanh`` / ``math.exp`` they were scalar calls, two thirds of
the float64 forward). sigmoid64 and tanh64 call it on -|a| like the NumPy reference
(``reference/_math.sigmoid``): no overflow, no cancellation for large |a|.
float32 uses a rational approximation of tanh built from +, *, / and min/max only, so
LLVM vectorizes the gate loops (Numba's libm calls are scalar without SVML, and they were
~3/4 of the step time). The coefficients were fitted for this project by iteratively
reweighted least squares on tanh(x)/x as a [4/4] rational in x*x over |x| <= 9; evaluated
in float32 the maximum error over the real line is 3.2e-7 (under 3 ulp). Beyond |x| = 9,
tanh(x) rounds to +-1 in float32, so the input is clamped there.
sigmoid(a) = 0.5 + 0.5 * tanh(a / 2) in float32 (absolute error < 2e-7).

Numba's ``cache=True`` keys a kernel on its own file: after editing this module, delete the
``__pycache__`` of ``gruengine/kernels/cpu`` so the kernels that inline these helpers recompile.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["tanh_", "sigmoid_", "tanh32", "sigmoid32", "exp64", "tanh64", "sigmoid64", "ftz"]

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


@intrinsic
def _f64_from_bits(typingctx, bits):
    # the float64 whose IEEE bits are the int64 ``bits``
    if bits != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01      # fdlibm's split of ln 2: k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_EXP_MIN = -708.39                         # exp(x) >= 2**-1022 (normal) above this
_INV_FACT = tuple(1.0 / math.factorial(n) for n in range(14))


@njit(inline="always")
def exp64(x):
    # x: float64 <= 0 -> exp(x); below _EXP_MIN the result is the smallest normal's order
    # (the callers' flush or 1 / (1 + e) makes that irrelevant)
    x = max(x, _EXP_MIN)
    k = math.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    c = _INV_FACT
    p = c[13]
    p = p * r + c[12]
    p = p * r + c[11]
    p = p * r + c[10]
    p = p * r + c[9]
    p = p * r + c[8]
    p = p * r + c[7]
    p = p * r + c[6]
    p = p * r + c[5]
    p = p * r + c[4]
    p = p * r + c[3]
    p = p * r + c[2]
    p = p * r + c[1]
    p = p * r + c[0]
    return p * _f64_from_bits((np.int64(k) + 1023) << 52)


@njit(inline="always")
def sigmoid64(a):
    # 1 / (1 + e) for a >= 0, e / (1 + e) below, e = exp(-|a|): a blend rather than a branch
    # (both terms are finite), which keeps the inlined IR free of phi nodes
    e = exp64(-abs(a))
    s = 1.0 / (1.0 + e)
    pos = np.float64(a >= 0)
    return pos * s + (1.0 - pos) * (e * s)


@njit(inline="always")
def tanh64(x):
    t = exp64(-2.0 * abs(x))
    return math.copysign((1.0 - t) / (1.0 + t), x)


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
    return lambda x: tanh64(x)


@overload(sigmoid_, inline="always")
def _sigmoid_impl(a):
    if a == types.float32:
        return lambda a: sigmoid32(a)
    return lambda a: sigmoid64(a)
