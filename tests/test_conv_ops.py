"""The front end's ops (conv1d, layer_norm, relu): the NumPy reference against PyTorch and
central finite differences (float64), the Numba kernels against the reference on fresh
random odd sizes, and the padding contract (what padding holds changes nothing, a row's
outputs do not depend on the rest of its batch)."""
import numpy as np
import pytest

from gruengine.kernels.cpu import conv as K
from gruengine.reference import conv as R
from tests.gradcheck import assert_fd, normal, numeric_grad, random_lengths

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}


def _odd(rng, lo, hi):
    return int(rng.integers(lo, hi)) | 1


def _conv_case(rng, dtype, stride=1, K_=None):
    B, T = int(rng.integers(2, 5)), _odd(rng, 5, 14)
    Cin, Cout = _odd(rng, 1, 6), _odd(rng, 1, 6)
    k = K_ if K_ is not None else _odd(rng, 1, 8)
    x = normal(rng, (B, T, Cin), dtype)
    W = normal(rng, (Cout, Cin, k), dtype)
    b = normal(rng, Cout, dtype)
    return x, W, b, random_lengths(rng, B, T)


def _scramble_padding(rng, x, lengths):
    x = x.copy()
    for b, L in enumerate(lengths):
        x[b, L:] = rng.standard_normal(x[b, L:].shape) * 1e3
    return x


# ---------------------------------------------------------------- reference vs torch

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - torch is an optional test dependency
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


@needs_torch
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("K_", [1, 3, 4, 7])
def test_conv1d_matches_torch_on_each_row_alone(rng, stride, K_):
    x, W, b, lengths = _conv_case(rng, np.float64, stride, K_)
    y = R.conv1d_forward(x, W, b, lengths, stride)
    pad = (K_ - 1) // 2
    for row, L in enumerate(lengths):
        xt = torch.tensor(x[row:row + 1, :L].transpose(0, 2, 1))        # (1, Cin, L)
        xt = TF.pad(xt, (pad, K_ - 1 - pad))
        want = TF.conv1d(xt, torch.tensor(W), torch.tensor(b), stride=stride)[0].T.numpy()
        L_out = -(-L // stride)
        np.testing.assert_allclose(y[row, :L_out], want[:L_out], rtol=1e-12, atol=1e-12)
        assert not y[row, L_out:].any()


@needs_torch
def test_conv1d_backward_matches_torch_autograd(rng):
    x, W, b, lengths = _conv_case(rng, np.float64, 2, 5)
    lengths[:] = x.shape[1]
    dy_shape = R.conv1d_forward(x, W, b, lengths, 2).shape
    dy = normal(rng, dy_shape)
    xt = torch.tensor(x.transpose(0, 2, 1), requires_grad=True)
    Wt, bt = torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)
    out = TF.conv1d(TF.pad(xt, (2, 2)), Wt, bt, stride=2)
    (out * torch.tensor(dy.transpose(0, 2, 1))).sum().backward()
    dx, dW, db = R.conv1d_backward(dy, x, W, lengths, 2)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 1), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dW, Wt.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-11, atol=1e-12)


