"""Numba CPU kernels (``@njit(parallel=True, cache=True)``), same names and argument order as ``gruengine.reference``."""
from .gru import *  # noqa: F401,F403
from .ops import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .lstm import *  # noqa: F401,F403
from .mingru import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
