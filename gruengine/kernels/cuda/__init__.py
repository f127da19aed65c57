"""numba.cuda kernels and their host launchers, same names and argument order as ``gruengine.reference``.

NumPy inputs give NumPy results; numba device arrays give device arrays (see ``launch``).
Launch settings (threads per block, grid cap) live in ``gruengine.kernels.cuda.launch``.
"""
from .gru import *  # noqa: F401,F403
from .ops import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .lstm import *  # noqa: F401,F403
from .mingru import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
