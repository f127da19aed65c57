"""The training plan (gruengine.policy): its decisions on tiny, medium and large sets, that an
explicit option always wins, and that the synthetic tasks keep their fixed recipes."""
import math

import numpy as np
import pytest

from gruengine import policy
from gruengine.config import resolve_config
from gruengine.data.dataset import Dataset


def _series(n, T, F=1, classes=3, seed=0, ragged=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    lengths = rng.integers(max(1, T // 3), T + 1, n) if ragged else np.full(n, T)
    return Dataset(x, lengths.astype(np.int64), rng.integers(0, classes, n).astype(np.int64),
                   "classify", classes)


def _tokens(n, T, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(1, 50, (n, T)).astype(np.int64), np.full(n, T, np.int64),
                   rng.integers(0, 2, n).astype(np.int64), "classify", 2)


def _plan(ds, **given):
    c = resolve_config(dict(task="ucr", **given))
    d, reason = policy.make_plan(c, ds)
    c.update(d)
    return c, d, reason


def test_tiny_set_trains_on_everything_with_a_fixed_schedule():
    c, d, reason = _plan(_series(50, 146, ragged=True))
    assert c["val_fraction"] == 0.0 and c["patience"] == 0
    assert c["batch_size"] == 16
    per_epoch = math.ceil(50 / 16)
    assert c["steps"] == policy.STEPS_MIN and c["epochs"] == math.ceil(policy.STEPS_MIN / per_epoch)
    assert c["conv_channels"] == policy.CONV_CHANNELS and c["conv_stride"] == 1
    assert c["series_norm"] and c["channel_norm"] and c["augment"] and c["bidirectional"]
    assert c["pooling"] == "mean" and c["conv_skip"]
    assert c["ensemble"] == policy.ENSEMBLE and "for each of an ensemble of 3 seeds" in reason
    assert reason.startswith("plan: 50 training sequences")
    assert "nothing held out" in reason and "\n" not in reason
    assert set(d) == set(policy.AUTO_KEYS)                # everything was left to the plan


def test_medium_set_of_long_series_is_capped_to_the_time_budget_and_strided():
    ds = _series(300, 1500)
    c, d, reason = _plan(ds)
    assert c["val_fraction"] == 0.0                       # 30 held out would rank nothing
    assert c["conv_stride"] == 2
    per_epoch = math.ceil(300 / 16)
    cost = policy.step_seconds(16, 1500 / 2)
    assert c["epochs"] * per_epoch * cost <= policy.BUDGET_S + per_epoch * cost
    assert c["epochs"] * per_epoch < policy.STEPS_PER_EXAMPLE * 300
    assert "capped to fit" in reason


def test_large_set_holds_out_a_validation_split_and_stops_early():
    c, d, reason = _plan(_tokens(30000, 20))
    assert c["val_fraction"] == policy.VAL_FRACTION and c["patience"] == policy.PATIENCE
    assert c["batch_size"] == 64
    assert c["conv_channels"] == 0 and not c["series_norm"] and not c["augment"]
    assert not c["bidirectional"] and c["pooling"] == "last"
    assert c["ensemble"] == 1 and "ensemble" not in reason
    assert "3000 held out for validation" in reason
    n_fit = 30000 - 3000
    assert c["epochs"] * math.ceil(n_fit / 64) >= policy.STEPS_MIN


def test_ensemble_threshold():
    small, _, _ = _plan(_series(policy.ENSEMBLE_MAX, 8))
    large, _, _ = _plan(_series(policy.ENSEMBLE_MAX + 1, 8))
    assert small["ensemble"] == policy.ENSEMBLE and large["ensemble"] == 1


def test_neighbours_for_small_series_classifiers_only():
    small, _, reason = _plan(_series(policy.ENSEMBLE_MAX, 8))
    large, _, large_reason = _plan(_series(policy.ENSEMBLE_MAX + 1, 8))
    assert small["neighbours"] is True and "mixed with the nearest training series" in reason
    assert large["neighbours"] is False and "nearest" not in large_reason
    tokens, _, _ = _plan(_tokens(200, 20))
    assert tokens["neighbours"] is False
    ds = _series(100, 8)
    regress = Dataset(ds.inputs, ds.lengths, np.zeros((100, 1), np.float32), "regress", None)
    assert _plan(regress)[0]["neighbours"] is False
    off, d, reason = _plan(_series(50, 8), neighbours=False)
    assert off["neighbours"] is False and "neighbours" not in d and "nearest" not in reason
    on, d, _ = _plan(_tokens(200, 20), neighbours=True)
    assert on["neighbours"] is True and "neighbours" not in d


def test_validation_threshold():
    below, _, _ = _plan(_series(1990, 8))
    above, _, _ = _plan(_series(2000, 8))
    assert below["val_fraction"] == 0.0 and above["val_fraction"] == policy.VAL_FRACTION


def test_explicit_options_always_win():
    given = dict(batch_size=7, val_fraction=0.25, patience=5, conv_channels=0, augment=False,
                 bidirectional=False, pooling="max", series_norm=False, warmup=3, epochs=4,
                 ensemble=2)
    c, d, reason = _plan(_series(50, 30), **given)
    for k, v in given.items():
        assert c[k] == v and k not in d
    assert c["steps"] == 4 * math.ceil((50 - round(0.25 * 50)) / 7)   # the epochs' steps
    c, d, _ = _plan(_series(50, 30), steps=123)
    assert c["epochs"] == math.ceil(123 / math.ceil(50 / 16)) and c["steps"] == 123


def test_the_plan_is_deterministic_and_depends_on_the_data_only():
    a = _plan(_series(120, 200, seed=1))
    b = _plan(_series(120, 200, seed=2))
    assert a[1] == b[1] and a[2] == b[2]


def test_synthetic_tasks_keep_their_fixed_recipe():
    for task in ("adding", "copy"):
        c = resolve_config({"task": task})
        assert all(c[k] is not None for k in policy.FIXED)
        assert c["val_fraction"] == 0.1 and c["patience"] == 3 and c["conv_channels"] == 0
    assert resolve_config({"task": "adding"})["epochs"] == 6
    # a budget of steps replaces the task's epochs
    assert resolve_config({"task": "adding", "steps": 50})["epochs"] is None


@pytest.mark.parametrize("bad", [{"steps": 0}, {"time_budget": -1}, {"conv_kernels": []},
                                 {"augment": "yes"}, {"conv_stride": 0}])
def test_bad_budget_options_are_one_line_errors(bad):
    with pytest.raises(ValueError, match=rf"^{next(iter(bad))}: expected") as e:
        resolve_config(dict(task="ucr", **bad))
    assert "\n" not in str(e.value)


def test_expected_batch_steps_is_the_mean_longest_row_of_a_random_batch(rng):
    lengths = rng.integers(5, 400, 57)
    draws = rng.choice(lengths, size=(200000, 8), replace=True).max(axis=1)
    assert policy.expected_batch_steps(lengths, 8) == pytest.approx(draws.mean(), rel=5e-3)
    assert policy.expected_batch_steps(np.full(9, 33), 4) == pytest.approx(33)


def test_series_are_batched_at_random_and_text_in_length_buckets():
    assert _plan(_series(80, 50, ragged=True))[0]["bucket"] == 1
    assert _plan(_tokens(500, 30))[0]["bucket"] == policy.FIXED["bucket"]
    # a few long rows make random batches long: the stride follows the padded length
    ds = _series(100, 1000, ragged=True)
    ds.lengths[:] = 200
    ds.lengths[::10] = 1000
    c = _plan(ds)[0]
    assert c["conv_stride"] == 2 and np.mean(ds.lengths) < policy.LONG
    assert _plan(_series(40, 2000))[0]["conv_stride"] == 4
