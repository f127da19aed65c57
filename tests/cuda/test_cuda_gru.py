"""CUDA GRU forward/backward/gates against the NumPy reference (simulator, or a real GPU).

Run in a process of its own: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q
"""
import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from gruengine import reference as ref  # noqa: E402
from gruengine.kernels import cuda as kc  # noqa: E402
from gruengine.kernels.cuda import launch  # noqa: E402

from .helpers import assert_close  # noqa: E402

NAMES = ("dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh")


def _problem(rng, B, T, I, H, dtype, lengths):
    def a(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    args = (a(B, T, I), a(B, H), a(3 * H, I, scale=0.6), a(3 * H, H, scale=0.6), a(3 * H), a(3 * H),
            lengths)
    return args, a(B, T, H), a(B, H)


def _compare(args, dy, dh_n, reset_after, reverse, dtype):
    y, h_n, cache = kc.gru_forward(*args, reset_after=reset_after, reverse=reverse)
    y_r, h_r, cache_r = ref.gru_forward(*args, reset_after=reset_after, reverse=reverse)
    assert isinstance(y, np.ndarray) and isinstance(h_n, np.ndarray)
    assert_close(y, y_r, dtype, "y")
    assert_close(h_n, h_r, dtype, "h_n")
    grads = kc.gru_backward(dy, dh_n, *args, cache, reset_after=reset_after, reverse=reverse)
    grads_r = ref.gru_backward(dy, dh_n, *args, cache_r, reset_after=reset_after, reverse=reverse)
    for name, g, g_r in zip(NAMES, grads, grads_r):
        assert_close(g, g_r, dtype, name)
    gates, gates_r = kc.gru_gates(cache), ref.gru_gates(cache_r)
    assert list(gates) == list(gates_r) == ["r", "z", "n", "h"]
    for k in gates_r:
        assert isinstance(gates[k], np.ndarray)
        assert_close(gates[k], gates_r[k], dtype, f"gates[{k!r}]")
    np.testing.assert_array_equal(gates["h"], y)
    return y, grads


@pytest.fixture
def path(request, monkeypatch):
    """The one-block persistent recurrence (few threads: each loops over several units), or
    the tiled per-step launches."""
    if request.param == "persistent":
        monkeypatch.setattr(launch, "PERSISTENT_THREADS", 8)
    else:
        monkeypatch.setattr(launch, "PERSISTENT_MAX_BH", 0)
    return request.param


# float64 on the persistent path only (the simulator is slow): the tiled kernels are the same
# code for both dtypes, and tests/test_ptx.py compiles them for float64
@pytest.mark.parametrize("path, dtype", [("persistent", np.float32), ("persistent", np.float64),
                                         ("tiled", np.float32)],
                         indirect=["path"], ids=["persistent-f32", "persistent-f64", "tiled-f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_gru_matches_reference_with_lengths(rng, path, reset_after, reverse, dtype):
    lengths = np.array([4, 2, 3], dtype=np.int64)     # unsorted, one full row
    args, dy, dh_n = _problem(rng, 3, 4, 2, 5, dtype, lengths)
    y, grads = _compare(args, dy, dh_n, reset_after, reverse, dtype)
    # padding is zero in y and dx, and its content never reaches anything
    assert not y[1, 2:].any() and not grads[0][1, 2:].any()
    x2 = args[0].copy()
    x2[1, 2:] = rng.standard_normal((2, 2)).astype(dtype) * 100
    y2, h2, _ = kc.gru_forward(x2, *args[1:], reset_after=reset_after, reverse=reverse)
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("reset_after, tpb, blocks, gemm_min",
                         [(True, 4, 2, 64), (False, 32, 1024, 1)],
                         ids=["reset_after-tpb4-blocks2", "reset_before-tpb32-blocked-gemm"])
def test_gru_several_tiles_and_small_launches(rng, monkeypatch, reset_after, tpb, blocks,
                                              gemm_min):
    # the tiled path: H > TJ and H > TK: two hidden tiles and two reduction chunks; B > TB:
    # two batch tiles; B*T*3H > 16: several GEMM tiles; 4 threads x 2 blocks make the
    # grid-stride loops wrap
    monkeypatch.setattr(launch, "PERSISTENT_MAX_BH", 0)
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", tpb)
    monkeypatch.setattr(launch, "MAX_BLOCKS", blocks)
    monkeypatch.setattr(launch, "GEMM_BLOCKED_MIN", gemm_min)     # 1: every GEMM register-blocked
    monkeypatch.setattr(launch, "COLSUM_CHUNK", 4)      # bias gradients: two-pass column sums
    B, T, I, H = 9, 2, 3, 33
    lengths = rng.integers(1, T + 1, size=B).astype(np.int64)
    args, dy, dh_n = _problem(rng, B, T, I, H, np.float32, lengths)
    _compare(args, dy, dh_n, reset_after, True, np.float32)


def test_gru_persistent_at_its_size_limit(rng, monkeypatch):
    # B*H = 297 units over 32 threads of the one block: each thread loops over ~10 units;
    # the limit is inclusive. The Cho form: its steps have the most phases (3 backward)
    monkeypatch.setattr(launch, "PERSISTENT_THREADS", 32)
    B, T, I, H = 9, 2, 3, 33
    monkeypatch.setattr(launch, "PERSISTENT_MAX_BH", B * H)
    lengths = rng.integers(1, T + 1, size=B).astype(np.int64)
    args, dy, dh_n = _problem(rng, B, T, I, H, np.float32, lengths)
    from gruengine.kernels.cuda.gru import _persistent
    assert _persistent(B, H) and not _persistent(B, H + 1)
    _compare(args, dy, dh_n, False, False, np.float32)


def test_gru_lengths_none_means_full(rng):
    args, dy, dh_n = _problem(rng, 2, 3, 2, 3, np.float64, None)
    y, h_n, _ = kc.gru_forward(*args)
    y_full, h_full, _ = kc.gru_forward(*args[:-1], np.full(2, 3, dtype=np.int64))
    np.testing.assert_array_equal(y, y_full)
    np.testing.assert_allclose(h_n, y[:, -1])


def test_gru_device_arrays_stay_on_device(rng):
    lengths = np.array([3, 1], dtype=np.int64)
    args, dy, dh_n = _problem(rng, 2, 3, 2, 4, np.float32, lengths)
    d_args = tuple(cuda.to_device(a) for a in args)
    y_d, h_d, cache = kc.gru_forward(*d_args)
    assert not isinstance(y_d, np.ndarray) and hasattr(y_d, "copy_to_host")
    grads_d = kc.gru_backward(cuda.to_device(dy), cuda.to_device(dh_n), *d_args, cache)
    assert all(not isinstance(g, np.ndarray) for g in grads_d)
    y_r, h_r, cache_r = ref.gru_forward(*args)
    grads_r = ref.gru_backward(dy, dh_n, *args, cache_r)
    assert_close(y_d.copy_to_host(), y_r, np.float32, "y")
    assert_close(h_d.copy_to_host(), h_r, np.float32, "h_n")
    for name, g, g_r in zip(NAMES, grads_d, grads_r):
        assert_close(g.copy_to_host(), g_r, np.float32, name)
    gates, gates_r = kc.gru_gates(cache), ref.gru_gates(cache_r)
    assert not any(isinstance(g, np.ndarray) for g in gates.values())
    for k in gates_r:
        assert_close(gates[k].copy_to_host(), gates_r[k], np.float32, k)


def test_gru_rejects_bad_input_with_one_line_message(rng):
    args, dy, dh_n = _problem(rng, 2, 3, 2, 4, np.float32, None)
    bad_W = args[3][:, :3].copy()
    with pytest.raises(ValueError, match=r"^W_hh: expected shape \(12, 4\), got \(12, 3\)$"):
        kc.gru_forward(*args[:3], bad_W, *args[4:])
    with pytest.raises(ValueError, match=r"^lengths: every length must be <= T=3"):
        kc.gru_forward(*args[:-1], np.array([4, 1]))
    mixed = args[1].astype(np.float64)
    with pytest.raises(ValueError, match=r"^h0: expected dtype float32, got float64$"):
        kc.gru_forward(args[0], mixed, *args[2:])
    _, _, cache = kc.gru_forward(*args, reset_after=True)
    with pytest.raises(ValueError, match=r"^cache: built with reset_after=True"):
        kc.gru_backward(dy, dh_n, *args, cache, reset_after=False)


def test_gru_layer_on_cuda_keeps_its_state_on_the_device(rng, monkeypatch):
    """gruengine.GRU(device='cuda'): parameters and gradients are device arrays; NumPy in ->
    NumPy out, device arrays in -> device arrays out; the numbers are the cpu layer's."""
    import gruengine
    from gruengine import arrays
    monkeypatch.setattr(launch, "PERSISTENT_THREADS", 8)
    B, T, I, H = 3, 4, 2, 3
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((4, B, H)).astype(np.float32)
    lengths = np.array([4, 1, 3], dtype=np.int64)
    dy = rng.standard_normal((B, T, 2 * H)).astype(np.float32)
    dh_n = rng.standard_normal((4, B, H)).astype(np.float32)
    layers = {d: gruengine.GRU(I, H, num_layers=2, bidirectional=True, dropout=0.4, device=d,
                               seed=7) for d in ("cpu", "cuda")}
    gpu = layers["cuda"]
    assert all(arrays.is_device(v) for v in gpu.params.values())
    assert all(arrays.is_device(v) for v in gpu.grads.values())
    want = layers["cpu"].forward(x, h0, lengths) + layers["cpu"].backward(dy, dh_n)
    got = gpu.forward(x, h0, lengths) + gpu.backward(dy, dh_n)
    assert all(isinstance(a, np.ndarray) for a in got)    # NumPy in, NumPy out
    for name, g, w in zip(("y", "h_n", "dx", "dh0"), got, want):
        assert_close(g, w, np.float32, name)
    for k, w in layers["cpu"].grads.items():
        assert_close(arrays.to_host(gpu.grads[k]), w, np.float32, k)
    # device arrays in: device arrays out, the same numbers (dropout masks are seeded per call,
    # so a fresh layer pair with the same seed draws the same masks)
    gpu2 = gruengine.GRU(I, H, num_layers=2, bidirectional=True, dropout=0.4, device="cuda", seed=7)
    out = gpu2.forward(cuda.to_device(x), cuda.to_device(h0), lengths)
    out += gpu2.backward(cuda.to_device(dy), cuda.to_device(dh_n))
    assert all(arrays.is_device(a) for a in out)
    for name, g, w in zip(("y", "h_n", "dx", "dh0"), out, want):
        assert_close(g.copy_to_host(), w, np.float32, name)
    # state_dict is NumPy on every device, and moves the weights exactly
    sd = gpu.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    cpu2 = gruengine.GRU(I, H, num_layers=2, bidirectional=True, seed=0)
    cpu2.load_state_dict(sd)
    back = gruengine.GRU(I, H, num_layers=2, bidirectional=True, device="cuda", seed=0)
    back.load_state_dict(cpu2.state_dict())
    for k, v in sd.items():
        np.testing.assert_array_equal(back.state_dict()[k], v)


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_gru_layer_gates_on_cuda_match_cpu(rng, monkeypatch, reset_after):
    # return_gates=True on device='cuda' reads the kernels' cache (both directions, tiled path)
    import gruengine
    monkeypatch.setattr(launch, "PERSISTENT_MAX_BH", 0)
    B, T, I, H = 2, 3, 2, 3
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = np.array([3, 2], dtype=np.int64)
    out = {}
    for device in ("cpu", "cuda"):
        gru = gruengine.GRU(I, H, bidirectional=True, reset_after=reset_after, device=device,
                            seed=5)
        out[device] = gru.forward(x, lengths=lengths, return_gates=True)
    assert_close(out["cuda"][0], out["cpu"][0], np.float32, "y")
    gates, want = out["cuda"][2], out["cpu"][2]
    assert list(gates) == ["l0", "l0_reverse"]
    for key in want:
        assert list(gates[key]) == ["r", "z", "n", "h"]
        for g, a in gates[key].items():
            assert isinstance(a, np.ndarray)
            assert_close(a, want[key][g], np.float32, f"{key} {g}")
