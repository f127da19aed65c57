"""Op level: Numba CPU kernels against the NumPy reference, the reference's backward against
central finite differences in float64, torch parity where torch is importable, and the
validating wrappers of gruengine.losses."""

import numpy as np
import pytest

from gruengine import losses
from gruengine.kernels.cpu import ops as K
from gruengine.reference import ops as R
from tests.gradcheck import assert_fd, normal, numeric_grad, random_lengths

DTYPES = (np.float32, np.float64)
# float32 kernels vs float32 reference differ by summation order / float64 internals only
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
POOL_MODES = ("last", "mean", "max")





# ---------------------------------------------------------------- CPU kernels vs reference

@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_kernels_match_reference(rng, dtype):
    V, E, B, T = 11, 5, 3, 7                       # B*T > V: ids repeat
    W = normal(rng, (V, E), dtype)
    ids = rng.integers(0, V, (B, T))
    y = K.embedding_forward(ids, W)
    assert y.dtype == dtype and y.shape == (B, T, E)
    np.testing.assert_array_equal(y, R.embedding_forward(ids, W))
    dy = normal(rng, (B, T, E), dtype)
    for pad in (-1, int(ids[1, 2])):
        dW = K.embedding_backward(dy, ids, V, pad)
        assert dW.dtype == dtype
        np.testing.assert_allclose(dW, R.embedding_backward(dy, ids, V, pad), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_kernels_match_reference(rng, dtype):
    N, In, Out = 9, 7, 5
    x, W, b = normal(rng, (N, In), dtype), normal(rng, (Out, In), dtype), normal(rng, Out, dtype)
    y = K.linear_forward(x, W, b)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, R.linear_forward(x, W, b), **TOL[dtype])
    dy = normal(rng, (N, Out), dtype)
    for got, want in zip(K.linear_backward(dy, x, W), R.linear_backward(dy, x, W)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", POOL_MODES)
def test_pool_kernels_match_reference(rng, dtype, mode):
    B, T, H = 5, 7, 3
    y = normal(rng, (B, T, H), dtype)
    lengths = random_lengths(rng, B, T)
    p, idx = K.pool_forward(y, lengths, mode)
    p_ref, idx_ref = R.pool_forward(y, lengths, mode)
    assert p.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_allclose(p, p_ref, **TOL[dtype])
    np.testing.assert_array_equal(idx, idx_ref)
    dp = normal(rng, (B, H), dtype)
    dy = K.pool_backward(dp, lengths, mode, idx, T)
    assert dy.dtype == dtype
    np.testing.assert_allclose(dy, R.pool_backward(dp, lengths, mode, idx_ref, T), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_kernels_match_reference(rng, dtype, weighted):
    N, C, K_ = 7, 5, 3
    w = rng.uniform(0.1, 2.0, N).astype(dtype) if weighted else None
    logits = (3 * normal(rng, (N, C))).astype(dtype)
    targets = rng.integers(0, C, N)
    x = (5 * normal(rng, N)).astype(dtype)
    t = rng.uniform(0, 1, N).astype(dtype)
    pred, target = normal(rng, (N, K_), dtype), normal(rng, (N, K_), dtype)
    for name, args in (("softmax_cross_entropy", (logits, targets, w)),
                       ("bce_with_logits", (x, t, w)), ("mse", (pred, target, w))):
        loss, d = getattr(K, name)(*args)
        loss_ref, d_ref = getattr(R, name)(*args)
        assert isinstance(loss, float) and d.dtype == dtype and d.shape == args[0].shape
        np.testing.assert_allclose(loss, loss_ref, err_msg=name, **TOL[dtype])
        np.testing.assert_allclose(d, d_ref, err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_stable_at_extreme_logits(rng, dtype):
    big = np.array([[1e4, -1e4, 0.0], [-3e4, 2e4, 1e4]], dtype=dtype)
    big += normal(rng, big.shape, dtype)
    targets = np.array([1, 0])
    for mod in (K, R):
        loss, d = mod.softmax_cross_entropy(big, targets, None)
        assert np.isfinite(loss) and np.isfinite(d).all()
        # the true loss is the margin to the largest logit: huge but finite
        margin = big.max(axis=1) - big[np.arange(2), targets]
        np.testing.assert_allclose(loss, margin.mean(), rtol=1e-6)
        x = np.array([80.0, -80.0, 1e4, -1e4], dtype=dtype) + normal(rng, 4, dtype)
        t = np.array([0.0, 1.0, 1.0, 0.0], dtype=dtype)
        loss, d = mod.bce_with_logits(x, t, None)
        assert np.isfinite(loss) and np.isfinite(d).all()
        want = (abs(x[0]) + abs(x[1])) / 4        # wrong-side logits cost |x|; right-side ~0
        np.testing.assert_allclose(loss, want, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_kernels_match_reference(rng, dtype):
    x = normal(rng, (3, 5, 7), dtype)
    mask = (rng.random(x.shape) >= 0.3).astype(dtype) / dtype(0.7)
    np.testing.assert_array_equal(K.dropout_forward(x, mask), R.dropout_forward(x, mask))
    dy = normal(rng, x.shape, dtype)
    out = K.dropout_backward(dy, mask)
    assert out.shape == x.shape and out.dtype == dtype
    np.testing.assert_array_equal(out, R.dropout_backward(dy, mask))


# ---------------------------------------------------------------- reference backward vs finite differences

def test_embedding_backward_fd(rng):
    V, E, B, T = 6, 3, 2, 5
    W, ids = normal(rng, (V, E)), rng.integers(0, V, (B, T))
    g = normal(rng, (B, T, E))
    numeric = numeric_grad(lambda: float((g * R.embedding_forward(ids, W)).sum()), W)
    assert_fd(R.embedding_backward(g, ids, V, -1), numeric)


def test_linear_backward_fd(rng):
    N, In, Out = 4, 3, 5
    x, W, b = normal(rng, (N, In)), normal(rng, (Out, In)), normal(rng, Out)
    g = normal(rng, (N, Out))
    f = lambda: float((g * R.linear_forward(x, W, b)).sum())  # noqa: E731
    dx, dW, db = R.linear_backward(g, x, W)
    assert_fd(dx, numeric_grad(f, x))
    assert_fd(dW, numeric_grad(f, W))
    assert_fd(db, numeric_grad(f, b))


@pytest.mark.parametrize("mode", POOL_MODES)
def test_pool_backward_fd(rng, mode):
    B, T, H = 3, 5, 4
    y, lengths = normal(rng, (B, T, H)), random_lengths(rng, B, T)
    g = normal(rng, (B, H))
    f = lambda: float((g * R.pool_forward(y, lengths, mode)[0]).sum())  # noqa: E731
    _, idx = R.pool_forward(y, lengths, mode)
    assert_fd(R.pool_backward(g, lengths, mode, idx, T), numeric_grad(f, y))


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_gradients_fd(rng, weighted):
    N, C = 5, 4
    w = rng.uniform(0.1, 2.0, N) if weighted else None
    logits, targets = 2 * normal(rng, (N, C)), rng.integers(0, C, N)
    x, t = 2 * normal(rng, N), rng.uniform(0, 1, N)
    pred, target = normal(rng, (N, 3)), normal(rng, (N, 3))
    for name, args in (("softmax_cross_entropy", (logits, targets, w)),
                       ("bce_with_logits", (x, t, w)), ("mse", (pred, target, w))):
        for mod in (R, K):
            _, d = getattr(mod, name)(*args)
            numeric = numeric_grad(lambda: getattr(mod, name)(*args)[0], args[0])
            assert_fd(d, numeric)


def test_dropout_backward_fd(rng):
    x = normal(rng, (3, 4))
    mask = (rng.random(x.shape) >= 0.5) * 2.0
    g = normal(rng, x.shape)
    numeric = numeric_grad(lambda: float((g * R.dropout_forward(x, mask)).sum()), x)
    assert_fd(R.dropout_backward(g, mask), numeric)
    assert_fd(K.dropout_backward(g, mask), numeric)


# ---------------------------------------------------------------- torch parity

def _torch():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_torch(rng, dtype):
    torch, F = _torch()
    V, E, B, T, pad = 9, 4, 3, 5, 2
    W, ids = normal(rng, (V, E), dtype), rng.integers(0, V, (B, T))
    ids[0, 0] = pad
    dy = normal(rng, (B, T, E), dtype)
    Wt = torch.tensor(W, requires_grad=True)
    yt = F.embedding(torch.tensor(ids), Wt, padding_idx=pad)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(K.embedding_forward(ids, W), yt.detach().numpy())
    np.testing.assert_allclose(K.embedding_backward(dy, ids, V, pad), Wt.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_torch(rng, dtype):
    torch, F = _torch()
    N, In, Out = 6, 5, 3
    x, W, b = normal(rng, (N, In), dtype), normal(rng, (Out, In), dtype), normal(rng, Out, dtype)
    dy = normal(rng, (N, Out), dtype)
    xt, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    yt = F.linear(xt, Wt, bt)
    yt.backward(torch.tensor(dy))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else TOL[dtype]
    np.testing.assert_allclose(K.linear_forward(x, W, b), yt.detach().numpy(), **tol)
    for got, want in zip(K.linear_backward(dy, x, W), (xt.grad, Wt.grad, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_match_torch(rng, dtype):
    torch, F = _torch()
    N, C, K_ = 7, 4, 3
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)

    def torch_loss(fn, a, *rest):
        at = torch.tensor(a, requires_grad=True)
        out = fn(at, *rest)
        out.backward()
        return float(out.detach()), at.grad.numpy()

    logits, targets = 2 * normal(rng, (N, C), dtype), rng.integers(0, C, N)
    class_w = rng.uniform(0.2, 2.0, C).astype(dtype)
    cases = [
        (losses.softmax_cross_entropy(logits, targets),
         torch_loss(F.cross_entropy, logits, torch.tensor(targets))),
        # per-row weight = class weight of the row's target reproduces torch's weighted mean
        (losses.softmax_cross_entropy(logits, targets, class_w[targets]),
         torch_loss(F.cross_entropy, logits, torch.tensor(targets), torch.tensor(class_w))),
    ]
    x, t = 3 * normal(rng, N, dtype), rng.uniform(0, 1, N).astype(dtype)
    cases.append((losses.bce_with_logits(x, t),
                  torch_loss(F.binary_cross_entropy_with_logits, x, torch.tensor(t))))
    xk, tk = normal(rng, (N, K_), dtype), (rng.random((N, K_)) > 0.5).astype(dtype)
    cases.append((losses.bce_with_logits(xk, tk),
                  torch_loss(F.binary_cross_entropy_with_logits, xk, torch.tensor(tk))))
    pred, target = normal(rng, (N, K_), dtype), normal(rng, (N, K_), dtype)
    cases.append((losses.mse(pred, target), torch_loss(F.mse_loss, pred, torch.tensor(target))))
    for (loss, d), (loss_t, d_t) in cases:
        np.testing.assert_allclose(loss, loss_t, **tol)
        np.testing.assert_allclose(d, d_t, **tol)


def test_weighted_bce_is_torch_sum_over_weight_sum(rng):
    # torch divides sum(w * l) by N; ours is a weighted mean, dividing by sum(w)
    torch, F = _torch()
    N = 6
    x, t, w = 2 * normal(rng, N), rng.uniform(0, 1, N), rng.uniform(0.1, 3.0, N)
    loss_t = float(F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(t),
                                                      weight=torch.tensor(w)))
    np.testing.assert_allclose(losses.bce_with_logits(x, t, w)[0], loss_t * N / w.sum(), rtol=1e-12)


# ---------------------------------------------------------------- losses: wrappers and validation

def test_loss_wrappers_match_kernels_for_1d_and_2d(rng):
    N, K_ = 6, 3
    w = rng.uniform(0.1, 2.0, N)
    xk, tk = normal(rng, (N, K_)), rng.uniform(0, 1, (N, K_))
    loss, d = losses.bce_with_logits(xk, tk, w)
    loss_ref, d_ref = R.bce_with_logits(xk.ravel(), tk.ravel(), np.repeat(w, K_))
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    np.testing.assert_allclose(d, d_ref.reshape(N, K_), rtol=1e-12, atol=1e-15)
    p, t = normal(rng, N), normal(rng, N)
    loss, d = losses.mse(p, t, w)
    loss_ref, d_ref = R.mse(p[:, None], t[:, None], w)
    assert d.shape == (N,)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    np.testing.assert_allclose(d, d_ref[:, 0], rtol=1e-12, atol=1e-15)


def test_accuracy_against_counting(rng):
    N, C = 40, 5
    logits, targets = normal(rng, (N, C)), rng.integers(0, C, N)
    hits = [int(np.argmax(logits[i]) == targets[i]) for i in range(N)]
    assert losses.accuracy(logits, targets) == pytest.approx(sum(hits) / N)
    w = rng.uniform(0.1, 2.0, N)
    assert losses.accuracy(logits, targets, w) == pytest.approx(np.dot(w, hits) / w.sum())
    x, y = normal(rng, N), rng.integers(0, 2, N)
    hits = [int((x[i] > 0) == (y[i] == 1)) for i in range(N)]
    assert losses.accuracy(x, y) == pytest.approx(sum(hits) / N)
    assert losses.accuracy(x[:, None], y.astype(np.float64)) == pytest.approx(sum(hits) / N)


@pytest.mark.parametrize("call, name", [
    (lambda r: losses.softmax_cross_entropy(r((4, 3)), np.array([0, 1, 3, 2])), "targets"),
    (lambda r: losses.softmax_cross_entropy(r((4, 3)), np.array([0, -1, 2, 2])), "targets"),
    (lambda r: losses.softmax_cross_entropy(r((4, 3)), np.array([0., 1, 2, 2])), "targets"),
    (lambda r: losses.softmax_cross_entropy(r((4, 3)), np.array([0, 1, 2])), "targets"),
    (lambda r: losses.softmax_cross_entropy(r(4), np.array([0, 1, 2, 2])), "logits"),
    (lambda r: losses.softmax_cross_entropy(r((4, 3)).astype(np.float16), np.zeros(4, int)), "logits"),
    (lambda r: losses.softmax_cross_entropy(np.where(r((4, 3)) > 0, np.nan, 1.0), np.zeros(4, int)),
     "logits"),
    (lambda r: losses.softmax_cross_entropy(r((4, 3)), np.zeros(4, int), -r(4) ** 2), "weight"),
    (lambda r: losses.softmax_cross_entropy(r((4, 3)), np.zeros(4, int), np.zeros(4)), "weight"),
    (lambda r: losses.softmax_cross_entropy(r((4, 3)), np.zeros(4, int), r(4).astype(np.float32)),
     "weight"),
    (lambda r: losses.bce_with_logits(r(4), r(4) ** 2 + 1.5), "targets"),
    (lambda r: losses.bce_with_logits(r(4), np.full(4, 0.5, np.float32)), "targets"),
    (lambda r: losses.bce_with_logits(r(4), np.full(5, 0.5)), "targets"),
    (lambda r: losses.mse(r((4, 2)), r((4, 3))), "target"),
    (lambda r: losses.mse([1.0, 2.0], r(2)), "pred"),
    (lambda r: losses.mse(r((4, 2)), r((4, 2)), r(3) ** 2 + 1), "weight"),
])
def test_loss_validation_names_the_argument(rng, call, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        call(lambda shape: rng.standard_normal(shape))
