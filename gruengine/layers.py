"""Modules around the recurrent core: Embedding, Linear, Pool (over time) and Dropout.

Every module follows the module API of docs/architecture.md:

    module.params / module.grads     dicts of arrays with PyTorch names; optimizers update params
                                     IN PLACE and backward WRITES INTO grads (grads[k][...] = g)
    module.state_dict()              copies;  module.load_state_dict(d) validates, then copies in place
    module.forward(...) / backward(...)   backward uses what the last forward kept
    module.train() / module.eval()   only Dropout behaves differently

Kernels come from ``gruengine.backend.get_kernels(device)`` and read ``self.params[name]`` at
every call, so a ParamBuffer may re-point the dict entries to views of one flat array.
On ``device="cuda"`` parameters, gradients and what backward keeps are device arrays; NumPy
inputs give NumPy outputs and device-array inputs give device arrays (``gruengine.arrays``).
"""
import numpy as np

from . import arrays, backend
from .module import Module
from ._checks import check_array, check_dtype, check_lengths, check_positive_int

__all__ = ["Embedding", "Linear", "Pool", "Dropout", "dropout_mask"]

POOL_MODES = ("last", "mean", "max")


class _Module(Module):
    """Device and kernels of the modules below (the module API comes from ``Module``)."""

    def __init__(self, device):
        self.device = backend.check_device(device)
        self._k = backend.get_kernels(self.device)
        self.params = {}
        self.grads = {}
        self.training = True

    def _require_forward(self, what):
        if getattr(self, what, None) is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")


def _check_float(name, a, ndim=None):
    """``a`` is a float32/float64 ndarray or device array (of rank ``ndim`` when given)."""
    if not isinstance(a, np.ndarray) and not arrays.is_device(a):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    check_dtype(name, a.dtype)
    return arrays.check(name, a, (None,) * (len(a.shape) if ndim is None else ndim))


class Embedding(_Module):
    """Lookup table ``weight`` (V, E); ``forward(ids)`` ids (B, T) int -> (B, T, E).

    Initialised N(0, 1) like ``torch.nn.Embedding``; the ``padding_idx`` row starts at zero
    and never receives gradient. A negative ``padding_idx`` counts from the end (PyTorch).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32,
                 device="cpu", seed=None):
        super().__init__(device)
        V = check_positive_int("num_embeddings", num_embeddings)
        E = check_positive_int("embedding_dim", embedding_dim)
        dtype = check_dtype("dtype", dtype)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) \
                    or not -V <= padding_idx < V:
                raise ValueError(f"padding_idx: expected None or an integer in [-{V}, {V}), "
                                 f"got {padding_idx!r}")
            padding_idx = int(padding_idx) % V
        self.num_embeddings, self.embedding_dim = V, E
        self.padding_idx = padding_idx
        self.dtype = dtype
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((V, E)).astype(dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.params["weight"] = weight
        self.grads["weight"] = np.zeros((V, E), dtype=dtype)
        self._ids = None
        self._place_params()

    def forward(self, ids):
        """ids (B, T) int64 -> (B, T, E), on the side the ids are (NumPy or device array).

        NumPy ids are range-checked here; device ids only for shape and dtype (the caller
        checked them on the host before copying them over, as ``SequenceModel`` does)."""
        if arrays.is_device(ids):
            arrays.check("ids", ids, (None, None), np.int64)
        else:
            if isinstance(ids, np.ndarray) and ids.dtype.kind not in "iu":
                raise ValueError(f"ids: expected an integer array, got dtype {ids.dtype}")
            check_array("ids", ids, (None, None))
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            if ids.size:
                lo, hi = int(ids.min()), int(ids.max())
                if lo < 0 or hi >= self.num_embeddings:
                    bad = lo if lo < 0 else hi
                    raise ValueError(f"ids: expected values in [0, {self.num_embeddings}), got {bad}")
        self._ids = arrays.on_device_of(ids, self.device)
        out = self._k.embedding_forward(self._ids, self.params["weight"])
        return arrays.host_like(out, ids)

    def backward(self, dy):
        self._require_forward("_ids")
        B, T = self._ids.shape
        arrays.check("dy", dy, (B, T, self.embedding_dim), self.dtype)
        pad = -1 if self.padding_idx is None else self.padding_idx
        g = self.grads["weight"]
        if self.device == "cpu" and g.flags.c_contiguous:
            self._k.ops.embedding_backward_into(dy, self._ids, pad, g)   # in place, no copy
            return None
        arrays.assign(g, self._k.embedding_backward(
            arrays.on_device_of(dy, self.device), self._ids, self.num_embeddings, pad))
        return None


class Linear(_Module):
    """``y = x @ weight.T + bias`` over the last axis; x (..., in) -> (..., out).

    PyTorch's default init: weight and bias uniform in +-1/sqrt(in_features).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, device="cpu",
                 seed=None):
        super().__init__(device)
        In = check_positive_int("in_features", in_features)
        Out = check_positive_int("out_features", out_features)
        dtype = check_dtype("dtype", dtype)
        self.in_features, self.out_features = In, Out
        self.dtype = dtype
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(In)
        self.params["weight"] = rng.uniform(-bound, bound, (Out, In)).astype(dtype)
        self.grads["weight"] = np.zeros((Out, In), dtype=dtype)
        if bias:
            self.params["bias"] = rng.uniform(-bound, bound, Out).astype(dtype)
            self.grads["bias"] = np.zeros(Out, dtype=dtype)
        self._zero_bias = None if bias else np.zeros(Out, dtype=dtype)
        self._x = None
        self._place_params()
        if self._zero_bias is not None:
            self._zero_bias = arrays.on_device_of(self._zero_bias, self.device)

    def _bias(self):
        return self.params["bias"] if self._zero_bias is None else self._zero_bias

    def forward(self, x):
        _check_float("x", x)
        if len(x.shape) < 1:
            check_array("x", x, (None, self.in_features), self.dtype)
        arrays.check("x", x, (None,) * (len(x.shape) - 1) + (self.in_features,), self.dtype)
        self._lead = tuple(x.shape)[:-1]
        rows = int(np.prod(self._lead))
        self._x = arrays.on_device_of(x, self.device).reshape(rows, self.in_features)
        y = self._k.linear_forward(self._x, self.params["weight"], self._bias())
        return arrays.host_like(y, x).reshape(self._lead + (self.out_features,))

    def backward(self, dy):
        self._require_forward("_x")
        arrays.check("dy", dy, self._lead + (self.out_features,), self.dtype)
        rows = self._x.shape[0]
        dx, dW, db = self._k.linear_backward(
            arrays.on_device_of(dy, self.device).reshape(rows, self.out_features), self._x,
            self.params["weight"])
        arrays.assign(self.grads["weight"], dW)
        if self._zero_bias is None:
            arrays.assign(self.grads["bias"], db)
        return arrays.host_like(dx, dy).reshape(self._lead + (self.in_features,))


