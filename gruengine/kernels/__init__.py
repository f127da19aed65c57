"""Backends: ``cpu`` (Numba, parallel) and ``cuda`` (numba.cuda), same names as ``gruengine.reference``."""