@needs_torch
def test_layer_norm_matches_torch(rng):
    B, T, C = 3, _odd(rng, 3, 10), _odd(rng, 3, 10)
    x = normal(rng, (B, T, C)) * 3 + 1
    gamma, beta = normal(rng, C), normal(rng, C)
    lengths = np.full(B, T, dtype=np.int64)
    y, _, _ = R.layer_norm_forward(x, gamma, beta, lengths, 1e-5)
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    out = TF.layer_norm(xt, (C,), gt, bt, 1e-5)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    dy = normal(rng, (B, T, C))
    (out * torch.tensor(dy)).sum().backward()
    _, mean, rstd = R.layer_norm_forward(x, gamma, beta, lengths, 1e-5)
    dx, dg, db = R.layer_norm_backward(dy, x, gamma, mean, rstd, lengths)
    for got, want in ((dx, xt.grad), (dg, gt.grad), (db, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-11)


@needs_torch
def test_relu_matches_torch(rng):
    x = normal(rng, (3, 5, 7))
    xt = torch.tensor(x, requires_grad=True)
    out = torch.relu(xt)
    dy = normal(rng, x.shape)
    (out * torch.tensor(dy)).sum().backward()
    y = R.relu_forward(x)
    np.testing.assert_array_equal(y, out.detach().numpy())
    np.testing.assert_array_equal(R.relu_backward(dy, y), xt.grad.numpy())


# ---------------------------------------------------------------- reference vs finite differences

@pytest.mark.parametrize("stride", [1, 2])
def test_conv1d_backward_matches_finite_differences(rng, stride):
    x, W, b, lengths = _conv_case(rng, np.float64, stride)
    dy = normal(rng, R.conv1d_forward(x, W, b, lengths, stride).shape)

    def loss():
        return float((R.conv1d_forward(x, W, b, lengths, stride) * dy).sum())

    dx, dW, db = R.conv1d_backward(dy, x, W, lengths, stride)
    for g, a in ((dx, x), (dW, W), (db, b)):
        assert_fd(g, numeric_grad(loss, a))
    assert not any(dx[row, L:].any() for row, L in enumerate(lengths))


def test_layer_norm_backward_matches_finite_differences(rng):
    B, T, C = 3, 5, _odd(rng, 3, 8)
    x = normal(rng, (B, T, C))
    gamma, beta = normal(rng, C), normal(rng, C)
    lengths = random_lengths(rng, B, T)
    dy = normal(rng, (B, T, C))

    def loss():
        return float((R.layer_norm_forward(x, gamma, beta, lengths)[0] * dy).sum())

    _, mean, rstd = R.layer_norm_forward(x, gamma, beta, lengths)
    dx, dg, db = R.layer_norm_backward(dy, x, gamma, mean, rstd, lengths)
    for g, a in ((dx, x), (dg, gamma), (db, beta)):
        np.testing.assert_allclose(g, numeric_grad(loss, a), rtol=1e-6, atol=1e-7)


def test_relu_backward_matches_finite_differences(rng):
    x = normal(rng, (4, 6))
    x[np.abs(x) < 1e-3] = 0.5                          # keep away from the kink
    dy = normal(rng, x.shape)
    dx = R.relu_backward(dy, R.relu_forward(x))
    assert_fd(dx, numeric_grad(lambda: float((R.relu_forward(x) * dy).sum()), x))


# ---------------------------------------------------------------- padding contract

@pytest.mark.parametrize("mod", [R, K], ids=["reference", "cpu"])
def test_conv1d_ignores_padding_and_the_rest_of_the_batch(rng, mod):
    x, W, b, lengths = _conv_case(rng, np.float64, 2, 5)
    y = mod.conv1d_forward(x, W, b, lengths, 2)
    np.testing.assert_array_equal(mod.conv1d_forward(_scramble_padding(rng, x, lengths), W, b,
                                                     lengths, 2), y)
    for row, L in enumerate(lengths):
        alone = mod.conv1d_forward(np.ascontiguousarray(x[row:row + 1, :L]), W, b, lengths[row:row + 1], 2)
        np.testing.assert_allclose(y[row, :alone.shape[1]], alone[0], rtol=1e-12, atol=1e-12)
    dy = normal(rng, y.shape)
    g1 = mod.conv1d_backward(dy, x, W, lengths, 2)
    g2 = mod.conv1d_backward(dy, _scramble_padding(rng, x, lengths), W, lengths, 2)
    for a, c in zip(g1, g2):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mod", [R, K], ids=["reference", "cpu"])
def test_layer_norm_zero_at_padding_and_no_gradient_from_it(rng, mod):
    B, T, C = 4, 6, 5
    x, gamma, beta = normal(rng, (B, T, C)), normal(rng, C), normal(rng, C)
    lengths = random_lengths(rng, B, T)
    y, mean, rstd = mod.layer_norm_forward(x, gamma, beta, lengths)
    valid = np.arange(T)[None, :] < lengths[:, None]
    assert not y[~valid].any()
    y2, _, _ = mod.layer_norm_forward(_scramble_padding(rng, x, lengths), gamma, beta, lengths)
    np.testing.assert_array_equal(y2, y)
    dy = normal(rng, (B, T, C))
    dx, dg, db = mod.layer_norm_backward(dy, x, gamma, mean, rstd, lengths)
    assert not dx[~valid].any()
    np.testing.assert_allclose(db, dy[valid].sum(axis=0), rtol=1e-12)


def test_layer_norm_of_a_constant_step_is_finite(rng):
    x = np.full((2, 3, 4), 7.0)
    y, mean, rstd = K.layer_norm_forward(x, np.ones(4), np.zeros(4), np.array([3, 2]))
    assert np.isfinite(y).all() and np.isfinite(rstd).all() and not y.any()


# ---------------------------------------------------------------- CPU kernels vs reference

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv1d_kernels_match_reference(rng, dtype, stride):
    x, W, b, lengths = _conv_case(rng, dtype, stride)
    y = K.conv1d_forward(x, W, b, lengths, stride)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, R.conv1d_forward(x, W, b, lengths, stride), **TOL[dtype])
    np.testing.assert_allclose(K.conv1d_forward(x, W, None, lengths, stride),
                               R.conv1d_forward(x, W, None, lengths, stride), **TOL[dtype])
    dy = normal(rng, y.shape, dtype)
    for got, want in zip(K.conv1d_backward(dy, x, W, lengths, stride),
                         R.conv1d_backward(dy, x, W, lengths, stride)):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_kernels_match_reference(rng, dtype):
    B, T, C = _odd(rng, 2, 6), _odd(rng, 3, 9), _odd(rng, 3, 12)
    x = normal(rng, (B, T, C), dtype) * 2 + 0.5
    gamma, beta = normal(rng, C, dtype), normal(rng, C, dtype)
    lengths = random_lengths(rng, B, T)
    got = K.layer_norm_forward(x, gamma, beta, lengths)
    want = R.layer_norm_forward(x, gamma, beta, lengths)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, **TOL[dtype])
    dy = normal(rng, (B, T, C), dtype)
    for g, w in zip(K.layer_norm_backward(dy, x, gamma, *want[1:], lengths),
                    R.layer_norm_backward(dy, x, gamma, *want[1:], lengths)):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_kernels_match_reference(rng, dtype):
    x = normal(rng, (3, _odd(rng, 3, 9), 5), dtype)
    y = K.relu_forward(x)
    np.testing.assert_array_equal(y, R.relu_forward(x))
    dy = normal(rng, x.shape, dtype)
    np.testing.assert_array_equal(K.relu_backward(dy, y), R.relu_backward(dy, y))


