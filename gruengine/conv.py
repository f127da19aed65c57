"""ConvFrontEnd: a stack of Conv1d -> BatchNorm (or LayerNorm) -> ReLU blocks over time,
before (or beside) the recurrent stack, as in FCN / GRU-FCN / LSTM-FCN for time-series
classification.

    fe = ConvFrontEnd(in_features=3, channels=64, kernel_sizes=(7, 5, 3), seed=0)
    y, out_lengths = fe.forward(x, lengths)      # x (B, T, 3) -> y (B, T', 64)
    dx = fe.backward(dy)                         # fills fe.grads

Every block keeps the padding contract of its ops (docs/architecture.md, "Convolutional
front end"): steps at and past a row's length are read as zeros and written as zeros, so
a row's outputs are those of the row alone. Block k's convolution has stride
``strides[k]``; a row of length L leaves block k with ceil(L / strides[k]) steps.

``norm="batch"`` (the default; FCN's choice, far ahead of layer norm on the UCR sets, see
docs/benchmarks.md) normalises each channel over every valid step of the batch in training
and keeps running averages (momentum ``MOMENTUM``, unbiased variance, as PyTorch) for eval
mode, where a row's outputs are again its own; ``norm="layer"`` normalises each step over
its channels, the same in both modes.

Parameters (PyTorch's names and shapes, ``nn.Conv1d`` / ``nn.BatchNorm1d`` /
``nn.LayerNorm``): ``conv{k}.weight`` (C_k, C_{k-1}, K_k), ``conv{k}.bias`` (C_k,),
(layer norm only: batch norm cancels a per-channel constant), ``norm{k}.weight`` and
``norm{k}.bias`` (C_k,); buffers (not trained, saved with the model)
``norm{k}.running_mean`` and ``norm{k}.running_var``. Initialised as PyTorch does: conv weight
and bias uniform in +-1/sqrt(C_{k-1} K_k), norm weight 1, bias 0, running mean 0, var 1.
"""
import numpy as np

from . import arrays
from ._checks import check_dtype, check_lengths, check_positive_int, check_state_dict
from .backend import check_device, get_kernels
from .module import Module

__all__ = ["ConvFrontEnd", "out_lengths", "validate_model_config"]

EPS = 1e-5
MOMENTUM = 0.1
NORMS = ("batch", "layer")


def out_lengths(lengths, stride):
    """Steps a row of each length keeps after a convolution of ``stride``: ceil(L / stride)."""
    return (np.asarray(lengths, dtype=np.int64) + stride - 1) // stride


def validate_model_config(c):
    """Check and normalise the front-end fields of a ``models.ModelConfig`` ``c`` in place."""
    c.conv_channels = check_positive_int("conv_channels", c.conv_channels, minimum=0)
    if isinstance(c.conv_kernels, list):     # from JSON: configs compare equal to the built ones
        c.conv_kernels = tuple(c.conv_kernels)
    if c.conv_channels:
        if isinstance(c.conv_kernels, (str, bytes)) or not hasattr(c.conv_kernels, "__len__") \
                or not c.conv_kernels:
            raise ValueError(f"conv_kernels: expected a non-empty list of kernel sizes, "
                             f"got {c.conv_kernels!r}")
        c.conv_kernels = tuple(check_positive_int("conv_kernels", k) for k in c.conv_kernels)
        c.conv_stride = check_positive_int("conv_stride", c.conv_stride)
        if c.conv_norm not in NORMS:
            raise ValueError(f"conv_norm: expected one of {list(NORMS)}, got {c.conv_norm!r}")
    c.conv_skip = bool(c.conv_skip) and bool(c.conv_channels)
    if c.task == "tag" and c.conv_channels and (c.conv_stride != 1 or c.conv_skip):
        raise ValueError(f"conv_stride: a tag model needs one output per input step "
                         f"(conv_stride 1, no conv_skip), got conv_stride {c.conv_stride}")


