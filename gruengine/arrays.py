"""Host and device arrays behind one set of helpers, so a layer has one code path for both.

A module built with ``device="cuda"`` keeps its parameters, gradients and everything its
backward needs as numba CUDA device arrays; on the other devices they are NumPy arrays.
The few array operations a layer does between kernels (join the directions of a
bidirectional layer, take one direction's columns back out, add two gradients, copy into a
parameter's gradient) go through these helpers, which run a CUDA kernel for device arrays
and NumPy for NumPy arrays: the device branches live in the CUDA backend
(``gruengine.kernels.cuda.arrays``), imported only when a device array shows up.

Public entry points follow one rule: NumPy in -> NumPy out, device arrays in -> device
arrays out (``host_like``).
"""
import numpy as np

from ._checks import check_array
from ._device import device_of, is_device

__all__ = ["is_device", "device_of", "to_device", "to_host", "host_like", "on_device_of", "zeros",
           "concat_last", "columns", "add", "multiply", "assign", "fill_zero", "check"]


def _cuda():
    # imported on first use: the CUDA backend (and numba.cuda) only when a device array shows up
    from .kernels.cuda import arrays as cuda_arrays
    return cuda_arrays


def to_device(a):
    """A device array of ``a`` (device arrays pass through, NumPy arrays are copied over)."""
    if a is None:
        return None
    return _cuda().to_device(a)


def to_host(a):
    """A NumPy array of ``a`` (NumPy arrays pass through, device arrays are copied back)."""
    return a.copy_to_host() if is_device(a) else a


def host_like(a, caller_input):
    """``a`` where the caller's input lives: copied to the host when that input was NumPy."""
    return a if is_device(caller_input) else to_host(a)


def on_device_of(a, device):
    """``a`` (C-contiguous) where ``device`` computes: on the GPU for 'cuda', else NumPy."""
    if a is None:
        return None
    return to_device(a) if device == "cuda" else np.ascontiguousarray(to_host(a))


def zeros(shape, dtype, device):
    """Zeros of ``shape`` where ``device`` computes ('cuda': a device array)."""
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(n) for n in shape)
    if device == "cuda":
        return _cuda().zeros(shape, dtype)
    return np.zeros(shape, dtype)


def concat_last(parts):
    """Concatenate arrays of one leading shape along the last axis (a new array)."""
    if len(parts) == 1:
        return parts[0]
    if is_device(parts[0]):
        return _cuda().concat_last(parts)
    return np.concatenate(parts, axis=-1)


def columns(a, start, stop):
    """A contiguous copy of ``a[..., start:stop]`` (NumPy: a contiguous array of it)."""
    if is_device(a):
        return _cuda().columns(a, start, stop)
    return np.ascontiguousarray(a[..., start:stop])


def add(a, b):
    """a + b as a new array (same shape, same side)."""
    if is_device(a):
        return _cuda().add(a, b)
    return a + b


def multiply(a, mask):
    """a * mask as a new array; ``mask`` is NumPy (dropout masks are drawn on the host from a
    seeded Generator, so both devices use the same masks) or on a's side."""
    if is_device(a):
        return _cuda().multiply(a, mask)
    return a * mask


def assign(dst, src):
    """dst[...] = src in place; dst NumPy or a contiguous device array, src either."""
    if is_device(dst):
        return _cuda().assign(dst, src)
    dst[...] = to_host(src)
    return dst


def fill_zero(a):
    """Set every element to zero in place."""
    if is_device(a):
        return _cuda().fill_zero(a)
    a[...] = 0
    return a


def check(name, a, shape, dtype=None, finite=True):
    """``check_array`` for NumPy arrays; shape and dtype only for device arrays (a NaN scan
    would cost a copy to the host)."""
    if is_device(a):
        return _cuda().check(name, a, shape, dtype)
    return check_array(name, a, shape, dtype, finite)
