"""Plain NumPy forward/backward of every op: the executable specification.

Slow and obvious on purpose. ``gruengine.kernels.cpu`` and ``gruengine.kernels.cuda``
expose the same names with the same argument order and are tested against these.
"""
from .gru import *  # noqa: F401,F403
from .ops import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .lstm import *  # noqa: F401,F403
from .mingru import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
