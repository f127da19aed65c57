"""Host and device arrays behind one set of helpers, so a layer has one code path for both.

A module built with ``device="cuda"`` keeps its parameters, gradients and everything its
backward needs as numba CUDA device arrays; on the other devices they are NumPy arrays.
The few array operations a layer does between kernels (join the directions of a
bidirectional layer, take one direction's columns back out, add two gradients, copy into a
parameter's gradient) go through these helpers, which run a CUDA kernel for device arrays
and NumPy for NumPy arrays. ``numba.cuda`` is imported only when a device array shows up.

Public entry points follow one rule: NumPy in -> NumPy out, device arrays in -> device
arrays out (``host_like``).
"""
import numpy as np

from ._checks import check_array

__all__ = ["is_device", "to_device", "to_host", "host_like", "on_device_of", "zeros",
           "concat_last", "columns", "add", "multiply", "assign", "fill_zero", "check"]


def is_device(a):
    """True for numba CUDA device arrays (real or simulated) and other CUDA arrays."""
    if isinstance(a, np.ndarray):
        return False
    return bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__")


def _cuda():
    from .kernels.cuda import blas, launch
    return blas, launch


def to_device(a):
    """A device array of ``a`` (device arrays pass through, NumPy arrays are copied over)."""
    if a is None:
        return None
    _, launch = _cuda()
    return launch.as_device(a)


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
        blas, _ = _cuda()
        return blas.zeros(shape, np.dtype(dtype))
    return np.zeros(shape, dtype)


def concat_last(parts):
    """Concatenate arrays of one leading shape along the last axis (a new array)."""
    if len(parts) == 1:
        return parts[0]
    if not is_device(parts[0]):
        return np.concatenate(parts, axis=-1)
    blas, _ = _cuda()
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
    """A contiguous copy of ``a[..., start:stop]`` (NumPy: a contiguous array of it)."""
    if not is_device(a):
        return np.ascontiguousarray(a[..., start:stop])
    blas, _ = _cuda()
    shape = tuple(a.shape)
    lead = shape[:-1]
    rows = int(np.prod(lead))
    out = blas.zeros(lead + (stop - start,), a.dtype)
    blas.copy2d(a.reshape(rows, shape[-1])[:, start:stop], out.reshape(rows, stop - start))
    return out


def add(a, b):
    """a + b as a new array (same shape, same side)."""
    if not is_device(a):
        return a + b
    blas, _ = _cuda()
    out = blas.zeros(tuple(a.shape), a.dtype)
    blas.add_into(out, a)
    return blas.add_into(out, b)


def multiply(a, mask):
    """a * mask as a new array; ``mask`` is NumPy (dropout masks are drawn on the host from a
    seeded Generator, so both devices use the same masks) or on a's side."""
    if not is_device(a):
        return a * mask
    from .kernels.cuda import ops
    return ops.dropout_forward(a, to_device(mask))


def assign(dst, src):
    """dst[...] = src in place; dst NumPy or a contiguous device array, src either."""
    if not is_device(dst):
        dst[...] = to_host(src)
        return dst
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"assign: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
    if is_device(src):
        blas, _ = _cuda()
        n = dst.size
        blas.copy2d(src.reshape(1, n), dst.reshape(1, n))
    else:
        dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype))
    return dst


def fill_zero(a):
    """Set every element to zero in place."""
    if is_device(a):
        blas, _ = _cuda()
        if a.size:
            blas.fill(a, 0.0)
    else:
        a[...] = 0
    return a


def check(name, a, shape, dtype=None, finite=True):
    """``check_array`` for NumPy arrays; shape and dtype only for device arrays (a NaN scan
    would cost a copy to the host)."""
    if is_device(a):
        _, launch = _cuda()
        return launch.check_input(name, a, shape, dtype)
    return check_array(name, a, shape, dtype, finite)
