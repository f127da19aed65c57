"""CUDA conv1d, layer_norm and relu against the NumPy reference (tiny shapes, under the
simulator on a machine without a GPU); device-array inputs give device-array outputs."""
import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from gruengine.kernels import cuda as kc  # noqa: E402
from gruengine.kernels.cuda import launch  # noqa: E402
from gruengine.reference import conv as ref  # noqa: E402

from .helpers import assert_close  # noqa: E402

DTYPES = [np.float32, np.float64]


def _a(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv1d(rng, launch_config, dtype, stride):
    B, T, Cin, Cout, K = 2, 5, 2, 3, 3
    x, W, b = _a(rng, (B, T, Cin), dtype), _a(rng, (Cout, Cin, K), dtype), _a(rng, Cout, dtype)
    lengths = np.array([5, 2], dtype=np.int64)
    y = kc.conv1d_forward(x, W, b, lengths, stride)
    assert_close(y, ref.conv1d_forward(x, W, b, lengths, stride), dtype, "y")
    dy = _a(rng, y.shape, dtype)
    for name, g, w in zip(("dx", "dW", "db"), kc.conv1d_backward(dy, x, W, lengths, stride),
                          ref.conv1d_backward(dy, x, W, lengths, stride)):
        assert_close(g, w, dtype, name)


def test_conv1d_no_bias_and_device_arrays(rng):
    dtype = np.float32
    x, W = _a(rng, (2, 4, 1), dtype), _a(rng, (2, 1, 4), dtype)
    lengths = np.array([3, 4], dtype=np.int64)
    y_d = kc.conv1d_forward(cuda.to_device(x), cuda.to_device(W), None, lengths, 1)
    assert launch.is_device_array(y_d)
    assert_close(y_d.copy_to_host(), ref.conv1d_forward(x, W, None, lengths, 1), dtype, "y")
    with pytest.raises(ValueError, match=r"^stride: expected an integer >= 1, got 0$"):
        kc.conv1d_forward(x, W, None, lengths, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm(rng, launch_config, dtype):
    B, T, C = 2, 3, launch_config + 1
    x, gamma, beta = _a(rng, (B, T, C), dtype), _a(rng, C, dtype), _a(rng, C, dtype)
    lengths = np.array([3, 1], dtype=np.int64)
    got = kc.layer_norm_forward(x, gamma, beta, lengths)
    want = ref.layer_norm_forward(x, gamma, beta, lengths)
    for name, g, w in zip(("y", "mean", "rstd"), got, want):
        assert_close(g, w, dtype, name)
    dy = _a(rng, (B, T, C), dtype)
    for name, g, w in zip(("dx", "dgamma", "dbeta"),
                          kc.layer_norm_backward(dy, x, gamma, *want[1:], lengths),
                          ref.layer_norm_backward(dy, x, gamma, *want[1:], lengths)):
        assert_close(g, w, dtype, name)


def test_relu(rng, launch_config):
    dtype = np.float32
    x = _a(rng, (3, launch_config + 1), dtype)
    y = kc.relu_forward(x)
    np.testing.assert_array_equal(y, ref.relu_forward(x))
    dy = _a(rng, x.shape, dtype)
    np.testing.assert_array_equal(kc.relu_backward(dy, y), ref.relu_backward(dy, y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm(rng, launch_config, dtype):
    B, T, C = 2, 3, launch_config + 1
    x, gamma, beta = _a(rng, (B, T, C), dtype), _a(rng, C, dtype), _a(rng, C, dtype)
    lengths = np.array([3, 1], dtype=np.int64)
    mean, var = ref.batch_norm_stats(x, lengths)
    for name, g, w in zip(("mean", "var"), kc.batch_norm_stats(x, lengths), (mean, var)):
        assert_close(g, w, dtype, name)
    rstd = (1 / np.sqrt(var + 1e-5)).astype(dtype)
    assert_close(kc.batch_norm_forward(x, gamma, beta, mean, rstd, lengths),
                 ref.batch_norm_forward(x, gamma, beta, mean, rstd, lengths), dtype, "y")
    dy = _a(rng, (B, T, C), dtype)
    for batch_stats in (True, False):
        for name, g, w in zip(("dx", "dgamma", "dbeta"),
                              kc.batch_norm_backward(dy, x, gamma, mean, rstd, lengths, batch_stats),
                              ref.batch_norm_backward(dy, x, gamma, mean, rstd, lengths, batch_stats)):
            assert_close(g, w, dtype, name)
