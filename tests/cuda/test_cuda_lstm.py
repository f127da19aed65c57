"""CUDA LSTM forward/backward/gates against the NumPy reference (simulator, or a real GPU).

Run in a process of its own:
NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda/test_cuda_lstm.py -q
"""
import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from gruengine import arrays, reference as ref  # noqa: E402
from gruengine.kernels import cuda as kc  # noqa: E402
from gruengine.kernels.cuda import launch  # noqa: E402

from .helpers import assert_close  # noqa: E402

NAMES = ("dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh")


def _problem(rng, B, T, I, H, dtype, lengths):
    def a(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    args = (a(B, T, I), a(B, H), a(B, H), a(4 * H, I, scale=0.6), a(4 * H, H, scale=0.6),
            a(4 * H), a(4 * H), lengths)
    return args, a(B, T, H), a(B, H), a(B, H)


def _compare(args, dy, dh_n, dc_n, reverse, dtype):
    y, h_n, c_n, cache = kc.lstm_forward(*args, reverse=reverse)
    y_r, h_r, c_r, cache_r = ref.lstm_forward(*args, reverse=reverse)
    assert all(isinstance(a, np.ndarray) for a in (y, h_n, c_n))
    assert_close(y, y_r, dtype, "y")
    assert_close(h_n, h_r, dtype, "h_n")
    assert_close(c_n, c_r, dtype, "c_n")
    grads = kc.lstm_backward(dy, dh_n, dc_n, *args, cache, reverse=reverse)
    grads_r = ref.lstm_backward(dy, dh_n, dc_n, *args, cache_r, reverse=reverse)
    for name, g, g_r in zip(NAMES, grads, grads_r):
        assert_close(g, g_r, dtype, name)
    gates, gates_r = kc.lstm_gates(cache), ref.lstm_gates(cache_r)
    assert sorted(gates) == sorted(gates_r)
    for k in gates_r:
        assert_close(gates[k], gates_r[k], dtype, f"gates[{k!r}]")
    return y, grads


# float64 in one direction only: the kernels are dtype-agnostic and the simulator is slow
@pytest.mark.parametrize("dtype, reverse", [(np.float32, False), (np.float32, True),
                                            (np.float64, True)],
                         ids=["f32-fwd", "f32-rev", "f64-rev"])
def test_lstm_matches_reference_with_lengths(rng, dtype, reverse):
    lengths = np.array([4, 2, 3], dtype=np.int64)     # unsorted, one full row
    args, dy, dh_n, dc_n = _problem(rng, 3, 4, 2, 5, dtype, lengths)
    y, grads = _compare(args, dy, dh_n, dc_n, reverse, dtype)
    # padding is zero in y and dx, and its content never reaches anything
    assert not y[1, 2:].any() and not grads[0][1, 2:].any()
    x2 = args[0].copy()
    x2[1, 2:] = rng.standard_normal((2, 2)).astype(dtype) * 100
    y2, h2, c2, _ = kc.lstm_forward(x2, *args[1:], reverse=reverse)
    np.testing.assert_array_equal(y2, y)


def test_lstm_several_tiles_and_small_launches(rng, monkeypatch):
    # H > TJ = TK: two hidden tiles and two reduction chunks; B > TB: two batch tiles;
    # every GEMM register-blocked, two-pass bias sums, 4 threads x 2 blocks wrap the 1-D loops
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(launch, "MAX_BLOCKS", 2)
    monkeypatch.setattr(launch, "GEMM_BLOCKED_MIN", 1)
    monkeypatch.setattr(launch, "COLSUM_CHUNK", 4)
    B, T, I, H = 9, 2, 3, 33
    lengths = rng.integers(1, T + 1, size=B).astype(np.int64)
    lengths[0] = T
    args, dy, dh_n, dc_n = _problem(rng, B, T, I, H, np.float32, lengths)
    _compare(args, dy, dh_n, dc_n, True, np.float32)


def test_lstm_lengths_none_means_full(rng):
    args, dy, dh_n, dc_n = _problem(rng, 2, 3, 2, 3, np.float64, None)
    y, h_n, c_n, _ = kc.lstm_forward(*args)
    y_full, h_full, c_full, _ = kc.lstm_forward(*args[:-1], np.full(2, 3, dtype=np.int64))
    np.testing.assert_array_equal(y, y_full)
    np.testing.assert_array_equal(c_n, c_full)
    np.testing.assert_allclose(h_n, y[:, -1])


def test_lstm_device_arrays_stay_on_device(rng):
    lengths = np.array([3, 1], dtype=np.int64)
    args, dy, dh_n, dc_n = _problem(rng, 2, 3, 2, 4, np.float32, lengths)
    d_args = tuple(cuda.to_device(a) for a in args)
    y_d, h_d, c_d, cache = kc.lstm_forward(*d_args)
    assert all(not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")
               for a in (y_d, h_d, c_d))
    grads_d = kc.lstm_backward(cuda.to_device(dy), cuda.to_device(dh_n), cuda.to_device(dc_n),
                               *d_args, cache)
    assert all(not isinstance(g, np.ndarray) for g in grads_d)
    y_r, h_r, c_r, cache_r = ref.lstm_forward(*args)
    grads_r = ref.lstm_backward(dy, dh_n, dc_n, *args, cache_r)
    assert_close(y_d.copy_to_host(), y_r, np.float32, "y")
    assert_close(h_d.copy_to_host(), h_r, np.float32, "h_n")
    assert_close(c_d.copy_to_host(), c_r, np.float32, "c_n")
    for name, g, g_r in zip(NAMES, grads_d, grads_r):
        assert_close(g.copy_to_host(), g_r, np.float32, name)
    gates = kc.lstm_gates(cache)
    assert not isinstance(gates["f"], np.ndarray)
    assert_close(gates["f"].copy_to_host(), ref.lstm_gates(cache_r)["f"], np.float32, "f")


def test_lstm_rejects_bad_input_with_one_line_message(rng):
    args, dy, dh_n, dc_n = _problem(rng, 2, 3, 2, 4, np.float32, None)
    bad_W = args[4][:, :3].copy()
    with pytest.raises(ValueError, match=r"^W_hh: expected shape \(16, 4\), got \(16, 3\)$"):
        kc.lstm_forward(*args[:4], bad_W, *args[5:])
    with pytest.raises(ValueError, match=r"^c0: expected dtype float32, got float64$"):
        kc.lstm_forward(args[0], args[1], args[2].astype(np.float64), *args[3:])
    with pytest.raises(ValueError, match=r"^lengths: every length must be <= T=3"):
        kc.lstm_forward(*args[:-1], np.array([4, 1]))
    _, _, _, cache = kc.lstm_forward(*args)
    with pytest.raises(ValueError, match=r"^cache: built with reverse=False"):
        kc.lstm_backward(dy, dh_n, dc_n, *args, cache, reverse=True)
    with pytest.raises(ValueError, match=r"^dc_n: expected shape \(2, 4\), got \(2, 3\)$"):
        kc.lstm_backward(dy, dh_n, dc_n[:, :3].copy(), *args, cache)


def test_lstm_layer_on_cuda_matches_cpu(rng):
    # the layer picks these kernels through device='cuda' (both directions)
    import gruengine
    B, T, I, H = 2, 3, 2, 3
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = np.array([3, 2], dtype=np.int64)
    dy = rng.standard_normal((B, T, 2 * H)).astype(np.float32)
    out = {}
    for device in ("cpu", "cuda"):
        lstm = gruengine.LSTM(I, H, num_layers=1, bidirectional=True, device=device, seed=3)
        y, (h_n, c_n), gates = lstm.forward(x, lengths=lengths, return_gates=True)
        dx, (dh0, dc0) = lstm.backward(dy)
        out[device] = (y, h_n, c_n, dx, dh0, dc0, gates["l0_reverse"]["o"],
                       *(arrays.to_host(lstm.grads[k]) for k in sorted(lstm.grads)))
    for n, (g, c) in enumerate(zip(out["cuda"], out["cpu"])):
        assert_close(g, c, np.float32, f"output {n}")
