"""gruengine: a standalone GRU engine with Numba CPU and CUDA kernels.

    import numpy as np, gruengine
    gru = gruengine.GRU(8, 16, num_layers=2, bidirectional=True, seed=0)
    y, h_n = gru.forward(x, lengths=lengths)
    dx, dh0 = gru.backward(dy)
"""
from . import threads  # noqa: F401  (first: the thread pools read its settings when they load)

threads.configure()
__version__ = "0.1.0"

from .errors import GruengineError, DataError, CheckpointError, TrainingDivergedError  # noqa: F401
from .gru import GRU  # noqa: F401
from .lstm import LSTM  # noqa: F401
from .layers import Embedding, Linear, Pool, Dropout  # noqa: F401
from . import losses  # noqa: F401
from .mingru import MinGRU  # noqa: F401
from .optim import Adam, AdamW, SGD, clip_grad_norm, clip_grad_value  # noqa: F401
from .params import ParamBuffer  # noqa: F401
from .safetensors import save_safetensors, load_safetensors  # noqa: F401
