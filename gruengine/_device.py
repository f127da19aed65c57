"""Which side an array lives on. A leaf module: it imports nothing from the package, so the
array helpers (``gruengine.arrays``) and the CUDA launchers (``kernels/cuda/launch.py``) can
both use it without importing each other."""
import numpy as np

__all__ = ["is_device", "device_of"]


def is_device(a):
    """True for numba CUDA device arrays (real or simulated) and other CUDA arrays."""
    if isinstance(a, np.ndarray):
        return False
    return bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__")


def device_of(a):
    """'cuda' for a CUDA array, else 'cpu' (where a kernel for ``a`` must run)."""
    return "cuda" if is_device(a) else "cpu"
