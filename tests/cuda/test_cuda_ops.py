"""CUDA embedding, linear, pooling, losses and dropout against the NumPy reference.

Sizes leave the last block partly full (3 * threads_per_block + 1 elements) under several
launch settings; run in a process of its own (NUMBA_ENABLE_CUDASIM=1 on a machine without GPU).
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

DTYPES = [np.float32, np.float64]


def _a(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(rng, launch_config, dtype):
    V, E = 6, 3
    ids = rng.integers(0, V, size=(1, 3 * launch_config + 1)).astype(np.int64)
    ids[0, :2] = 2                                       # padding row used, and repeated ids
    W = _a(rng, (V, E), dtype)
    assert_close(kc.embedding_forward(ids, W), ref.embedding_forward(ids, W), dtype, "forward")
    dy = _a(rng, ids.shape + (E,), dtype)
    for padding_idx in (-1, 2):
        got = kc.embedding_backward(dy, ids, V, padding_idx)
        assert_close(got, ref.embedding_backward(dy, ids, V, padding_idx), dtype, "dW")
    assert not kc.embedding_backward(dy, ids, V, 2)[2].any()
    with pytest.raises(ValueError, match=r"^ids: expected values in \[0, 6\)"):
        kc.embedding_forward(ids + V, W)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_several_tiles(rng, dtype):
    N, In, Out = 17, 18, 33                               # > one 16x16 GEMM tile on every axis
    x, W, b = _a(rng, (N, In), dtype), _a(rng, (Out, In), dtype), _a(rng, (Out,), dtype)
    assert_close(kc.linear_forward(x, W, b), ref.linear_forward(x, W, b), dtype, "y")
    assert_close(kc.linear_forward(x, W, None), ref.linear_forward(x, W, None), dtype, "y, no bias")
    dy = _a(rng, (N, Out), dtype)
    for name, g, g_r in zip(("dx", "dW", "db"), kc.linear_backward(dy, x, W),
                            ref.linear_backward(dy, x, W)):
        assert_close(g, g_r, dtype, name)
    with pytest.raises(ValueError, match=r"^W: expected shape \(\?, 18\), got \(33, 17\)$"):
        kc.linear_forward(x, W[:, :17].copy(), b)


@pytest.mark.parametrize("shape", [(17, 18, 33), (65, 66, 67)], ids=["one-tile", "2x2-tiles"])
def test_linear_register_blocked_gemm(rng, monkeypatch, shape):
    # every product through the (64 x 64)-tile kernel, all three operand layouts (NT, NN, TN)
    monkeypatch.setattr(launch, "GEMM_BLOCKED_MIN", 1)
    monkeypatch.setattr(launch, "COLSUM_CHUNK", 8)        # db: two-pass sum, last chunk partial
    N, In, Out = shape
    dtype = np.float32
    x, W, b = _a(rng, (N, In), dtype), _a(rng, (Out, In), dtype), _a(rng, (Out,), dtype)
    assert_close(kc.linear_forward(x, W, b), ref.linear_forward(x, W, b), dtype, "y")
    dy = _a(rng, (N, Out), dtype)
    for name, g, g_r in zip(("dx", "dW", "db"), kc.linear_backward(dy, x, W),
                            ref.linear_backward(dy, x, W)):
        assert_close(g, g_r, dtype, name)


@pytest.mark.parametrize("mode", ["last", "mean", "max"])
def test_pool(rng, launch_config, mode):
    dtype = np.float32
    B, T, H = 3, 4, launch_config + 1                     # B*H = 3*tpb + 3
    y = _a(rng, (B, T, H), dtype)
    lengths = np.array([4, 1, 3], dtype=np.int64)
    p, idx = kc.pool_forward(y, lengths, mode)
    p_r, idx_r = ref.pool_forward(y, lengths, mode)
    assert_close(p, p_r, dtype, "p")
    np.testing.assert_array_equal(idx, idx_r)
    dp = _a(rng, (B, H), dtype)
    dy = kc.pool_backward(dp, lengths, mode, idx, T)
    assert_close(dy, ref.pool_backward(dp, lengths, mode, idx_r, T), dtype, "dy")
    assert not dy[1, 1:].any()                            # zero at padding
    with pytest.raises(ValueError, match=r"^mode: expected one of"):
        kc.pool_forward(y, lengths, "sum")


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_losses(rng, launch_config, dtype, weighted):
    N = 3 * launch_config + 1                             # rows: the last block is partly full
    w = (rng.random(N) + 0.1).astype(dtype) if weighted else None
    logits, targets = _a(rng, (N, 5), dtype, 3.0), rng.integers(0, 5, size=N).astype(np.int64)
    loss, d = kc.softmax_cross_entropy(logits, targets, w)
    loss_r, d_r = ref.softmax_cross_entropy(logits, targets, w)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    assert_close(d, d_r, dtype, "dlogits (softmax cross-entropy)")

    x, t = _a(rng, (N,), dtype, 4.0), rng.random(N).astype(dtype)
    loss, d = kc.bce_with_logits(x, t, w)
    loss_r, d_r = ref.bce_with_logits(x, t, w)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    assert_close(d, d_r, dtype, "dlogits (bce)")

    pred, target = _a(rng, (N, 2), dtype), _a(rng, (N, 2), dtype)
    loss, d = kc.mse(pred, target, w)
    loss_r, d_r = ref.mse(pred, target, w)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    assert_close(d, d_r, dtype, "dpred (mse)")


def test_loss_rejects_bad_targets(rng):
    logits = _a(rng, (4, 3), np.float32)
    with pytest.raises(ValueError, match=r"^targets: expected class indices in \[0, 3\)"):
        kc.softmax_cross_entropy(logits, np.array([0, 1, 2, 3]), None)
    with pytest.raises(ValueError, match=r"^targets: expected dtype int64, got int32$"):
        kc.softmax_cross_entropy(logits, np.array([0, 1, 2, 0], dtype=np.int32), None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout(rng, launch_config, dtype):
    x = _a(rng, (3, launch_config, 1), dtype)
    x = np.concatenate([x.reshape(-1), _a(rng, (1,), dtype)]).reshape(1, -1)   # 3*tpb + 1
    mask = ((rng.random(x.shape) > 0.4) / 0.6).astype(dtype)
    assert_close(kc.dropout_forward(x, mask), ref.dropout_forward(x, mask), dtype, "forward")
    dy = _a(rng, x.shape, dtype)
    assert_close(kc.dropout_backward(dy, mask), ref.dropout_backward(dy, mask), dtype, "backward")


def test_ops_keep_device_arrays_on_device(rng):
    x, W, b = _a(rng, (5, 4), np.float32), _a(rng, (3, 4), np.float32), _a(rng, (3,), np.float32)
    y = kc.linear_forward(cuda.to_device(x), cuda.to_device(W), cuda.to_device(b))
    assert not isinstance(y, np.ndarray)
    assert_close(y.copy_to_host(), ref.linear_forward(x, W, b), np.float32, "y")
    t = rng.integers(0, 3, size=5).astype(np.int64)
    loss, d = kc.softmax_cross_entropy(y, cuda.to_device(t), None)
    loss_r, d_r = ref.softmax_cross_entropy(ref.linear_forward(x, W, b), t, None)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    assert_close(d.copy_to_host(), d_r, np.float32, "dlogits")


def test_array_helpers_on_device(rng, launch_config):
    """gruengine.arrays on device arrays: the same results as the NumPy path."""
    from gruengine import arrays
    a = _a(rng, (3, launch_config + 1, 2), np.float32)
    b = _a(rng, (3, launch_config + 1, 3), np.float32)
    da, db = cuda.to_device(a), cuda.to_device(b)
    cat = arrays.concat_last([da, db])
    assert arrays.is_device(cat)
    np.testing.assert_array_equal(cat.copy_to_host(), np.concatenate([a, b], axis=-1))
    np.testing.assert_array_equal(arrays.columns(cat, 1, 4).copy_to_host(),
                                  np.concatenate([a, b], axis=-1)[..., 1:4])
    np.testing.assert_array_equal(arrays.add(da, da).copy_to_host(), a + a)
    mask = _a(rng, a.shape, np.float32)
    np.testing.assert_array_equal(arrays.multiply(da, mask).copy_to_host(), a * mask)
    dst = arrays.zeros(a.shape, np.float32, "cuda")
    np.testing.assert_array_equal(dst.copy_to_host(), 0)
    arrays.assign(dst, da)                                 # device -> device
    np.testing.assert_array_equal(dst.copy_to_host(), a)
    arrays.assign(dst[1], b[1, :, :2])                     # host -> a device view
    np.testing.assert_array_equal(dst.copy_to_host()[1], b[1, :, :2])
    arrays.fill_zero(dst)
    np.testing.assert_array_equal(dst.copy_to_host(), 0)
    with pytest.raises(ValueError, match=r"^assign: expected shape"):
        arrays.assign(dst, db)
    with pytest.raises(ValueError, match=r"^x: expected shape \(\?, \?, 5\)"):
        arrays.check("x", da, (None, None, 5))
