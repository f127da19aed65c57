"""Modules Embedding, Linear, Pool, Dropout: values against NumPy, gradients against central
finite differences in float64, the module API (params/grads in place, state_dict, train/eval),
torch parity where torch is importable, and validation messages naming the argument."""

import numpy as np
import pytest

import gruengine
from gruengine.layers import Dropout, Embedding, Linear, Pool, dropout_mask
from tests.gradcheck import assert_fd, normal, numeric_grad, random_lengths

DTYPES = (np.float32, np.float64)
POOL_MODES = ("last", "mean", "max")





def test_package_exports():
    assert gruengine.Embedding is Embedding and gruengine.Linear is Linear
    assert gruengine.Pool is Pool and gruengine.Dropout is Dropout
    assert callable(gruengine.losses.softmax_cross_entropy)


# ---------------------------------------------------------------- Embedding

@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_init_and_forward(rng, dtype):
    V, E = 301, 40
    emb = Embedding(V, E, padding_idx=3, dtype=dtype, seed=int(rng.integers(2**31)))
    W = emb.params["weight"]
    assert W.shape == (V, E) and W.dtype == dtype
    assert not W[3].any()
    rest = np.delete(W, 3, axis=0).astype(np.float64)
    # N(0, 1): 12,000 draws put the sample mean within ~0.01 and the std within ~0.007
    assert abs(rest.mean()) < 0.05 and abs(rest.std() - 1) < 0.05
    ids = rng.integers(0, V, (3, 7))
    y = emb.forward(ids)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, W[ids])


def test_embedding_seed_reproducible(rng):
    seed = int(rng.integers(2**31))
    a, b, c = Embedding(13, 5, seed=seed), Embedding(13, 5, seed=seed), Embedding(13, 5, seed=seed + 1)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    assert not np.array_equal(a.params["weight"], c.params["weight"])


def test_embedding_backward_fd(rng):
    V, E, B, T = 7, 3, 3, 5                          # 15 ids over 7 rows: repeats
    emb = Embedding(V, E, dtype=np.float64, seed=int(rng.integers(2**31)))
    ids, g = rng.integers(0, V, (B, T)), normal(rng, (B, T, E))
    numeric = numeric_grad(lambda: float((g * emb.forward(ids)).sum()), emb.params["weight"])
    emb.forward(ids)
    assert emb.backward(g) is None
    assert_fd(emb.grads["weight"], numeric)


