"""CUDA minGRU forward/backward/gates against the NumPy reference (simulator, or a real GPU).

Run in a process of its own:
NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda/test_cuda_mingru.py -q
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

NAMES = ("dx", "dh0", "dW_z", "dW_h", "db_z", "db_h")


def _problem(rng, B, T, I, H, dtype, lengths):
    def a(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    # pre-activations of both signs reach both branches of g (k + 1/2 and σ(k))
    args = (a(B, T, I), a(B, H), a(H, I), a(H, I), a(H), a(H), lengths)
    return args, a(B, T, H), a(B, H)


def _compare(args, dy, dh_n, reverse, dtype):
    y, h_n, cache = kc.mingru_forward(*args, reverse=reverse)
    y_r, h_r, cache_r = ref.mingru_forward(*args, reverse=reverse)
    assert isinstance(y, np.ndarray) and isinstance(h_n, np.ndarray)
    assert_close(y, y_r, dtype, "y")
    assert_close(h_n, h_r, dtype, "h_n")
    grads = kc.mingru_backward(dy, dh_n, *args, cache, reverse=reverse)
    grads_r = ref.mingru_backward(dy, dh_n, *args, cache_r, reverse=reverse)
    for name, g, g_r in zip(NAMES, grads, grads_r):
        assert_close(g, g_r, dtype, name)
    gates, gates_r = kc.mingru_gates(cache), ref.mingru_gates(cache_r)
    assert sorted(gates) == sorted(gates_r)
    for k in gates_r:
        assert_close(gates[k], gates_r[k], dtype, f"gates[{k!r}]")
    return y, grads


# float64 in one direction only: the kernels are dtype-agnostic and the simulator is slow
@pytest.mark.parametrize("dtype, reverse", [(np.float32, False), (np.float32, True),
                                            (np.float64, True)],
                         ids=["f32-fwd", "f32-rev", "f64-rev"])
def test_mingru_matches_reference_with_lengths(rng, launch_config, dtype, reverse):
    # launch_config: 4 threads x 2 blocks (the scan's grid-stride loop wraps over B*H = 15)
    # and 32 threads (one partly full block)
    lengths = np.array([4, 2, 3], dtype=np.int64)     # unsorted, one full row
    args, dy, dh_n = _problem(rng, 3, 4, 2, 5, dtype, lengths)
    y, grads = _compare(args, dy, dh_n, reverse, dtype)
    # padding is zero in y and dx, and its content never reaches anything
    assert not y[1, 2:].any() and not grads[0][1, 2:].any()
    x2 = args[0].copy()
    x2[1, 2:] = rng.standard_normal((2, 2)).astype(dtype) * 100
    y2, _, _ = kc.mingru_forward(x2, *args[1:], reverse=reverse)
    np.testing.assert_array_equal(y2, y)


def test_mingru_many_units_and_blocked_gemms(rng, monkeypatch):
    # B*H = 3*tpb + 1 scan threads over 4 blocks (the last one partly full); every GEMM
    # register-blocked; two-pass bias column sums over B*T = 39 rows
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(launch, "GEMM_BLOCKED_MIN", 1)
    monkeypatch.setattr(launch, "COLSUM_CHUNK", 16)
    B, T, I, H = 13, 3, 3, 1
    lengths = rng.integers(1, T + 1, size=B).astype(np.int64)
    args, dy, dh_n = _problem(rng, B, T, I, H, np.float32, lengths)
    _compare(args, dy, dh_n, False, np.float32)


def test_mingru_lengths_none_means_full(rng):
    args, dy, dh_n = _problem(rng, 2, 3, 2, 3, np.float64, None)
    y, h_n, _ = kc.mingru_forward(*args)
    y_full, h_full, _ = kc.mingru_forward(*args[:-1], np.full(2, 3, dtype=np.int64))
    np.testing.assert_array_equal(y, y_full)
    np.testing.assert_array_equal(h_n, y[:, -1])


def test_mingru_device_arrays_stay_on_device(rng):
    lengths = np.array([3, 1], dtype=np.int64)
    args, dy, dh_n = _problem(rng, 2, 3, 2, 4, np.float32, lengths)
    d_args = tuple(cuda.to_device(a) for a in args)
    y_d, h_d, cache = kc.mingru_forward(*d_args, reverse=True)
    assert not isinstance(y_d, np.ndarray) and hasattr(y_d, "copy_to_host")
    grads_d = kc.mingru_backward(cuda.to_device(dy), cuda.to_device(dh_n), *d_args, cache,
                                 reverse=True)
    assert all(not isinstance(g, np.ndarray) for g in grads_d)
    y_r, h_r, cache_r = ref.mingru_forward(*args, reverse=True)
    grads_r = ref.mingru_backward(dy, dh_n, *args, cache_r, reverse=True)
    assert_close(y_d.copy_to_host(), y_r, np.float32, "y")
    assert_close(h_d.copy_to_host(), h_r, np.float32, "h_n")
    for name, g, g_r in zip(NAMES, grads_d, grads_r):
        assert_close(g.copy_to_host(), g_r, np.float32, name)
    gates = kc.mingru_gates(cache)
    assert not isinstance(gates["z"], np.ndarray)
    assert_close(gates["z"].copy_to_host(), ref.mingru_gates(cache_r)["z"], np.float32, "z")


def test_mingru_rejects_bad_input_with_one_line_message(rng):
    args, dy, dh_n = _problem(rng, 2, 3, 2, 4, np.float32, None)
    with pytest.raises(ValueError, match=r"^W_h: expected shape \(4, 2\), got \(4, 3\)$"):
        kc.mingru_forward(*args[:3], np.zeros((4, 3), np.float32), *args[4:])
    with pytest.raises(ValueError, match=r"^b_z: expected dtype float32, got float64$"):
        kc.mingru_forward(*args[:4], args[4].astype(np.float64), *args[5:])
    with pytest.raises(ValueError, match=r"^lengths: every length must be >= 1, got 0$"):
        kc.mingru_forward(*args[:-1], np.array([0, 3]))
    _, _, cache = kc.mingru_forward(*args, reverse=True)
    with pytest.raises(ValueError, match=r"^cache: built with reverse=True"):
        kc.mingru_backward(dy, dh_n, *args, cache)
    with pytest.raises(ValueError, match=r"^cache: expected the cache mingru_forward"):
        kc.mingru_backward(dy, dh_n, *args, {"G": None}, reverse=True)


def test_mingru_layer_on_cuda_matches_cpu(rng):
    # the layer picks these kernels through device='cuda' (both directions)
    import gruengine
    B, T, I, H = 2, 3, 2, 3
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = np.array([2, 3], dtype=np.int64)
    dy = rng.standard_normal((B, T, 2 * H)).astype(np.float32)
    out = {}
    for device in ("cpu", "cuda"):
        m = gruengine.MinGRU(I, H, num_layers=1, bidirectional=True, device=device, seed=4)
        y, h_n, gates = m.forward(x, lengths=lengths, return_gates=True)
        dx, dh0 = m.backward(dy)
        out[device] = (y, h_n, dx, dh0, gates["l0_reverse"]["h_tilde"],
                       *(arrays.to_host(m.grads[k]) for k in sorted(m.grads)))
    for n, (g, c) in enumerate(zip(out["cuda"], out["cpu"])):
        assert_close(g, c, np.float32, f"output {n}")
