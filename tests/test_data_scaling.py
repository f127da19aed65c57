"""Input scaling (gruengine.data.scaling): statistics from the training split only, computed
as an independent NumPy loop over the valid steps; constant channels and padding give no
NaN; the JSON round trip restores the same transform."""
import json

import numpy as np
import pytest

from gruengine.data.dataset import Dataset
from gruengine.data.scaling import Scaler
from tests.gradcheck import random_lengths


def _ds(rng, n=7, T=9, F=3, offset=0.0):
    x = (rng.standard_normal((n, T, F)) * rng.uniform(0.5, 4, F) + offset).astype(np.float32)
    lengths = random_lengths(rng, n, T)
    lengths[1] = 2
    for b, L in enumerate(lengths):
        x[b, L:] = rng.standard_normal((T - L, F)) * 1e4        # padding holds junk
    return Dataset(x, lengths, rng.integers(0, 2, n).astype(np.int64), "classify", 2)


def _loop_series(x, L):
    # per-series z-norm of one row's valid steps, a plain loop: (L, F) -> (L, F), mean, std
    v = x[:L].astype(np.float64)
    out = np.empty_like(v)
    means, stds = [], []
    for f in range(v.shape[1]):
        m = sum(v[:, f]) / L
        s = (sum((v[:, f] - m) ** 2) / L) ** 0.5
        out[:, f] = (v[:, f] - m) / (s if s > 0 else 1.0)
        means.append(m)
        stds.append(s)
    return out, np.array(means), np.array(stds)


@pytest.mark.parametrize("series,channels", [(True, True), (False, True), (True, False)])
def test_statistics_come_from_the_training_split_only(rng, series, channels):
    train, test = _ds(rng), _ds(rng, n=5, offset=50.0)
    s = Scaler(series, channels).fit(train)
    rows = []
    for b, L in enumerate(train.lengths):
        z = _loop_series(train.inputs[b], L)[0] if series else train.inputs[b, :L].astype(np.float64)
        rows.append(z)
    rows = np.concatenate(rows)
    if channels:
        np.testing.assert_allclose(s.mean, rows.mean(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(s.std, rows.std(axis=0), rtol=1e-10)
    before = s.to_json()
    s.transform(test)                                          # using it changes nothing
    assert s.to_json() == before
    if channels and not series:            # (z-normalised series all have mean 0)
        other = Scaler(series, channels).fit(_ds(rng, offset=50.0))
        assert not np.allclose(other.mean, s.mean)
    out = s.transform(test)
    for b, L in enumerate(test.lengths):
        z = _loop_series(test.inputs[b], L)[0] if series else test.inputs[b, :L].astype(np.float64)
        if channels:
            z = (z - s.mean) / s.std
        np.testing.assert_allclose(out.inputs[b, :L], z, rtol=1e-5, atol=1e-5)
        assert not out.inputs[b, L:].any()
    assert out.inputs.dtype == np.float32 and out.lengths is test.lengths


def test_keep_stats_appends_level_and_log_scale(rng):
    train = _ds(rng)
    s = Scaler(True, False, keep_stats=True).fit(train)
    assert s.out_features == 9
    out = s.transform(train)
    for b, L in enumerate(train.lengths):
        z, m, sd = _loop_series(train.inputs[b], L)
        np.testing.assert_allclose(out.inputs[b, :L, :3], z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.inputs[b, :L, 3:6], np.broadcast_to(m, (L, 3)), rtol=1e-5)
        np.testing.assert_allclose(out.inputs[b, :L, 6:], np.broadcast_to(np.log(sd + s.floor), (L, 3)),
                                   rtol=1e-5, atol=1e-6)


def test_constant_channels_and_series_give_no_nan(rng):
    ds = _ds(rng)
    x = ds.inputs.copy()
    x[:, :, 1] = 3.0                       # a constant channel everywhere
    x[0, :, 2] = -1.0                      # one constant series
    ds = Dataset(x, ds.lengths, ds.targets, "classify", 2)
    for series in (True, False):
        s = Scaler(series, True, keep_stats=series).fit(ds)
        out = s.transform(ds).inputs
        assert np.isfinite(out).all()
        valid = np.arange(x.shape[1])[None, :] < ds.lengths[:, None]
        assert not out[valid][:, 1].any()                    # centred, not divided by 0


def test_json_round_trip_gives_the_same_transform(rng):
    train, test = _ds(rng), _ds(rng)
    s = Scaler(True, True, keep_stats=True).fit(train)
    back = Scaler.from_json(json.loads(json.dumps(s.to_json())))
    np.testing.assert_array_equal(back.transform(test).inputs, s.transform(test).inputs)
    with pytest.raises(ValueError, match=r"^scaling: expected a dict of kind"):
        Scaler.from_json({"kind": "other"})
    with pytest.raises(ValueError, match=r"^inputs: expected shape \(N, T, 3\), got \(2, 4, 2\)$"):
        s.transform_arrays(np.zeros((2, 4, 2)), np.array([4, 4]))


def test_already_normalised_series_give_no_noise_channels(rng):
    # z-normalised inputs (UCR files often are): level and scale are constant up to rounding,
    # and must come out ~0, not rounding noise blown up to unit variance
    x = rng.standard_normal((20, 30, 1))
    x = ((x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)).astype(np.float32)
    ds = Dataset(x, np.full(20, 30, np.int64), rng.integers(0, 2, 20).astype(np.int64),
                 "classify", 2)
    out = Scaler(True, True, keep_stats=True).fit(ds).transform(ds).inputs
    assert np.abs(out[:, :, 1:]).max() < 1e-3
    assert np.allclose(out[:, :, 0].std(), 1, rtol=1e-3)
    # real spread in level and scale is kept
    y = (x * rng.uniform(0.5, 5, (20, 1, 1)) + rng.normal(0, 3, (20, 1, 1))).astype(np.float32)
    out = Scaler(True, True, keep_stats=True).fit(
        Dataset(y, ds.lengths, ds.targets, "classify", 2)).transform(
        Dataset(y, ds.lengths, ds.targets, "classify", 2)).inputs
    assert np.allclose(out[:, 0, 1:].std(axis=0), 1, rtol=1e-3)
