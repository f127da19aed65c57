"""Optimizers and clipping: Numba kernels vs the NumPy reference, the classes vs textbook
formulas and vs torch.optim (when importable), the flat and dict paths, state_dict
round trips, determinism and validation.

Run: NUMBA_NUM_THREADS=2 python -m pytest tests/test_optim.py -q -x
"""
import inspect
import json
import math

import numba
import numpy as np
import pytest

from gruengine.kernels.cpu import optim as cpu
try:
    from gruengine.kernels.cuda import optim as gpu  # importable without a GPU (signatures only)
except ImportError:                                   # no numba.cuda: the cuda extra is absent
    gpu = None
NO_CUDA = "numba.cuda is not importable (pip install -e '.[cuda]')"
from gruengine.optim import SGD, Adam, AdamW, clip_grad_norm, clip_grad_value
from gruengine.params import ParamBuffer
from gruengine.reference import optim as ref

DTYPES = [np.float32, np.float64]
# One parameter spans several sum_of_squares chunks, so the chunk grid is exercised.
SHAPES = {"w": (7, 5), "b": (5,), "big": (2 * cpu.CHUNK + 11,), "u": (3, 4, 2)}


class Holder:
    """The smallest module: params and grads dicts, nothing else."""

    def __init__(self, params):
        self.params = params
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}


def rand_arrays(rng, dtype, shapes=SHAPES, scale=1.0):
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def copy_dict(d):
    return {k: v.copy() for k, v in d.items()}


def make_opt(kind, params):
    if kind == "adam":
        return Adam(params, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)
    if kind == "adamw":
        return AdamW(params, lr=0.01, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.1)
    if kind == "sgd":
        return SGD(params, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)
    if kind == "nesterov":
        return SGD(params, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)
    if kind == "plain_sgd":
        return SGD(params, lr=0.1)
    raise AssertionError(kind)


KINDS = ["adam", "adamw", "sgd", "nesterov", "plain_sgd"]


# ---------------------------------------------------------------- kernels vs reference

def assert_kernel_close(got, want):
    """float64: the kernel and the reference do the same float64 operations, so they agree to
    1 ulp. float32: the kernel computes in float32 (as PyTorch), the reference in float64; a
    dozen float32 operations on values of magnitude <= max|want| each round by <= half an
    ulp of that magnitude, so they agree to 16 float32 eps of the array's scale."""
    assert got.dtype == want.dtype
    if got.dtype == np.float64:
        np.testing.assert_array_max_ulp(got, want, maxulp=1)
    else:
        tol = 16 * np.finfo(np.float32).eps
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * float(np.abs(want).max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_adam_kernel_matches_reference(dtype, decoupled, weight_decay):
    rng = np.random.default_rng(11)
    n = 1001
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = rng.random(n).astype(dtype)
    step, lr, grad_scale = int(rng.integers(1, 20)), float(rng.uniform(1e-3, 1e-1)), float(rng.uniform(0.2, 1))
    got = [a.copy() for a in (p, g, m, v)]
    want = [a.copy() for a in (p, g, m, v)]
    cpu.adam_step(*got, step, lr, 0.9, 0.999, 1e-8, weight_decay, decoupled, grad_scale)
    ref.adam_step(*want, step, lr, 0.9, 0.999, 1e-8, weight_decay, decoupled, grad_scale)
    assert not np.array_equal(got[0], p)  # the step did something
    np.testing.assert_array_equal(got[1], g)  # grad is read only
    for a, b in zip(got, want):
        assert_kernel_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,dampening,nesterov", [(0.0, 0.0, False), (0.9, 0.1, False), (0.7, 0.0, True)])
@pytest.mark.parametrize("first_step", [True, False])
def test_sgd_kernel_matches_reference(dtype, momentum, dampening, nesterov, first_step):
    rng = np.random.default_rng(12)
    n = 777
    p, g, buf = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    got = [p.copy(), g.copy(), buf.copy() if momentum else None]
    want = [p.copy(), g.copy(), buf.copy() if momentum else None]
    args = (0.05, momentum, dampening, nesterov, 0.01, 0.6, first_step)
    cpu.sgd_step(*got, *args)
    ref.sgd_step(*want, *args)
    assert not np.array_equal(got[0], p)
    for a, b in zip(got, want):
        if a is not None:
            assert_kernel_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 3, 2 * cpu.CHUNK + 5])
