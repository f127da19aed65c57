"""The device-array side of ``gruengine.arrays``: the array work a layer does between kernels,
on CUDA device arrays, with the blas copy/add/fill kernels.

``gruengine.arrays`` holds the NumPy side and calls these for device arrays; they take and
return device arrays (``assign`` and ``multiply`` also take a NumPy source or mask).
"""
import numpy as np

from . import blas, launch, ops

__all__ = ["to_device", "zeros", "concat_last", "columns", "add", "multiply", "assign",
           "fill_zero", "check"]


def to_device(a):
    """A device array of ``a`` (device arrays pass through, NumPy arrays are copied over)."""
    return launch.as_device(a)


def zeros(shape, dtype):
    """Device zeros of ``shape`` (a tuple of ints)."""
    return blas.zeros(shape, np.dtype(dtype))


def concat_last(parts):
    """Concatenate device arrays of one leading shape along the last axis (a new array)."""
    lead = tuple(parts[0].shape)[:-1]
    rows = int(np.prod(lead))
    width = sum(tuple(p.shape)[-1] for p in parts)
    out = blas.zeros(lead + (width,), parts[0].dtype)
    flat = out.reshape(rows, width)
    k = 0
    for p in parts:
        w = tuple(p.shape)[-1]
        blas.copy2d(p.reshape(rows, w), flat[:, k:k + w])
        k += w
    return out


def columns(a, start, stop):
    """A contiguous device copy of ``a[..., start:stop]``."""
    shape = tuple(a.shape)
    lead = shape[:-1]
    rows = int(np.prod(lead))
    out = blas.zeros(lead + (stop - start,), a.dtype)
    blas.copy2d(a.reshape(rows, shape[-1])[:, start:stop], out.reshape(rows, stop - start))
    return out


def add(a, b):
    """a + b as a new device array (contiguous, same shape)."""
    out = blas.zeros(tuple(a.shape), a.dtype)
    blas.add_into(out, a)
    return blas.add_into(out, b)


def multiply(a, mask):
    """a * mask as a new device array; ``mask`` NumPy or on the device."""
    return ops.dropout_forward(a, launch.as_device(mask))


def assign(dst, src):
    """dst[...] = src in place; dst a contiguous device array, src NumPy or on the device."""
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"assign: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
    if launch.is_device_array(src):
        n = dst.size
        blas.copy2d(src.reshape(1, n), dst.reshape(1, n))
    else:
        dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype))
    return dst


def fill_zero(a):
    """Set every element of a contiguous device array to zero in place."""
    if a.size:
        blas.fill(a, 0.0)
    return a


def check(name, a, shape, dtype=None):
    """Shape and dtype of a device array (no NaN scan: that would cost a copy to the host)."""
    return launch.check_input(name, a, shape, dtype)