# ---------------------------------------------------------------- batch norm

def _bn_case(rng, dtype, B=None, T=None, C=None):
    B = B or _odd(rng, 2, 6)
    T = T or _odd(rng, 3, 10)
    C = C or _odd(rng, 1, 8)
    x = (normal(rng, (B, T, C), dtype) * 2 + 0.7).astype(dtype)
    gamma, beta = normal(rng, C, dtype), normal(rng, C, dtype)
    return x, gamma, beta, random_lengths(rng, B, T)


def _bn(mod, x, gamma, beta, lengths, eps=1e-5):
    mean, var = mod.batch_norm_stats(x, lengths)
    rstd = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(x.dtype)
    return mod.batch_norm_forward(x, gamma, beta, mean, rstd, lengths), mean, rstd


@needs_torch
def test_batch_norm_matches_torch_on_the_valid_steps(rng):
    x, gamma, beta, lengths = _bn_case(rng, np.float64)
    y, mean, rstd = _bn(R, x, gamma, beta, lengths)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    # batch norm over the valid steps = torch's over their concatenation (1, C, N)
    xt = torch.tensor(x[valid].T[None], requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    rm, rv = torch.zeros(x.shape[2], dtype=torch.float64), torch.ones(x.shape[2], dtype=torch.float64)
    out = TF.batch_norm(xt, rm, rv, gt, bt, training=True, momentum=1.0, eps=1e-5)
    np.testing.assert_allclose(y[valid], out[0].T.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert not y[~valid].any()
    n = valid.sum()
    np.testing.assert_allclose(rv.numpy(), (1 / rstd ** 2 - 1e-5) * n / (n - 1), rtol=1e-9)
    dy = normal(rng, x.shape)
    (out * torch.tensor(dy[valid].T[None])).sum().backward()
    dx, dg, db = R.batch_norm_backward(dy, x, gamma, mean, rstd, lengths)
    np.testing.assert_allclose(dx[valid], xt.grad[0].T.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-9, atol=1e-11)
    assert not dx[~valid].any()


@pytest.mark.parametrize("batch_stats", [True, False])
def test_batch_norm_backward_matches_finite_differences(rng, batch_stats):
    x, gamma, beta, lengths = _bn_case(rng, np.float64, B=3, T=4, C=3)
    dy = normal(rng, x.shape)
    _, mean0, rstd0 = _bn(R, x, gamma, beta, lengths)

    def loss():
        if batch_stats:       # the statistics follow x
            y = _bn(R, x, gamma, beta, lengths)[0]
        else:                 # frozen statistics (eval mode)
            y = R.batch_norm_forward(x, gamma, beta, mean0, rstd0, lengths)
        return float((y * dy).sum())

    dx, dg, db = R.batch_norm_backward(dy, x, gamma, mean0, rstd0, lengths, batch_stats)
    for g, a in ((dx, x), (dg, gamma), (db, beta)):
        np.testing.assert_allclose(g, numeric_grad(loss, a), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_stats", [True, False])
def test_batch_norm_kernels_match_reference(rng, dtype, batch_stats):
    x, gamma, beta, lengths = _bn_case(rng, dtype)
    for got, want in zip(K.batch_norm_stats(x, lengths), R.batch_norm_stats(x, lengths)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])
    y, mean, rstd = _bn(R, x, gamma, beta, lengths)
    got = K.batch_norm_forward(x, gamma, beta, mean, rstd, lengths)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, y, **TOL[dtype])
    np.testing.assert_array_equal(
        K.batch_norm_forward(_scramble_padding(rng, x, lengths), gamma, beta, mean, rstd, lengths), got)
    dy = normal(rng, x.shape, dtype)
    for g, w in zip(K.batch_norm_backward(dy, x, gamma, mean, rstd, lengths, batch_stats),
                    R.batch_norm_backward(dy, x, gamma, mean, rstd, lengths, batch_stats)):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, **TOL[dtype])