def test_sum_of_squares_matches_reference(dtype, n):
    rng = np.random.default_rng(13)
    g = rng.standard_normal(n).astype(dtype)
    got = cpu.sum_of_squares(g)
    assert isinstance(got, float)
    # float64 accumulation in both, different order: agreement to float64 rounding.
    np.testing.assert_allclose(got, ref.sum_of_squares(g), rtol=1e-12)
    np.testing.assert_allclose(got, math.fsum((g.astype(np.float64) ** 2).tolist()), rtol=1e-12)


def test_sum_of_squares_bit_identical_across_runs_and_threads():
    rng = np.random.default_rng(14)
    g = rng.standard_normal(5 * cpu.CHUNK + 17)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results += [cpu.sum_of_squares(g), cpu.sum_of_squares(g)]
    finally:
        numba.set_num_threads(before)
    assert len(set(results)) == 1


PRIMITIVES = ["adam_step", "sgd_step", "chunk_bounds", "sum_of_squares_partials", "ordered_sum",
              "sum_of_squares", "scale_inplace", "clamp_inplace"]


@pytest.mark.parametrize("name", PRIMITIVES)
def test_every_backend_has_the_primitive_with_the_same_arguments(name):
    # what gruengine.optim calls through get_kernels(device): the same names and argument
    # order in the reference, the CPU and the CUDA backend
    want = list(inspect.signature(getattr(ref, name)).parameters)
    for module in (cpu, gpu):
        if module is None:
            pytest.skip(f"the CPU backend passed; the CUDA backend's half: {NO_CUDA}")
        assert name in module.__all__
        assert list(inspect.signature(getattr(module, name)).parameters) == want, module.__name__


def random_grid(rng, n):
    """Random chunk bounds over [0, n): uneven chunks, gaps and empty chunks included."""
    cuts = np.sort(rng.integers(0, n + 1, size=2 * int(rng.integers(1, 12))))
    return cuts[0::2].astype(np.int64), cuts[1::2].astype(np.int64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_partials_match_reference_on_any_grid(dtype):
    rng = np.random.default_rng(15)
    for _ in range(5):
        x = (3 * rng.standard_normal(int(rng.integers(1, 3 * cpu.CHUNK)))).astype(dtype)
        starts, stops = random_grid(rng, x.shape[0])
        got = cpu.sum_of_squares_partials(x, starts, stops)
        want = ref.sum_of_squares_partials(x, starts, stops)
        assert got.dtype == np.float64 and got.shape == starts.shape
        # float64 sums of a few thousand squares in two orders: a few float64 ulps apart
        np.testing.assert_allclose(got, want, rtol=1e-13)
        np.testing.assert_array_equal(got[starts == stops], 0.0)
    # the grid of one parameter: CHUNK-sized pieces from its own start, the last one shorter
    starts, stops = cpu.chunk_bounds(5, 2 * cpu.CHUNK + 3)
    np.testing.assert_array_equal(starts, [5, 5 + cpu.CHUNK, 5 + 2 * cpu.CHUNK])
    np.testing.assert_array_equal(stops, [5 + cpu.CHUNK, 5 + 2 * cpu.CHUNK, 8 + 2 * cpu.CHUNK])
    assert cpu.chunk_bounds(7, 0)[0].shape == (0,)


def test_ordered_sum_adds_left_to_right():
    rng = np.random.default_rng(16)
    # terms of very different magnitudes: another order or a compensated sum gives other bits
    # (left to right, 1e16 + 1 rounds back to 1e16 and that 1 is lost)
    partials = np.concatenate([[1e16, 1.0, -1e16],
                               rng.standard_normal(257) * 10.0 ** rng.integers(-8, 9, 257)])
    loop = 0.0
    for p in partials.tolist():
        loop += p
    assert cpu.ordered_sum(partials) == ref.ordered_sum(partials) == loop
    if gpu is not None:
        assert gpu.ordered_sum(partials) == loop
    assert loop != math.fsum(partials.tolist())       # the order matters for these numbers
    assert cpu.ordered_sum(np.zeros(0)) == ref.ordered_sum(np.zeros(0)) == 0.0


def _with_specials(rng, shape, dtype):
    a = (2 * rng.standard_normal(shape)).astype(dtype)
    flat = a.reshape(-1)
    flat[:4] = [np.nan, np.inf, -np.inf, -0.0]
    return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_scale_and_clamp_inplace_match_reference_bit_for_bit(dtype, layout):
    rng = np.random.default_rng(17)
    base = _with_specials(rng, (37, 11), dtype)
    scale, limit = float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.2, 1.5))
    for op, value in ((cpu.scale_inplace, scale), (cpu.clamp_inplace, limit)):
        got, want = base.copy(), base.copy()
        view = got if layout == "contiguous" else got[::2, 1:]   # in place through a strided view
        ref_view = want if layout == "contiguous" else want[::2, 1:]
        assert op(view, value) is view
        getattr(ref, op.__name__)(ref_view, value)
        np.testing.assert_array_equal(got, want)                 # NaN in the same places too
        assert got.dtype == dtype
        assert not np.array_equal(got, base)
    # scale rounds to the array's dtype first, as NumPy's a *= float and torch's clipping
    a = base.copy()
    cpu.scale_inplace(a, scale)
    b = base.copy()
    b *= scale
    np.testing.assert_array_equal(a, b)
    c = base.copy()
    cpu.clamp_inplace(c, limit)
    np.testing.assert_array_equal(c, np.clip(base, -limit, limit))


