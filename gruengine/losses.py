"""Losses with their gradient, validated: each returns ``(loss: float, dgrad: ndarray)``.

    loss, dlogits = losses.softmax_cross_entropy(logits, targets)          # (N, C), (N,) int
    loss, dlogits = losses.bce_with_logits(logits, targets)                # (N,) or (N, K) float
    loss, dpred = losses.mse(pred, target)                                 # (N,) or (N, K)
    acc = losses.accuracy(logits, targets)

Every loss is a weighted mean over rows: ``weight`` (N,) holds one non-negative weight per
row (None = all ones), of the same dtype as the predictions; ``dgrad`` has the shape and
dtype of the predictions and is the gradient of the returned loss. With class weights
``cw``, ``weight=cw[targets]`` gives PyTorch's ``F.cross_entropy(..., weight=cw)``.
NumPy predictions run on the Numba CPU kernels; CUDA device-array predictions run on the
CUDA kernels and ``dgrad`` stays on the device (targets and weights may be NumPy: they are
checked on the host and copied over). Nothing is cast silently.
"""
import numpy as np

from . import arrays
from ._checks import check_array, check_dtype
from .backend import get_kernels


__all__ = ["softmax_cross_entropy", "bce_with_logits", "mse", "accuracy"]


def _kernels(pred):
    # the kernels of the predictions' side: CUDA for device arrays, else the CPU's
    return get_kernels("cuda" if arrays.is_device(pred) else "cpu")


def _check_pred(name, a, ndims):
    if not isinstance(a, np.ndarray) and not arrays.is_device(a):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    check_dtype(name, a.dtype)
    ndim = len(a.shape)
    if ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name}: expected a {want} array, got {ndim}-D array of shape "
                         f"{tuple(a.shape)}")
    arrays.check(name, a, (None,) * ndim)
    if a.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row, got shape {tuple(a.shape)}")
    return a if arrays.is_device(a) else np.ascontiguousarray(a)


def _check_class_targets(targets, n, num_classes):
    targets = arrays.to_host(targets)
    if isinstance(targets, np.ndarray) and targets.dtype.kind not in "iu":
        raise ValueError(f"targets: expected an integer array of class indices, "
                         f"got dtype {targets.dtype}")
    check_array("targets", targets, (n,))
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"targets: expected class indices in [0, {num_classes}), "
                         f"got {lo if lo < 0 else hi}")
    return np.ascontiguousarray(targets, dtype=np.int64)


def _check_weight(weight, n, dtype):
    if weight is None:
        return None
    weight = arrays.to_host(weight)
    check_array("weight", weight, (n,), dtype)
    if (weight < 0).any():
        raise ValueError(f"weight: expected non-negative values, got {float(weight.min())}")
    if not weight.sum() > 0:
        raise ValueError("weight: expected a positive sum, got 0 (every row weighted zero)")
    return np.ascontiguousarray(weight)


def softmax_cross_entropy(logits, targets, weight=None):
    """Weighted mean of -log softmax(logits)[targets].

    logits (N, C) float; targets (N,) integer in [0, C); weight (N,) or None.
    Returns ``(loss, dlogits)`` with dlogits (N, C).
    """
    logits = _check_pred("logits", logits, (2,))
    N, C = logits.shape
    targets = _check_class_targets(targets, N, C)
    weight = _check_weight(weight, N, logits.dtype)
    return _kernels(logits).softmax_cross_entropy(logits, targets, weight)


def bce_with_logits(logits, targets, weight=None):
    """Weighted mean binary cross-entropy of sigmoid(logits) against targets in [0, 1].

    logits (N,) or (N, K) float; targets of the same shape and dtype; weight (N,) per row.
    Returns ``(loss, dlogits)`` with dlogits shaped like logits.
    """
    logits = _check_pred("logits", logits, (1, 2))
    targets = check_array("targets", arrays.to_host(targets), tuple(logits.shape), logits.dtype)
    if (targets < 0).any() or (targets > 1).any():
        bad = float(targets.min()) if (targets < 0).any() else float(targets.max())
        raise ValueError(f"targets: expected probabilities in [0, 1], got {bad}")
    N = logits.shape[0]
    weight = _check_weight(weight, N, logits.dtype)
    K = logits.size // N
    if weight is not None and K > 1:
        weight = np.repeat(weight, K)         # one weight per row -> per element, row-major
    loss, d = _kernels(logits).bce_with_logits(logits.reshape(N * K),
                                               np.ascontiguousarray(targets).reshape(N * K), weight)
    return loss, d.reshape(logits.shape)


def mse(pred, target, weight=None):
    """Weighted mean squared error over elements: sum_i w_i |pred_i - target_i|^2 / (K sum w).

    pred (N,) or (N, K) float; target of the same shape and dtype; weight (N,) per row.
    Returns ``(loss, dpred)`` with dpred shaped like pred.
    """
    pred = _check_pred("pred", pred, (1, 2))
    N = pred.shape[0]
    K = pred.size // N
    if arrays.is_device(target):
        target = arrays.check("target", target, tuple(pred.shape), pred.dtype)
    else:
        target = np.ascontiguousarray(check_array("target", target, tuple(pred.shape), pred.dtype))
    weight = _check_weight(weight, N, pred.dtype)
    loss, d = _kernels(pred).mse(pred.reshape(N, K), target.reshape(N, K), weight)
    return loss, d.reshape(pred.shape)


def accuracy(logits, targets, weight=None):
    """Weighted fraction of rows predicted right, as a float in [0, 1].

    logits (N, C) with C >= 2: the prediction is the argmax, targets (N,) class indices.
    logits (N,) or (N, 1): binary, the prediction is logits > 0 and targets (N,) or the
    shape of logits hold 0/1 labels (integer or float; a float counts as 1 when > 0.5).
    """
    logits = _check_pred("logits", arrays.to_host(logits), (1, 2))
    targets = arrays.to_host(targets)
    N = logits.shape[0]
    weight = _check_weight(weight, N, logits.dtype)
    if logits.ndim == 2 and logits.shape[1] >= 2:
        targets = _check_class_targets(targets, N, logits.shape[1])
        right = logits.argmax(axis=1) == targets
    else:
        if not isinstance(targets, np.ndarray) or targets.shape not in ((N,), (N, 1)):
            check_array("targets", targets, (N,))            # raises the standard message
        check_array("targets", targets, targets.shape)       # finite
        right = (logits.reshape(N) > 0) == (targets.reshape(N) > 0.5)
    if weight is None:
        return float(right.mean())
    return float((weight * right).sum(dtype=np.float64) / weight.sum(dtype=np.float64))
