"""CUDA tests: run in their own process (simulator: NUMBA_ENABLE_CUDASIM=1)."""
