"""Shared fixtures of the CUDA tests (simulator, or a real GPU when NUMBA_ENABLE_CUDASIM is unset)."""
import zlib

import numpy as np
import pytest

try:
    from gruengine.kernels.cuda import launch
except ImportError:               # no numba.cuda at all: nothing here can run
    launch = None
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(params=[(4, 2), (32, 1024)], ids=["tpb4-blocks2", "tpb32"])
def launch_config(request, monkeypatch):
    """Small launch settings: 4 threads x 2 blocks makes every grid-stride loop wrap."""
    tpb, blocks = request.param
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", tpb)
    monkeypatch.setattr(launch, "MAX_BLOCKS", blocks)
    return tpb


@pytest.fixture
def rng(request):
    # a fresh stream per test, seeded from its name: reproducible, different per test
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
