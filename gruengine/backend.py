"""Device names and the kernel module behind each.

``get_kernels(device)`` returns a module exposing the same op names as
``gruengine.reference`` (``gru_forward``, ``gru_backward``, ``linear_forward`` ...).
"""
import importlib

DEVICES = ("cpu", "cuda", "reference")


def check_device(device):
    """Validate a device name; 'auto' resolves to 'cuda' when a usable GPU exists."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device not in DEVICES:
        raise ValueError(f"device: expected one of 'cpu', 'cuda', 'auto', got {device!r}")
    if device == "cuda" and not cuda_available():
        raise ValueError("device: 'cuda' requested but no usable CUDA GPU was found "
                         "(install numba-cuda and an NVIDIA driver, or use --device cpu)")
    return device


def cuda_available():
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


def get_kernels(device):
    name = {"cpu": "gruengine.kernels.cpu", "cuda": "gruengine.kernels.cuda",
            "reference": "gruengine.reference"}[device]
    return importlib.import_module(name)
