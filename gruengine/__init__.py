"""gruengine: a standalone GRU engine with Numba CPU and CUDA kernels.

    import numpy as np, gruengine
    gru = gruengine.GRU(8, 16, num_layers=2, bidirectional=True, seed=0)
    y, h_n = gru.forward(x, lengths=lengths)
    dx, dh0 = gru.backward(dy)
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenBLAS's idle worker threads spin for 2**28 cycles (~0.1 s) after every BLAS call before
# they sleep, taking a core from the Numba kernels that run between the GEMMs of a training
# step. 2**20 cycles (~0.4 ms) still covers the gap between the per-step GEMMs of one
# recurrence; measured: a whole model step 112 -> 79 ms on 2 cores (docs/benchmarks.md).
# OpenBLAS reads the variable when it loads, so only when NumPy is not imported yet; an
# explicit setting wins.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
    # one of several MPI ranks: threads from this rank's share of the machine's cores
    from ._launch import set_thread_defaults as _set_thread_defaults
    _set_thread_defaults(_os.environ)

from .errors import GruengineError, DataError, CheckpointError, TrainingDivergedError  # noqa: F401
from .gru import GRU  # noqa: F401
from .lstm import LSTM  # noqa: F401
from .layers import Embedding, Linear, Pool, Dropout  # noqa: F401
from . import losses  # noqa: F401
from .mingru import MinGRU  # noqa: F401
from .optim import Adam, AdamW, SGD, clip_grad_norm, clip_grad_value  # noqa: F401
from .params import ParamBuffer  # noqa: F401
from .safetensors import save_safetensors, load_safetensors  # noqa: F401
