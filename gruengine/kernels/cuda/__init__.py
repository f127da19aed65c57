"""numba.cuda kernels and their host launchers, same names and argument order as ``gruengine.reference``."""