def _int_tuple(name, v, n=None):
    vals = (v,) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v)
    if n is not None and len(vals) == 1:
        vals = vals * n
    if not vals or (n is not None and len(vals) != n):
        want = f"{n} integers" if n is not None else "at least one integer"
        raise ValueError(f"{name}: expected {want}, got {v!r}")
    return tuple(check_positive_int(name, x) for x in vals)


class ConvFrontEnd(Module):
    """Blocks of (Conv1d 'same' -> LayerNorm over channels -> ReLU) over (B, T, C) inputs.

    ``channels``: one int (every block) or one per block; ``kernel_sizes`` one per block
    (their count is the number of blocks); ``strides`` one int or one per block.
    """

    def __init__(self, in_features, channels=64, kernel_sizes=(7, 5, 3), strides=1,
                 norm="batch", dtype=np.float32, device="cpu", seed=None):
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {list(NORMS)}, got {norm!r}")
        self.norm = norm
        self.in_features = check_positive_int("in_features", in_features)
        self.kernel_sizes = _int_tuple("kernel_sizes", kernel_sizes)
        n = len(self.kernel_sizes)
        self.channels = _int_tuple("channels", channels, n)
        self.strides = _int_tuple("strides", strides, n)
        self.dtype = check_dtype("dtype", dtype)
        self.device = check_device(device)
        self._k = get_kernels(self.device)
        rng = np.random.default_rng(seed)
        self.params = {}
        cin = self.in_features
        for k, (c, K) in enumerate(zip(self.channels, self.kernel_sizes)):
            bound = 1.0 / np.sqrt(cin * K)
            self.params[f"conv{k}.weight"] = rng.uniform(-bound, bound, (c, cin, K)).astype(self.dtype)
            bias = rng.uniform(-bound, bound, c).astype(self.dtype)
            if norm == "layer":     # batch norm removes a per-channel constant: no bias there
                self.params[f"conv{k}.bias"] = bias
            self.params[f"norm{k}.weight"] = np.ones(c, dtype=self.dtype)
            self.params[f"norm{k}.bias"] = np.zeros(c, dtype=self.dtype)
            cin = c
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        # running statistics of batch norm: host arrays (C numbers each), updated per step
        self.buffers = {}
        if norm == "batch":
            for k, c in enumerate(self.channels):
                self.buffers[f"norm{k}.running_mean"] = np.zeros(c, dtype=self.dtype)
                self.buffers[f"norm{k}.running_var"] = np.ones(c, dtype=self.dtype)
        self.training = True
        self._saved = None
        self.sync = None    # shards.BatchStatsSync: batch statistics over every MPI rank's rows
        self._place_params()

    @property
    def out_features(self):
        return self.channels[-1]

    def _batch_stats(self, k, z, L):
        """(mean, rstd) of block k's batch norm, on the module's device: the batch's own in
        training (the running averages move towards them), the running averages in eval."""
        rm, rv = self.buffers[f"norm{k}.running_mean"], self.buffers[f"norm{k}.running_var"]
        if self.training:
            if self.sync is not None:       # the global batch's, over every rank's rows
                mean, var = self.sync.stats(k, z, L)
                n = self.sync.n[k]
            else:
                mean, var = (arrays.to_host(a).astype(np.float64)
                             for a in self._k.batch_norm_stats(z, L))
                n = int(L.sum())
            rm[...] = (1 - MOMENTUM) * rm + MOMENTUM * mean
            rv[...] = (1 - MOMENTUM) * rv + MOMENTUM * var * (n / max(n - 1, 1))
        else:
            mean, var = rm.astype(np.float64), rv.astype(np.float64)
        rstd = 1.0 / np.sqrt(var + EPS)
        return (arrays.on_device_of(np.ascontiguousarray(a, dtype=self.dtype), self.device)
                for a in (mean, rstd))

    def buffer_state(self, prefix=""):
        """{prefix + name: NumPy copy} of the running statistics (empty for layer norm)."""
        return {prefix + k: v.copy() for k, v in self.buffers.items()}

    def load_buffer_state(self, d, prefix=""):
        """Copy the running statistics (keys ``prefix + name``) out of the state dict ``d``
        into the buffers; return ``d`` without them (the parameters' part)."""
        if not isinstance(d, dict):
            raise ValueError(f"state_dict: expected a dict of arrays, got {type(d).__name__}")
        mine = {prefix + k: v for k, v in self.buffers.items()}
        check_state_dict("state_dict", {k: v for k, v in d.items() if k in mine}, mine)
        for k, v in self.buffers.items():
            v[...] = d[prefix + k]
        return {k: v for k, v in d.items() if k not in mine}

    def forward(self, x, lengths=None):
        """x (B, T, in_features) -> (y (B, T', C_last), lengths after the strides (B,) int64)."""
        arrays.check("x", x, (None, None, self.in_features), self.dtype)
        B, T = x.shape[:2]
        L = np.ascontiguousarray(check_lengths("lengths", arrays.to_host(lengths)
                                               if lengths is not None else None, B, T))
        h = arrays.on_device_of(x, self.device)
        self._batch_mode = self.training
        saved = []
        for k, s in enumerate(self.strides):
            p = self.params
            h_in, L_in = h, L
            z = self._k.conv1d_forward(h_in, p[f"conv{k}.weight"], p.get(f"conv{k}.bias"), L_in, s)
            L = out_lengths(L_in, s)
            if self.norm == "layer":
                n, mean, rstd = self._k.layer_norm_forward(z, p[f"norm{k}.weight"],
                                                           p[f"norm{k}.bias"], L, EPS)
            else:
                mean, rstd = self._batch_stats(k, z, L)
                n = self._k.batch_norm_forward(z, p[f"norm{k}.weight"], p[f"norm{k}.bias"],
                                               mean, rstd, L)
            h = self._k.relu_forward(n)
            saved.append((h_in, L_in, z, mean, rstd, h))
        self._saved = saved
        return arrays.host_like(h, x), L

    def backward(self, dy):
        """dy (B, T', C_last) -> dx (B, T, in_features); writes every gradient in ``grads``."""
        if self._saved is None:
            raise RuntimeError("ConvFrontEnd.backward called before forward")
        last = self._saved[-1][5]
        arrays.check("dy", dy, tuple(last.shape), self.dtype)
        g = arrays.on_device_of(dy, self.device)
        p = self.params
        for k in reversed(range(len(self.strides))):
            h_in, L_in, z, mean, rstd, h = self._saved[k]
            L = out_lengths(L_in, self.strides[k])
            g = self._k.relu_backward(g, h)
            if self.norm == "layer":
                g, dgamma, dbeta = self._k.layer_norm_backward(g, z, p[f"norm{k}.weight"],
                                                               mean, rstd, L)
            elif self._batch_mode and self.sync is not None:
                g, dgamma, dbeta = self.sync.backward(k, g, z, p[f"norm{k}.weight"], mean,
                                                      rstd, L)
                g = arrays.on_device_of(g, self.device)
            else:
                g, dgamma, dbeta = self._k.batch_norm_backward(g, z, p[f"norm{k}.weight"],
                                                               mean, rstd, L, self._batch_mode)
            g, dW, db = self._k.conv1d_backward(g, h_in, p[f"conv{k}.weight"], L_in,
                                                self.strides[k])
            arrays.assign(self.grads[f"norm{k}.weight"], dgamma)
            arrays.assign(self.grads[f"norm{k}.bias"], dbeta)
            arrays.assign(self.grads[f"conv{k}.weight"], dW)
            if f"conv{k}.bias" in self.grads:
                arrays.assign(self.grads[f"conv{k}.bias"], db)
        return arrays.host_like(g, dy)
