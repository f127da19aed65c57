"""EarlyStopping: its decisions against a plain reference on random metric sequences (both
modes, ties, patience 0), None and NaN values, and a state round trip through JSON."""
import json

import numpy as np
import pytest

from gruengine.early_stopping import EarlyStopping


def _reference(values, mode, patience):
    """(improved flags, best, best_epoch, epoch at which it stops or None) by definition:
    an epoch improves when it is strictly better than every earlier one."""
    sign = 1.0 if mode == "min" else -1.0
    improved, best, best_epoch, since, stop = [], None, None, 0, None
    for epoch, v in enumerate(values, 1):
        better = epoch == 1 or sign * v < min(sign * u for u in values[:epoch - 1])
        improved.append(better)
        if better:
            best, best_epoch, since = v, epoch, 0
        else:
            since += 1
            if patience and since >= patience and stop is None:
                stop = epoch
    return improved, best, best_epoch, stop


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("patience", [0, 1, 2, 4])
def test_decisions_match_the_reference(mode, patience):
    rng = np.random.default_rng([5, patience, mode == "max"])
    for _ in range(20):
        # few distinct levels, so ties (which are not improvements) happen often
        values = [float(v) for v in rng.integers(0, 6, size=int(rng.integers(1, 15))) / 4]
        improved, best, best_epoch, stop = _reference(values, mode, patience)
        es = EarlyStopping(mode, patience)
        for epoch, v in enumerate(values, 1):
            assert es.update(v, epoch) == improved[epoch - 1], (values, epoch)
            assert es.should_stop == (stop is not None and epoch >= stop), (values, epoch)
            if es.should_stop:
                break
        if stop is None:
            assert (es.best, es.best_epoch) == (best, best_epoch)
            assert not es.should_stop


def test_patience_zero_never_stops():
    es = EarlyStopping("max", patience=0)
    assert es.update(0.9, 1)
    assert not any(es.update(0.1, e) for e in range(2, 102))
    assert not es.should_stop and es.bad_epochs == 100 and es.best_epoch == 1


def test_none_is_always_an_improvement_and_nan_never_is():
    es = EarlyStopping("min", patience=1)
    assert es.update(None, 1) and es.update(None, 2)        # no validation data
    assert es.best is None and es.best_epoch == 2 and not es.should_stop
    es = EarlyStopping("min", patience=2)
    assert es.update(1.0, 1)
    assert not es.update(float("nan"), 2)
    assert es.update(0.5, 3) and es.best == 0.5 and es.bad_epochs == 0
    assert not es.update(float("nan"), 4) and not es.update(0.5, 5)   # a tie is no gain
    assert es.should_stop and es.best_epoch == 3


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(8)
    values = [float(v) for v in rng.random(12)]
    a = EarlyStopping("max", patience=3)
    for epoch, v in enumerate(values[:5], 1):
        a.update(v, epoch)
    state = json.loads(json.dumps(a.state_dict()))        # what a checkpoint holds
    assert set(state) == {"best", "best_epoch", "bad_epochs", "stopped_early"}
    b = EarlyStopping("max", patience=3)
    b.load_state_dict(state)
    for epoch, v in enumerate(values[5:], 6):
        assert a.update(v, epoch) == b.update(v, epoch)
        assert a.state_dict() == b.state_dict()
    # checkpoints written before 'stopped_early' existed still load
    c = EarlyStopping("min", patience=1)
    c.load_state_dict({"best": 0.25, "best_epoch": 4, "bad_epochs": 0})
    assert not c.should_stop and c.best == 0.25 and c.best_epoch == 4
    assert not c.update(0.3, 5) and c.should_stop


@pytest.mark.parametrize("args, match", [
    (("mean", 3), r"mode: expected one of \['min', 'max'\], got 'mean'"),
    (("min", -1), r"patience: expected an integer >= 0, got -1"),
    (("min", 1.5), r"patience: expected an integer >= 0, got 1.5"),
    (("min", True), r"patience: expected an integer >= 0, got True"),
])
def test_bad_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(*args)


def test_load_state_dict_names_missing_keys():
    with pytest.raises(ValueError, match=r"missing keys \['best_epoch', 'bad_epochs'\]"):
        EarlyStopping().load_state_dict({"best": 1.0})