class Pool(_Module):
    """Pool a sequence over its valid steps: y (B, T, H), lengths (B,) -> (B, H).

    'last': the output at step lengths-1; 'mean': the mean over steps < lengths;
    'max': the maximum over steps < lengths (the gradient goes to the first argmax).
    Padding (t >= lengths[b]) never affects the output and gets zero gradient. No params.
    """

    def __init__(self, mode, device="cpu"):
        super().__init__(device)
        if mode not in POOL_MODES:
            raise ValueError(f"mode: expected one of 'last', 'mean', 'max', got {mode!r}")
        self.mode = mode
        self._cache = None

    def forward(self, y, lengths=None):
        _check_float("y", y, ndim=3)
        B, T, H = y.shape
        lengths = np.ascontiguousarray(check_lengths("lengths", arrays.to_host(lengths), B, T))
        lengths = arrays.on_device_of(lengths, self.device)
        p, idx = self._k.pool_forward(arrays.on_device_of(y, self.device), lengths, self.mode)
        self._cache = (lengths, idx, T, H, y.dtype)
        return arrays.host_like(p, y)

    def backward(self, dp):
        self._require_forward("_cache")
        lengths, idx, T, H, dtype = self._cache
        arrays.check("dp", dp, (lengths.shape[0], H), dtype)
        dy = self._k.pool_backward(arrays.on_device_of(dp, self.device), lengths, self.mode, idx, T)
        return arrays.host_like(dy, dp)


def dropout_mask(shape, p, rng, dtype):
    """Mask of ``shape``: each entry 0 with probability p, else 1/(1-p) (inverted dropout).

    ``rng`` is a ``numpy.random.Generator``; the same generator state gives the same mask.
    """
    # one draw from rng seeds a counter-based hash of every element's index
    # (kernels.cpu.ops.dropout_keep_mask): parallel, ~20x faster than rng.random(shape)
    from .kernels.cpu.ops import dropout_keep_mask
    seed = np.uint64(rng.integers(0, 2**63))
    threshold = np.uint64(float(p) * 2.0**53)
    scale = np.dtype(dtype).type(1.0 / (1.0 - p))
    window = getattr(rng, "window", None)
    if window is not None:      # shards.RowWindow: these rows of a larger batch's mask
        return window.keep_mask(shape, seed, threshold, scale, dtype)
    mask = np.empty(int(np.prod(shape)), dtype=dtype)
    dropout_keep_mask(seed, threshold, scale, mask)
    return mask.reshape(shape)


class Dropout(_Module):
    """Inverted dropout: in training, x * mask with mask in {0, 1/(1-p)}; identity in eval.

    Masks are drawn from ``numpy.random.default_rng(seed)``, so a seed fixes every mask.
    """

    def __init__(self, p, seed=None, device="cpu"):
        super().__init__(device)
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) \
                or not 0.0 <= p < 1.0:
            raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self._rng = np.random.default_rng(seed)
        self._mask = None
        self._shape = None

    def forward(self, x):
        _check_float("x", x)
        self._shape = x.shape
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        mask = dropout_mask(tuple(x.shape), self.p, self._rng, x.dtype)
        self._mask = arrays.on_device_of(mask, self.device)
        out = self._k.dropout_forward(arrays.on_device_of(x, self.device), self._mask)
        return arrays.host_like(out, x)

    def backward(self, dy):
        self._require_forward("_shape")
        arrays.check("dy", dy, self._shape)
        if self._mask is None:
            return dy
        arrays.check("dy", dy, self._shape, self._mask.dtype)
        out = self._k.dropout_backward(arrays.on_device_of(dy, self.device), self._mask)
        return arrays.host_like(out, dy)
