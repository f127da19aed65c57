"""Fixtures for every test module (tests/cuda/conftest.py overrides ``rng`` there)."""
import secrets

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh random generator per test; its seed is printed so a failure can be replayed."""
    seed = secrets.randbits(32)
    print(f"rng seed {seed}")          # shown by pytest when the test fails
    return np.random.default_rng(seed)


@pytest.fixture
def ort():
    """onnxruntime, after onnx: the tests that use it skip, saying why, without the extra."""
    reason = "needs the [onnx] extra: pip install 'gruengine[onnx]'"
    pytest.importorskip("onnx", reason=reason)
    return pytest.importorskip("onnxruntime", reason=reason)