@pytest.mark.parametrize("padding_idx", [2, -1])
def test_embedding_padding_row_gets_no_gradient(rng, padding_idx):
    V, E, B, T = 6, 4, 3, 5
    emb = Embedding(V, E, padding_idx=padding_idx, dtype=np.float64, seed=int(rng.integers(2**31)))
    pad = padding_idx % V
    ids = rng.integers(0, V, (B, T))
    ids[0, :2] = pad                                 # the padding id is certainly present
    g = normal(rng, (B, T, E))
    emb.params["weight"][pad] = normal(rng, E)       # even a non-zero padding row stays frozen
    numeric = numeric_grad(lambda: float((g * emb.forward(ids)).sum()), emb.params["weight"])
    emb.forward(ids)
    emb.backward(g)
    dW = emb.grads["weight"]
    assert not dW[pad].any() and np.abs(numeric[pad]).max() > 0
    keep = np.arange(V) != pad
    assert_fd(dW[keep], numeric[keep])


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_torch_module(rng, dtype):
    torch = pytest.importorskip("torch")
    V, E, B, T, pad = 10, 6, 4, 5, 0
    emb = Embedding(V, E, padding_idx=pad, dtype=dtype, seed=int(rng.integers(2**31)))
    ref = torch.nn.Embedding(V, E, padding_idx=pad).to(torch.float64 if dtype == np.float64
                                                        else torch.float32)
    ref.load_state_dict({k: torch.tensor(v) for k, v in emb.state_dict().items()})
    ids = rng.integers(0, V, (B, T))
    ids[1, 1] = pad
    dy = normal(rng, (B, T, E), dtype)
    out = ref(torch.tensor(ids))
    out.backward(torch.tensor(dy))
    np.testing.assert_array_equal(emb.forward(ids), out.detach().numpy())
    emb.backward(dy)
    np.testing.assert_allclose(emb.grads["weight"], ref.weight.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_embedding_validation(rng):
    emb = Embedding(5, 3, seed=0)
    with pytest.raises(ValueError, match=r"^ids: .*got 5$"):
        emb.forward(np.array([[0, 5]]))
    with pytest.raises(ValueError, match=r"^ids: .*got -2$"):
        emb.forward(np.array([[-2, 1]]))
    with pytest.raises(ValueError, match=r"^ids: .*integer"):
        emb.forward(np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"^ids: "):
        emb.forward(np.array([0, 1]))
    with pytest.raises(ValueError, match=r"^padding_idx: "):
        Embedding(5, 3, padding_idx=5)
    with pytest.raises(ValueError, match=r"^num_embeddings: "):
        Embedding(0, 3)
    with pytest.raises(ValueError, match=r"^dtype: "):
        Embedding(5, 3, dtype=np.float16)
    with pytest.raises(ValueError, match=r"^device: "):
        Embedding(5, 3, device="tpu")
    with pytest.raises(RuntimeError):
        emb.backward(normal(rng, (1, 2, 3), np.float32))
    emb.forward(np.array([[0, 4]], dtype=np.int32))   # other integer dtypes are fine
    with pytest.raises(ValueError, match=r"^dy: "):
        emb.backward(normal(rng, (1, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"^dy: "):
        emb.backward(normal(rng, (1, 2, 3), np.float64))


# ---------------------------------------------------------------- Linear

@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_init_and_forward_any_leading_dims(rng, dtype):
    In, Out = 37, 23
    lin = Linear(In, Out, dtype=dtype, seed=int(rng.integers(2**31)))
    W, b = lin.params["weight"], lin.params["bias"]
    bound = 1 / np.sqrt(In)
    assert W.shape == (Out, In) and b.shape == (Out,) and W.dtype == b.dtype == dtype
    assert np.abs(W).max() <= bound and np.abs(b).max() <= bound
    # uniform(-a, a) has std a/sqrt(3); 851 draws put the sample std within a few percent
    assert abs(W.std() / (bound / np.sqrt(3)) - 1) < 0.1
    for shape in [(5, In), (2, 3, In), (In,)]:
        x = normal(rng, shape, dtype)
        y = lin.forward(x)
        assert y.shape == shape[:-1] + (Out,) and y.dtype == dtype
        tol = 1e-5 if dtype == np.float32 else 1e-12
        want = x.astype(np.float64) @ W.T.astype(np.float64) + b
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_fd(rng, bias):
    In, Out = 4, 3
    lin = Linear(In, Out, bias=bias, dtype=np.float64, seed=int(rng.integers(2**31)))
    assert ("bias" in lin.params) == bias and set(lin.grads) == set(lin.params)
    x, g = normal(rng, (2, 3, In)), normal(rng, (2, 3, Out))
    f = lambda: float((g * lin.forward(x)).sum())  # noqa: E731
    numeric = {k: numeric_grad(f, v) for k, v in lin.params.items()}
    numeric_x = numeric_grad(f, x)
    lin.forward(x)
    dx = lin.backward(g)
    assert dx.shape == x.shape
    assert_fd(dx, numeric_x)
    for k in lin.params:
        assert_fd(lin.grads[k], numeric[k])
    if not bias:
        np.testing.assert_allclose(lin.forward(x), x @ lin.params["weight"].T, rtol=1e-12)


def test_linear_reads_params_and_writes_grads_in_place(rng):
    # a ParamBuffer re-points params/grads to views of flat arrays: both must be honoured
    lin = Linear(5, 3, dtype=np.float64, seed=int(rng.integers(2**31)))
    flat_p, flat_g = np.empty(18), np.full(18, np.nan)
    for name, (lo, hi) in {"weight": (0, 15), "bias": (15, 18)}.items():
        shape = lin.params[name].shape
        flat_p[lo:hi] = lin.params[name].ravel()
        lin.params[name] = flat_p[lo:hi].reshape(shape)
        lin.grads[name] = flat_g[lo:hi].reshape(shape)
    flat_p += 0.5                                     # an optimizer step on the flat buffer
    x, g = normal(rng, (4, 5)), normal(rng, (4, 3))
    np.testing.assert_allclose(lin.forward(x), x @ lin.params["weight"].T + lin.params["bias"],
                               rtol=1e-12)
    lin.backward(g)
    np.testing.assert_allclose(flat_g[:15].reshape(3, 5), g.T @ x, rtol=1e-12)
    np.testing.assert_allclose(flat_g[15:], g.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_torch_module(rng, dtype):
    torch = pytest.importorskip("torch")
    In, Out = 6, 4
    lin = Linear(In, Out, dtype=dtype, seed=int(rng.integers(2**31)))
    ref = torch.nn.Linear(In, Out).to(torch.float64 if dtype == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.tensor(v) for k, v in lin.state_dict().items()})
    x, dy = normal(rng, (3, 2, In), dtype), normal(rng, (3, 2, Out), dtype)
    xt = torch.tensor(x, requires_grad=True)
    out = ref(xt)
    out.backward(torch.tensor(dy))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lin.forward(x), out.detach().numpy(), **tol)
    np.testing.assert_allclose(lin.backward(dy), xt.grad.numpy(), **tol)
    np.testing.assert_allclose(lin.grads["weight"], ref.weight.grad.numpy(), **tol)
    np.testing.assert_allclose(lin.grads["bias"], ref.bias.grad.numpy(), **tol)


def test_linear_validation(rng):
    lin = Linear(4, 3, seed=0)
    with pytest.raises(ValueError, match=r"^x: "):
        lin.forward(normal(rng, (2, 5), np.float32))
    with pytest.raises(ValueError, match=r"^x: "):
        lin.forward(normal(rng, (2, 4), np.float64))
    with pytest.raises(ValueError, match=r"^x: "):
        lin.forward([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match=r"^x: .*NaN"):
        lin.forward(np.full((2, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"^in_features: "):
        Linear(0, 3)
    lin.forward(normal(rng, (2, 4), np.float32))
    with pytest.raises(ValueError, match=r"^dy: "):
        lin.backward(normal(rng, (3, 3), np.float32))


# ---------------------------------------------------------------- Pool

@pytest.mark.parametrize("mode", POOL_MODES)
def test_pool_forward_against_numpy(rng, mode):
    B, T, H = 5, 6, 3
    y, lengths = normal(rng, (B, T, H), np.float32), random_lengths(rng, B, T)
    p = Pool(mode).forward(y, lengths)
    assert p.shape == (B, H) and p.dtype == np.float32
    for b in range(B):
        valid = y[b, :lengths[b]]
        want = {"last": valid[-1], "mean": valid.mean(axis=0), "max": valid.max(axis=0)}[mode]
        np.testing.assert_allclose(p[b], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(Pool(mode).forward(y), Pool(mode).forward(y, np.full(B, T)))


@pytest.mark.parametrize("mode", POOL_MODES)
def test_pool_backward_fd(rng, mode):
    B, T, H = 3, 5, 4
    pool = Pool(mode)
    y, lengths, g = normal(rng, (B, T, H)), random_lengths(rng, B, T), normal(rng, (B, H))
    numeric = numeric_grad(lambda: float((g * pool.forward(y, lengths)).sum()), y)
    pool.forward(y, lengths)
    assert_fd(pool.backward(g), numeric)
    assert pool.params == {} and pool.grads == {} and pool.state_dict() == {}


@pytest.mark.parametrize("mode", POOL_MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_ignores_padding(rng, mode, dtype):
    B, T, H = 4, 7, 5
    y, lengths = normal(rng, (B, T, H), dtype), random_lengths(rng, B, T)
    pad = np.arange(T)[None, :] >= lengths[:, None]               # (B, T)
    y2 = y.copy()
    y2[pad] = 100 * normal(rng, (int(pad.sum()), H), dtype)       # large: would win any max
    dp = normal(rng, (B, H), dtype)
    pool, pool2 = Pool(mode), Pool(mode)
    np.testing.assert_array_equal(pool.forward(y, lengths), pool2.forward(y2, lengths))
    dy, dy2 = pool.backward(dp), pool2.backward(dp)
    np.testing.assert_array_equal(dy, dy2)
    assert not dy[pad].any() and dy.dtype == dtype


def test_pool_validation(rng):
    with pytest.raises(ValueError, match=r"^mode: "):
        Pool("sum")
    pool = Pool("mean")
    y = normal(rng, (2, 3, 4))
    with pytest.raises(ValueError, match=r"^lengths: "):
        pool.forward(y, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"^lengths: "):
        pool.forward(y, np.array([1, 4]))
    with pytest.raises(ValueError, match=r"^y: "):
        pool.forward(y[0], np.array([1, 2]))
    with pytest.raises(ValueError, match=r"^y: "):
        pool.forward(y.astype(np.int64))
    pool.forward(y)
    with pytest.raises(ValueError, match=r"^dp: "):
        pool.backward(normal(rng, (2, 3)))


# ---------------------------------------------------------------- Dropout

def test_dropout_mask_values_and_rate(rng):
    p = 0.3
    mask = dropout_mask((300, 200), p, rng, np.float32)
    assert mask.dtype == np.float32 and mask.shape == (300, 200)
    scale = np.float32(1 / (1 - p))
    assert np.isin(mask, [0, scale]).all()
    # 60,000 draws: the mean's std is sqrt(p/(1-p))/sqrt(n) ~ 0.003; allow 6 sigma
    assert abs(mask.mean() - 1) < 0.02
    assert abs((mask == 0).mean() - p) < 0.012


def test_dropout_same_seed_same_mask(rng):
    seed = int(rng.integers(2**31))
    x = normal(rng, (4, 6, 5))
    a, b, c = Dropout(0.5, seed=seed), Dropout(0.5, seed=seed), Dropout(0.5, seed=seed + 1)
    ya, yb, yc = a.forward(x), b.forward(x), c.forward(x)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    assert not np.array_equal(ya, a.forward(x))        # a new mask on every forward


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_backward_uses_the_forward_mask(rng, dtype):
    p = 0.4
    drop = Dropout(p, seed=int(rng.integers(2**31)))
    x = normal(rng, (5, 7, 3), dtype)
    y = drop.forward(x)
    assert y.dtype == dtype
    kept = y != 0
    assert 0 < kept.sum() < x.size
    np.testing.assert_allclose(y[kept], x[kept] / dtype(1 - p), rtol=1e-6)
    dy = normal(rng, x.shape, dtype)
    dx = drop.backward(dy)
    assert not dx[~kept].any()
    np.testing.assert_allclose(dx[kept], dy[kept] / dtype(1 - p), rtol=1e-6)


def test_dropout_eval_and_p0_are_identity(rng):
    x, dy = normal(rng, (3, 4)), normal(rng, (3, 4))
    drop = Dropout(0.5, seed=1).eval()
    assert not drop.training
    np.testing.assert_array_equal(drop.forward(x), x)
    np.testing.assert_array_equal(drop.backward(dy), dy)
    drop.train()
    assert drop.training and (drop.forward(x) == 0).any()
    p0 = Dropout(0.0, seed=1)
    np.testing.assert_array_equal(p0.forward(x), x)
    np.testing.assert_array_equal(p0.backward(dy), dy)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "0.5", None])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"^p: "):
        Dropout(p)


# ---------------------------------------------------------------- state_dict, devices

def test_state_dict_round_trip_and_validation(rng):
    lin = Linear(4, 3, seed=int(rng.integers(2**31)))
    sd = lin.state_dict()
    sd["weight"][...] = 7                               # a copy: the module is untouched
    assert not (lin.params["weight"] == 7).any()
    weight = lin.params["weight"]
    new = {k: normal(rng, v.shape, np.float32) for k, v in lin.params.items()}
    lin.load_state_dict(new)
    assert lin.params["weight"] is weight               # loaded in place
    for k in new:
        np.testing.assert_array_equal(lin.params[k], new[k])
    with pytest.raises(ValueError, match=r"^state_dict: .*missing \['bias'\]"):
        lin.load_state_dict({"weight": new["weight"]})
    with pytest.raises(ValueError, match=r"^state_dict\['weight'\]: "):
        lin.load_state_dict({"weight": new["weight"].T.copy(), "bias": new["bias"]})
    with pytest.raises(ValueError, match=r"^state_dict\['bias'\]: "):
        lin.load_state_dict({"weight": new["weight"], "bias": new["bias"].astype(np.float64)})


def test_reference_device_agrees_with_cpu(rng):
    seed = int(rng.integers(2**31))
    ids = rng.integers(0, 9, (3, 4))
    a = Embedding(9, 5, padding_idx=1, dtype=np.float64, seed=seed)
    b = Embedding(9, 5, padding_idx=1, dtype=np.float64, seed=seed, device="reference")
    np.testing.assert_array_equal(a.forward(ids), b.forward(ids))
    dy = normal(rng, (3, 4, 5))
    a.backward(dy)
    b.backward(dy)
    np.testing.assert_allclose(a.grads["weight"], b.grads["weight"], rtol=1e-12, atol=1e-14)