# ---------------------------------------------------------------- textbook formulas

@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_matches_textbook(decoupled):
    rng = np.random.default_rng(21)
    shapes = {"w": (6, 4), "b": (4,)}
    params = rand_arrays(rng, np.float64, shapes)
    expect = copy_dict(params)
    b1, b2, eps, wd = 0.9, 0.99, 1e-8, 0.1
    cls = AdamW if decoupled else Adam
    opt = cls(params, lr=0.02, betas=(b1, b2), eps=eps, weight_decay=wd)
    m = {k: np.zeros(s) for k, s in shapes.items()}
    v = {k: np.zeros(s) for k, s in shapes.items()}
    for t in range(1, 6):
        lr = 0.02 if t < 4 else 0.005           # a schedule changes opt.lr between steps
        opt.lr = lr
        grads = rand_arrays(rng, np.float64, shapes)
        opt.step(grads)
        for k in shapes:
            g = grads[k]
            if decoupled:
                expect[k] = expect[k] * (1 - lr * wd)
            else:
                g = g + wd * expect[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g ** 2
            m_hat = m[k] / (1 - b1 ** t)
            v_hat = v[k] / (1 - b2 ** t)
            expect[k] = expect[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    assert opt.num_steps == 5
    for k in shapes:
        np.testing.assert_allclose(params[k], expect[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum,dampening,nesterov", [(0.0, 0.0, False), (0.9, 0.2, False), (0.8, 0.0, True)])
def test_sgd_matches_textbook(momentum, dampening, nesterov):
    rng = np.random.default_rng(22)
    shapes = {"w": (5, 3), "b": (3,)}
    params = rand_arrays(rng, np.float64, shapes)
    expect = copy_dict(params)
    lr, wd = 0.1, 0.01
    opt = SGD(params, lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd)
    buf = {}
    for t in range(4):
        grads = rand_arrays(rng, np.float64, shapes)
        opt.step(grads)
        for k in shapes:
            d = grads[k] + wd * expect[k]
            if momentum:
                buf[k] = d.copy() if t == 0 else momentum * buf[k] + (1 - dampening) * d
                d = d + momentum * buf[k] if nesterov else buf[k]
            expect[k] = expect[k] - lr * d
    for k in shapes:
        np.testing.assert_allclose(params[k], expect[k], rtol=1e-12, atol=1e-14)


def test_step_with_max_norm_clips_by_global_norm():
    rng = np.random.default_rng(23)
    shapes = {"w": (5, 3), "b": (3,)}
    params = rand_arrays(rng, np.float64, shapes)
    expect = copy_dict(params)
    opt = SGD(params, lr=0.1)
    grads = rand_arrays(rng, np.float64, shapes, scale=3.0)
    kept = copy_dict(grads)
    norm = opt.step(grads, max_norm=0.5)
    total = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
    np.testing.assert_allclose(norm, total, rtol=1e-13)
    assert total > 0.5
    for k in shapes:
        np.testing.assert_array_equal(grads[k], kept[k])  # the step scales, the grads stay
        np.testing.assert_allclose(params[k], expect[k] - 0.1 * grads[k] * 0.5 / (total + 1e-6), rtol=1e-13)
    # Below the threshold nothing is scaled.
    small = rand_arrays(rng, np.float64, shapes, scale=1e-3)
    before = copy_dict(params)
    opt.step(small, max_norm=10.0)
    for k in shapes:
        np.testing.assert_allclose(params[k], before[k] - 0.1 * small[k], rtol=1e-13)


def test_clip_grad_norm_and_value_formulas():
    rng = np.random.default_rng(24)
    grads = [rng.standard_normal(s) * 2 for s in [(4, 3), (7,), (2 * cpu.CHUNK + 3,)]]
    orig = [g.copy() for g in grads]
    total = np.sqrt(sum(np.sum(g ** 2) for g in orig))
    norm = clip_grad_norm(grads, 1.5)
    np.testing.assert_allclose(norm, total, rtol=1e-13)
    for g, o in zip(grads, orig):
        np.testing.assert_allclose(g, o * 1.5 / (total + 1e-6), rtol=1e-14)
    after = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    np.testing.assert_allclose(after, 1.5, rtol=1e-6)
    # Already small: returned norm, grads untouched.
    d = {"a": rng.standard_normal((3, 3)) * 1e-3}
    keep = d["a"].copy()
    assert clip_grad_norm(d, 1.0) == pytest.approx(np.linalg.norm(keep), rel=1e-13)
    np.testing.assert_array_equal(d["a"], keep)

    vals = {"a": rng.standard_normal((6, 5)), "b": rng.standard_normal(9).astype(np.float32)}
    orig = copy_dict(vals)
    clip_grad_value(vals, 0.3)
    for k in vals:
        np.testing.assert_array_equal(vals[k], np.minimum(np.maximum(orig[k], -0.3), 0.3))
        assert vals[k].dtype == orig[k].dtype


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_norm_leaves_everything(bad):
    rng = np.random.default_rng(25)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads[1][2] = bad
    orig = [g.copy() for g in grads]
    norm = clip_grad_norm(grads, 1.0)
    assert not math.isfinite(norm)
    assert math.isnan(norm) if np.isnan(bad) else math.isinf(norm)
    for g, o in zip(grads, orig):
        np.testing.assert_array_equal(g, o)

    params = rand_arrays(rng, np.float64, {"w": (3, 4), "b": (5,)})
    opt = Adam(params, lr=0.1)
    opt.step({"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}, max_norm=1.0)
    before_p, before_s = copy_dict(params), opt.state_dict()
    norm = opt.step({"w": grads[0], "b": grads[1]}, max_norm=1.0)
    assert not math.isfinite(norm)
    assert opt.num_steps == 1
    for k in params:
        np.testing.assert_array_equal(params[k], before_p[k])
    for k, a in opt.state_dict()["arrays"].items():
        np.testing.assert_array_equal(a, before_s["arrays"][k])


# ---------------------------------------------------------------- torch parity

def _torch_opt(torch, kind, tensors):
    if kind == "adam":
        return torch.optim.Adam(tensors, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)
    if kind == "adamw":
        return torch.optim.AdamW(tensors, lr=0.01, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.1)
    if kind == "sgd":
        return torch.optim.SGD(tensors, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)
    if kind == "nesterov":
        return torch.optim.SGD(tensors, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)
    if kind == "plain_sgd":
        return torch.optim.SGD(tensors, lr=0.1)
    raise AssertionError(kind)


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_norm", [None, 40.0])
def test_matches_torch(dtype, kind, max_norm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(31)
    shapes = {"w": (7, 5), "b": (5,), "big": (cpu.CHUNK + 9,)}
    params = rand_arrays(rng, dtype, shapes)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = make_opt(kind, params)
    topt = _torch_opt(torch, kind, list(tparams.values()))
    clipped = 0
    for t in range(5):
        if t == 3:
            opt.lr = opt.lr * 0.5
            for group in topt.param_groups:
                group["lr"] = group["lr"] * 0.5
        grads = rand_arrays(rng, dtype, shapes, scale=1.0 if t % 2 == 0 else 0.2)  # norm ~91 or ~18
        for k, tp in tparams.items():
            tp.grad = torch.tensor(grads[k].copy())
        norm = opt.step(grads, max_norm=max_norm)
        if max_norm is not None:
            tnorm = float(torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_norm))
            np.testing.assert_allclose(norm, tnorm, rtol=1e-12 if dtype == np.float64 else 1e-6)
            clipped += tnorm > max_norm
        else:
            assert norm is None
        topt.step()
    if max_norm is not None:
        assert 0 < clipped < 5  # both branches of the clip were exercised
    for k, tp in tparams.items():
        np.testing.assert_allclose(params[k], tp.detach().numpy(), **_tol(dtype))
    arrays = opt.state_dict()["arrays"]
    for k, tp in tparams.items():
        tstate = topt.state[tp]
        for name in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if tstate.get(name) is not None:
                np.testing.assert_allclose(arrays[f"{name}.{k}"], tstate[name].numpy(), **_tol(dtype))
            else:
                assert f"{name}.{k}" not in arrays


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.7, 1e3])
def test_clip_grad_norm_matches_torch(dtype, max_norm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(32)
    grads = [(3 * rng.standard_normal(s)).astype(dtype) for s in [(4, 6), (6,), (cpu.CHUNK + 1,)]]
    tparams = [torch.zeros(g.shape, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
               for g in grads]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.tensor(g.copy())  # clip_grad_norm_ takes parameters and clips their .grad
    tgrads = [tp.grad for tp in tparams]
    norm = clip_grad_norm(grads, max_norm)
    tnorm = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm))
    np.testing.assert_allclose(norm, tnorm, rtol=1e-12 if dtype == np.float64 else 1e-6)
    for g, tg in zip(grads, tgrads):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, tg.numpy(), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_value_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(33)
    grads = {"a": rng.standard_normal((5, 4)).astype(dtype), "b": rng.standard_normal(11).astype(dtype)}
    tparams = [torch.zeros(g.shape, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
               for g in grads.values()]
    for tp, g in zip(tparams, grads.values()):
        tp.grad = torch.tensor(g.copy())
    tgrads = [tp.grad for tp in tparams]
    clip_grad_value(grads, 0.5)
    torch.nn.utils.clip_grad_value_(tparams, 0.5)
    assert max(float(np.abs(g).max()) for g in grads.values()) == pytest.approx(0.5)
    for g, tg in zip(grads.values(), tgrads):
        np.testing.assert_array_equal(g, tg.numpy())


# ---------------------------------------------------------------- flat vs dict, state_dict

def _buffer_and_dict(rng, dtype):
    """The same values twice: behind a ParamBuffer (names 'm.k') and as a plain dict."""
    values = rand_arrays(rng, dtype)
    buf = ParamBuffer({"m": Holder(copy_dict(values))})
    plain = {f"m.{k}": v.copy() for k, v in values.items()}
    return buf, plain


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_buffer_path_equals_dict_path(dtype, kind):
    rng = np.random.default_rng(41)
    buf, plain = _buffer_and_dict(rng, dtype)
    buf2, _ = _buffer_and_dict(np.random.default_rng(41), dtype)
    fused, per_array, buf_with_dict = make_opt(kind, buf), make_opt(kind, plain), make_opt(kind, buf2)
    for t in range(4):
        grads = {k: (4 * rng.standard_normal(v.shape)).astype(dtype) for k, v in plain.items()}
        for k, g in grads.items():
            buf.grads[k][...] = g
        max_norm = None if t == 0 else 60.0
        n1 = fused.step(max_norm=max_norm)
        n2 = per_array.step(grads, max_norm=max_norm)
        n3 = buf_with_dict.step(copy_dict(grads), max_norm=max_norm)
        assert n1 == n2 == n3
        if t:
            assert n1 > max_norm  # clipping is active, so the scales must agree bit for bit
    for k in plain:
        np.testing.assert_array_equal(buf.params[k], plain[k])
        np.testing.assert_array_equal(buf2.params[k], plain[k])
    s1, s2 = fused.state_dict(), per_array.state_dict()
    assert s1["arrays"].keys() == s2["arrays"].keys()
    for k in s1["arrays"]:
        np.testing.assert_array_equal(s1["arrays"][k], s2["arrays"][k])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("save_from,load_into", [("buffer", "buffer"), ("dict", "dict"), ("buffer", "dict")])
def test_state_dict_round_trip_continues_bit_identically(kind, save_from, load_into):
    dtype = np.float32
    rng = np.random.default_rng(51)
    values = rand_arrays(rng, dtype)
    grads = [{f"m.{k}": (3 * rng.standard_normal(v.shape)).astype(dtype) for k, v in values.items()}
             for _ in range(6)]

    def build(how, vals):
        if how == "buffer":
            buf = ParamBuffer({"m": Holder({k.split(".", 1)[1]: v.copy() for k, v in vals.items()})})
            return buf.params, make_opt(kind, buf)
        params = copy_dict(vals)
        return params, make_opt(kind, params)

    start = {f"m.{k}": v for k, v in values.items()}
    ref_params, ref_opt = build(save_from, start)
    for g in grads:
        ref_opt.lr = ref_opt.lr * 0.9
        ref_opt.step(g, max_norm=50.0)

    p1, o1 = build(save_from, start)
    for g in grads[:3]:
        o1.lr = o1.lr * 0.9
        o1.step(g, max_norm=50.0)
    sd = o1.state_dict()
    meta = json.loads(json.dumps(sd["meta"]))  # the meta survives JSON
    arrays = {k: a.copy() for k, a in sd["arrays"].items()}
    p2, o2 = build(load_into, {k: v.copy() for k, v in p1.items()})
    o2.lr = 123.0  # overwritten by the load
    o2.load_state_dict({"arrays": arrays, "meta": meta})
    assert o2.num_steps == 3 and o2.lr == o1.lr
    for g in grads[3:]:
        o2.lr = o2.lr * 0.9
        o2.step(g, max_norm=50.0)
    for k in ref_params:
        np.testing.assert_array_equal(p2[k], ref_params[k])
    assert not np.array_equal(p2["m.w"], start["m.w"])


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("make,name", [
    (lambda p: Adam(p, lr=-1e-3), "lr"),
    (lambda p: Adam(p, lr=float("nan")), "lr"),
    (lambda p: Adam(p, lr="fast"), "lr"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda p: Adam(p, betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda p: AdamW(p, betas=(0.9,)), "betas"),
    (lambda p: Adam(p, eps=0.0), "eps"),
    (lambda p: AdamW(p, eps=-1e-8), "eps"),
    (lambda p: Adam(p, weight_decay=-0.1), "weight_decay"),
    (lambda p: AdamW(p, weight_decay=-0.1), "weight_decay"),
    (lambda p: SGD(p, lr=-0.1), "lr"),
    (lambda p: SGD(p, 0.1, momentum=-0.5), "momentum"),
    (lambda p: SGD(p, 0.1, weight_decay=-1), "weight_decay"),
    (lambda p: SGD(p, 0.1, nesterov=True), "nesterov"),
    (lambda p: SGD(p, 0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
])
def test_hyperparameter_validation(make, name):
    params = {"w": np.ones((2, 2))}
    with pytest.raises(ValueError, match=f"^{name}"):
        make(params)


def test_params_and_grads_validation():
    rng = np.random.default_rng(61)
    w = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="^params"):
        Adam([w])
    with pytest.raises(ValueError, match="^params"):
        Adam({})
    with pytest.raises(ValueError, match=r"^params\['w'\]"):
        Adam({"w": w.T})  # not C-contiguous: could not be updated through a flat view
    with pytest.raises(ValueError, match=r"^params\['w'\]"):
        Adam({"w": np.ones((2, 2), dtype=np.int64)})
    with pytest.raises(ValueError, match=r"^params\['v'\]"):
        Adam({"w": w, "v": w[1:]})  # overlapping memory

    opt = Adam({"w": w, "b": rng.standard_normal(3)})
    good = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    with pytest.raises(ValueError, match="^grads"):
        opt.step()
    with pytest.raises(ValueError, match="^grads: keys"):
        opt.step({"w": good["w"]})
    with pytest.raises(ValueError, match=r"^grads\['w'\]"):
        opt.step({"w": good["w"].T.copy(), "b": good["b"]})
    with pytest.raises(ValueError, match=r"^grads\['b'\]"):
        opt.step({"w": good["w"], "b": good["b"].astype(np.float32)})
    with pytest.raises(ValueError, match="^max_norm"):
        opt.step(good, max_norm=0.0)
    with pytest.raises(ValueError, match="^lr"):
        opt.lr = -1.0
    assert opt.num_steps == 0  # nothing was applied by the failed calls
    opt.step(good)
    assert opt.num_steps == 1

    with pytest.raises(ValueError, match="^max_norm"):
        clip_grad_norm([w], -1.0)
    with pytest.raises(ValueError, match="^clip_value"):
        clip_grad_value([w], 0.0)
    with pytest.raises(ValueError, match="^grads"):
        clip_grad_norm(w, 1.0)
    with pytest.raises(ValueError, match=r"^grads\[0\]"):
        clip_grad_value([np.ones(3, dtype=np.int32)], 1.0)


def test_load_state_dict_validation_leaves_state_untouched():
    rng = np.random.default_rng(62)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    opt = AdamW(params, lr=0.01)
    opt.step({"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)})
    good = opt.state_dict()
    other = AdamW(copy_dict(params), lr=0.5, weight_decay=0.3)
    before = other.state_dict()

    def variant(**changes):
        sd = {"arrays": dict(good["arrays"]), "meta": dict(good["meta"])}
        for where, key, value in changes.get("edits", []):
            if value is KeyError:
                del sd[where][key]
            else:
                sd[where][key] = value
        return sd

    cases = [
        (variant(edits=[("arrays", "exp_avg.w", KeyError)]), r"^state_dict\['arrays'\]: keys"),
        (variant(edits=[("arrays", "exp_avg.w", np.zeros((3, 4)))]), r"exp_avg\.w"),
        (variant(edits=[("arrays", "exp_avg_sq.b", np.zeros(3, np.float32))]), r"exp_avg_sq\.b"),
        (variant(edits=[("meta", "type", "Adam")]), r"^state_dict\['meta'\]\['type'\]"),
        (variant(edits=[("meta", "step", -1)]), r"^state_dict\['meta'\]\['step'\]"),
        (variant(edits=[("meta", "lr", -0.1)]), r"^state_dict\['meta'\]\['lr'\]"),
        (variant(edits=[("meta", "eps", 0.0)]), "^eps"),
        (variant(edits=[("meta", "names", ["w", "c"])]), r"^state_dict\['meta'\]\['names'\]"),
        (variant(edits=[("meta", "betas", KeyError)]), r"^state_dict\['meta'\]: missing"),
        ({"arrays": good["arrays"]}, "^state_dict: expected"),
    ]
    for sd, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            other.load_state_dict(sd)
    after = other.state_dict()
    assert after["meta"] == before["meta"]
    for k in before["arrays"]:
        np.testing.assert_array_equal(after["arrays"][k], before["arrays"][k])
    other.load_state_dict(good)
    assert other.state_dict()["meta"] == good["meta"]
