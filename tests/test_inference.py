"""evaluate against a NumPy reference of the metrics over the whole dataset in one batch (its
length-sorted batching must not change them), MetricSums' checkpoint state, baseline."""
import numpy as np
import pytest

from gruengine.data.dataset import Dataset
from gruengine.inference import MetricSums, baseline, evaluate, val_metric
from gruengine.models import SequenceModel


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _case(task, rng, n=23, T=7, F=3, C=4):
    lengths = rng.integers(1, T + 1, size=n).astype(np.int64)
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0
    if task == "regress":
        y, k = rng.standard_normal((n, 2)).astype(np.float32), 2
    elif task == "classify":
        y, k = rng.integers(0, C, size=n).astype(np.int64), C
    else:
        y, k = rng.integers(0, C, size=(n, T)).astype(np.int64), C
    ds = Dataset(x, lengths, y, task, num_classes=None if task == "regress" else C)
    model = SequenceModel(dict(input="features", num_features=F, hidden_size=5, num_outputs=k,
                               task=task, pooling="mean", bidirectional=True,
                               seed=int(rng.integers(99)), dtype="float64"))
    return ds, model


@pytest.mark.parametrize("task", ["regress", "classify", "tag"])
def test_evaluate_matches_a_one_batch_reference(task):
    rng = np.random.default_rng(["regress", "classify", "tag"].index(task))
    ds, model = _case(task, rng)
    model.train()
    res = evaluate(model, ds, batch_size=4)               # 6 batches, the last one short
    assert model.training                                 # evaluate restores the mode
    out = model.eval().forward(ds.inputs.astype(np.float64), ds.lengths)
    y = ds.targets
    if task == "regress":
        mse = float(((out - y) ** 2).mean())
        ref = {"loss": mse, "mse": mse}
    elif task == "classify":
        ref = {"loss": float(-_log_softmax(out)[np.arange(len(y)), y].mean()),
               "acc": float((out.argmax(1) == y).mean())}
    else:
        mask = np.arange(y.shape[1])[None, :] < ds.lengths[:, None]
        nll = -np.take_along_axis(_log_softmax(out), y[..., None], axis=2)[..., 0]
        ref = {"loss": float(nll[mask].mean()), "acc": float((out.argmax(2) == y)[mask].mean())}
    assert set(res) == set(ref) | {"n", "tokens"}
    assert res["n"] == len(ds) and res["tokens"] == int(ds.lengths.sum())
    for k, v in ref.items():
        assert res[k] == pytest.approx(v, rel=1e-10, abs=1e-12), k


def test_metric_sums_state_is_the_checkpoint_format():
    rng = np.random.default_rng(1)
    a = MetricSums()
    losses = rng.random(5)
    counts = rng.integers(1, 9, size=5)
    for loss, c in zip(losses, counts):
        a.add(float(loss), {"correct": int(c) // 2, "count": int(c)}, 3 * int(c), 0.25)
    state = a.state_dict()
    assert set(state) == {"loss_sum", "weight", "correct", "sq_err", "count", "tokens", "seconds"}
    b = MetricSums(**state)
    assert b.state_dict() == state
    assert b.loss() == pytest.approx(float((losses * counts).sum() / counts.sum()), rel=1e-12)
    assert b.tok_s() == pytest.approx(3 * counts.sum() / 1.25)
    assert MetricSums().loss() is None and MetricSums().tok_s() is None


def test_baseline_scores_ignoring_the_input():
    rng = np.random.default_rng(5)
    L = np.full(6, 3, np.int64)
    x = np.zeros((6, 3, 1), np.float32)
    train = Dataset(x, L, np.array([2, 2, 1, 0, 2, 1]), "classify", num_classes=3)
    test = Dataset(x, L, np.array([2, 0, 2, 1, 2, 2]), "classify", num_classes=3)
    assert baseline("classify", train, test) == {"acc": pytest.approx(4 / 6)}
    yt, ys = rng.standard_normal((6, 2)).astype(np.float32), rng.standard_normal((6, 2))
    train = Dataset(x, L, yt, "regress")
    test = Dataset(x, L, ys.astype(np.float32), "regress")
    ref = ((ys.astype(np.float32) - yt.astype(np.float64).mean(0)) ** 2).mean()
    assert baseline("regress", train, test)["mse"] == pytest.approx(ref, rel=1e-12)
    assert val_metric("regress") == ("mse", "min") and val_metric("tag") == ("acc", "max")
