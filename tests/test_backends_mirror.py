"""The three backends mirror each other: every public op of ``gruengine.reference`` exists in
``gruengine.kernels.cpu`` and ``gruengine.kernels.cuda`` with the same signature (parameter
names, order, kinds and defaults), each cell has its forward/backward/gates triple with the
argument order ``RecurrentStack`` calls, and the cell ops reject bad input with the same
message everywhere. Backend-only names are listed below, each with its reason.
"""
import inspect
import types

import numpy as np
import pytest

import gruengine
from gruengine import _checks
from gruengine import reference
from gruengine.kernels import cpu

try:
    from gruengine.kernels import cuda
except Exception as e:  # numba-cuda missing or broken: nothing to mirror against
    cuda = None
    CUDA_SKIP = f"gruengine.kernels.cuda does not import: {type(e).__name__}: {e}"

# public names that exist in one backend only, and why
BACKEND_ONLY = {
    "reference": {
        "mingru_forward_sequential": "a plain loop over time that checks the log-space scan",
        "mingru_backward_sequential": "the same for the backward scan",
    },
    "cpu": {
        "gru_infer": "forward without a cache: the lean eval-mode path of RecurrentStack",
        "lstm_infer": "the same for the LSTM",
    },
    "cuda": {},
}

CELLS = {"gru": gruengine.GRU, "lstm": gruengine.LSTM, "mingru": gruengine.MinGRU}


def public_ops(module):
    """name -> function of the callables a backend package exports (no modules, no classes)."""
    return {name: obj for name, obj in vars(module).items()
            if not name.startswith("_") and callable(obj)
            and not isinstance(obj, (types.ModuleType, type))}


def signature(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def backends():
    out = [("reference", reference), ("cpu", cpu)]
    if cuda is None:
        pytest.skip(CUDA_SKIP)
    return out + [("cuda", cuda)]


def test_every_public_op_is_mirrored_with_the_same_signature():
    mods = dict(backends())
    ops = {name: public_ops(m) for name, m in mods.items()}
    shared = set(ops["reference"]) - set(BACKEND_ONLY["reference"])
    assert len(shared) >= 20
    for name, names in ops.items():
        only = set(names) - shared
        assert only == set(BACKEND_ONLY[name]), (name, only ^ set(BACKEND_ONLY[name]))
    for op in sorted(shared):
        want = signature(ops["reference"][op])
        for name in ("cpu", "cuda"):
            assert signature(ops[name][op]) == want, (op, name)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_each_cell_has_its_ops_in_the_stack_argument_order(cell):
    # <cell>_forward(x, *states, *weights, lengths, *options, reverse=False)
    # <cell>_backward(dy, *dfinals, x, *states, *weights, lengths, cache, *options, reverse=False)
    # with the names the shared input check reports in its messages
    assert CELLS[cell]._op == cell
    states, weights = _checks.CELL_ARGS[cell]
    s0 = [s for s, _ in states]
    dfin = [d for _, d in states]
    w = [n for n, _ in weights(1, 1)]
    options = ["reset_after"] if cell == "gru" else []
    for name, mod in backends():
        fwd = inspect.signature(getattr(mod, f"{cell}_forward")).parameters
        bwd = inspect.signature(getattr(mod, f"{cell}_backward")).parameters
        gates = inspect.signature(getattr(mod, f"{cell}_gates")).parameters
        assert list(fwd) == ["x", *s0, *w, "lengths", *options, "reverse"], name
        assert list(bwd) == ["dy", *dfin, "x", *s0, *w, "lengths", "cache", *options,
                             "reverse"], name
        assert list(gates) == ["cache"], name
        assert fwd["reverse"].default is False and bwd["reverse"].default is False
        if options:
            assert fwd["reset_after"].default is True and bwd["reset_after"].default is True


def _inputs(cell, rng, B=2, T=3, I=2, H=4, dtype=np.float32):
    states, weights = _checks.CELL_ARGS[cell]
    x = rng.standard_normal((B, T, I)).astype(dtype)
    s0 = [rng.standard_normal((B, H)).astype(dtype) for _ in states]
    w = [rng.standard_normal(shape).astype(dtype) for _, shape in weights(I, H)]
    return x, s0, w


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_cell_ops_reject_bad_input_with_the_same_message(cell, rng):
    # forward arguments fail before anything reaches a device, so the cuda launchers are
    # checked too without a GPU; the messages are the shared check's, word for word
    x, s0, w = _inputs(cell, rng)
    states, weights = _checks.CELL_ARGS[cell]
    names = [n for n, _ in weights(2, 4)]
    bad_w = list(w)
    bad_w[1] = w[1][:, :1].copy()
    last_state = s0[:-1] + [s0[-1].astype(np.float64)]
    cases = [
        ((x, *s0, *bad_w, None), rf"^{names[1]}: expected shape \({w[1].shape[0]}, "
                                 rf"{w[1].shape[1]}\), got \({w[1].shape[0]}, 1\)$"),
        ((x, *last_state, *w, None), rf"^{states[-1][0]}: expected dtype float32, got float64$"),
        ((x, *s0, *w, np.array([4, 1])), r"^lengths: every length must be <= T=3, got 4$"),
        ((x.astype(np.int64), *s0, *w, None), r"^x: expected dtype float32 or float64, got int64$"),
        ((x[0], *s0, *w, None), r"^x: expected 3-D array"),
    ]
    for name, mod in backends():
        fwd = getattr(mod, f"{cell}_forward")
        for args, msg in cases:
            with pytest.raises(ValueError, match=msg):
                fwd(*args)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("mod", [reference, cpu], ids=["reference", "cpu"])
def test_cell_backward_checks_the_incoming_gradients(cell, mod, rng):
    x, s0, w = _inputs(cell, rng)
    lengths = np.array([3, 2])
    out = getattr(mod, f"{cell}_forward")(x, *s0, *w, lengths)
    y, cache = out[0], out[-1]
    dfinals = [np.ones_like(s) for s in s0]
    bwd = getattr(mod, f"{cell}_backward")
    grads = bwd(np.ones_like(y), *dfinals, x, *s0, *w, lengths, cache)
    assert [g.shape for g in grads] == [x.shape] + [s.shape for s in s0] + [a.shape for a in w]
    with pytest.raises(ValueError, match=r"^dy: expected shape \(2, 3, 4\), got \(2, 3, 3\)$"):
        bwd(np.ones_like(y)[:, :, :3], *dfinals, x, *s0, *w, lengths, cache)
    last = _checks.CELL_ARGS[cell][0][-1][1]
    bad = dfinals[:-1] + [dfinals[-1].astype(np.float64)]
    with pytest.raises(ValueError, match=rf"^{last}: expected dtype float32, got float64$"):
        bwd(np.ones_like(y), *bad, x, *s0, *w, lengths, cache)
