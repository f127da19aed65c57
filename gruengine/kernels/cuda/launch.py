"""Launch settings and host-side helpers shared by the CUDA launchers.

Launchers accept NumPy arrays (copied to the device, results copied back) or device
arrays (``numba.cuda`` device arrays, or anything exposing ``__cuda_array_interface__``);
given device arrays they return device arrays, so a training step can keep parameters,
gradients and optimizer state resident on the GPU.

The launch configuration lives here as module-level settings that the launchers read at
every call, so tests can patch them small (``monkeypatch.setattr(launch, ...)``).
"""
import numpy as np
from numba import cuda, float64

from ..._checks import check_array, check_cell_args, check_cell_grads, check_dtype, check_lengths
from ..._device import is_device

# threads per block of the 1-D elementwise / reduction kernels (a power of two, <= 1024)
THREADS_PER_BLOCK = 256
# cap on the grid of grid-stride kernels; beyond it each thread loops
MAX_BLOCKS = 1024
# GEMMs whose output has at least this many rows and columns use the register-blocked
# (64 x 64 tile) kernel; skinnier ones (per-step products over a few batch rows) the 16 x 16
GEMM_BLOCKED_MIN = 64
# column sums over more rows than this run in two passes, this many rows per chunk
COLSUM_CHUNK = 256
# GRU layers with B*H at most this (and at most gru_kernels.PERSIST_MAX) run the whole
# recurrence in one block (one launch forward, one backward); 0 = always the tiled per-step path
PERSISTENT_MAX_BH = 1024
# threads of that one block; 256 x 255 registers fit any SM, so the launch cannot fail for
# lack of registers whatever ptxas allocates
PERSISTENT_THREADS = 256
# size of the shared scratch of the block reductions: the largest THREADS_PER_BLOCK allowed
REDUCE_SHARED = 1024


# True for numba device arrays (real or simulated) and foreign CUDA arrays: the one
# predicate the library uses (gruengine._device), under the name the launchers use
is_device_array = is_device


def as_device(a):
    """Device view of ``a``: device arrays pass through, NumPy arrays are copied over."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    if getattr(a, "__cuda_ndarray__", False):
        return a
    return cuda.as_cuda_array(a)


def to_output(d, on_device):
    """Return a device result as-is for device callers, else copied to the host."""
    return d if on_device else d.copy_to_host()


def gate_output(a_d, on_device):
    """A copy of a cached device array for a ``*_gates`` result: on the device for callers
    whose forward ran on device arrays, else on the host. A copy either way: the caller may
    keep it while the cache is reused."""
    if not on_device:
        return a_d.copy_to_host()
    out = cuda.device_array(a_d.shape, dtype=a_d.dtype)
    out.copy_to_device(a_d)
    return out


def lengths_to_device(lengths, B, T):
    """Validated per-row lengths (B,) int64 on the device (None: all T)."""
    if is_device_array(lengths):
        check_input("lengths", lengths, (B,), np.int64)
        return as_device(lengths)
    return cuda.to_device(check_lengths("lengths", lengths, B, T))


def check_input(name, a, shape, dtype=None):
    """``check_array`` for NumPy inputs; shape and dtype only for device arrays.

    Device arrays are not scanned for NaN/Inf: that would cost a copy to the host.
    """
    if isinstance(a, np.ndarray):
        return check_array(name, a, shape, dtype)
    if not is_device_array(a):
        raise ValueError(f"{name}: expected a numpy.ndarray or a CUDA device array, "
                         f"got {type(a).__name__}")
    if len(a.shape) != len(shape) or any(w is not None and w != g for w, g in zip(shape, a.shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(a.shape)}")
    if dtype is not None and np.dtype(a.dtype) != np.dtype(dtype):
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {np.dtype(a.dtype)}")
    return a


def check_cell_inputs(cell, x, states, weights, lengths):
    """``_checks.check_cell_args`` (the check every backend's cell ops share) for NumPy or
    device arrays: one layer's inputs of ``cell`` ('gru', 'lstm', 'mingru'), states and
    weights in the op's argument order -> (dtype, B, T, I, H, lengths on the device)."""
    lengths_d, dt, (B, T, I, H) = check_cell_args(
        cell, x, states, weights, lengths, check=check_input,
        to_lengths=lambda name, a, B, T: lengths_to_device(a, B, T))
    return dt, B, T, I, H, lengths_d


def check_cell_gradients(cell, dy, dfinals, shape, dtype):
    """``_checks.check_cell_grads`` for NumPy or device arrays: dy (B, T, H) and the
    final-state gradients (B, H); ``shape`` is (B, T, I, H)."""
    check_cell_grads(cell, dy, dfinals, shape, dtype, check=check_input)


def check_float(name, a):
    """The dtype of a float input (float32 or float64), else a one-line ValueError."""
    return check_dtype(name, a.dtype)


def grid_1d(n):
    """(blocks, threads) for a grid-stride loop over ``n`` items."""
    tpb = int(THREADS_PER_BLOCK)
    blocks = max(1, min(int(MAX_BLOCKS), (int(n) + tpb - 1) // tpb))
    return blocks, tpb


# ----------------------------------------------------------------------------- reductions

@cuda.jit(device=True)
def block_reduce_store(acc, partial):
    # acc: this thread's float64 partial sum ; partial: (blocks,) float64
    # tree reduction in shared memory; blockDim.x must be a power of two <= REDUCE_SHARED
    sh = cuda.shared.array(REDUCE_SHARED, float64)
    tid = cuda.threadIdx.x
    sh[tid] = acc
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            sh[tid] += sh[tid + stride]
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        partial[cuda.blockIdx.x] = sh[0]


def reduce_threads():
    """THREADS_PER_BLOCK checked for the reduction kernels (power of two, <= REDUCE_SHARED)."""
    tpb = int(THREADS_PER_BLOCK)
    if tpb < 1 or tpb > REDUCE_SHARED or tpb & (tpb - 1):
        raise ValueError(f"THREADS_PER_BLOCK: expected a power of two in [1, {REDUCE_SHARED}], "
                         f"got {tpb}")
    return tpb


def finish_sum(partial_d):
    """Sum the per-block float64 partials on the host (few values, a fixed order)."""
    return float(np.sum(partial_d.copy_to_host()))
