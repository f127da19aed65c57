"""ConvFrontEnd: a stack of Conv1d -> LayerNorm -> ReLU blocks over time, before (or beside)
the recurrent stack, as in FCN / GRU-FCN / LSTM-FCN for time-series classification.

    fe = ConvFrontEnd(in_features=3, channels=64, kernel_sizes=(7, 5, 3), seed=0)
    y, out_lengths = fe.forward(x, lengths)      # x (B, T, 3) -> y (B, T', 64)
    dx = fe.backward(dy)                         # fills fe.grads

Every block keeps the padding contract of its ops (docs/architecture.md, "Convolutional
front end"): steps at and past a row's length are read as zeros and written as zeros, so
a row's outputs are those of the row alone. Block k's convolution has stride
``strides[k]``; a row of length L leaves block k with ceil(L / strides[k]) steps.

Parameters (PyTorch's names and shapes, ``nn.Conv1d`` / ``nn.LayerNorm``):
``conv{k}.weight`` (C_k, C_{k-1}, K_k), ``conv{k}.bias`` (C_k,), ``norm{k}.weight`` and
``norm{k}.bias`` (C_k,). Initialised as PyTorch does: conv weight and bias uniform in
+-1/sqrt(C_{k-1} K_k), layer norm weight 1, bias 0.
"""
import numpy as np

from . import arrays
from ._checks import check_dtype, check_lengths, check_positive_int
from .backend import check_device, get_kernels
from .module import Module

__all__ = ["ConvFrontEnd", "out_lengths"]

EPS = 1e-5


def out_lengths(lengths, stride):
    """Steps a row of each length keeps after a convolution of ``stride``: ceil(L / stride)."""
    return (np.asarray(lengths, dtype=np.int64) + stride - 1) // stride


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
                 dtype=np.float32, device="cpu", seed=None):
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
            self.params[f"conv{k}.bias"] = rng.uniform(-bound, bound, c).astype(self.dtype)
            self.params[f"norm{k}.weight"] = np.ones(c, dtype=self.dtype)
            self.params[f"norm{k}.bias"] = np.zeros(c, dtype=self.dtype)
            cin = c
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.training = True
        self._saved = None
        self._place_params()

    @property
    def out_features(self):
        return self.channels[-1]

    def forward(self, x, lengths=None):
        """x (B, T, in_features) -> (y (B, T', C_last), lengths after the strides (B,) int64)."""
        arrays.check("x", x, (None, None, self.in_features), self.dtype)
        B, T = x.shape[:2]
        L = np.ascontiguousarray(check_lengths("lengths", arrays.to_host(lengths)
                                               if lengths is not None else None, B, T))
        h = arrays.on_device_of(x, self.device)
        saved = []
        for k, s in enumerate(self.strides):
            p = self.params
            h_in, L_in = h, L
            z = self._k.conv1d_forward(h_in, p[f"conv{k}.weight"], p[f"conv{k}.bias"], L_in, s)
            L = out_lengths(L_in, s)
            n, mean, rstd = self._k.layer_norm_forward(z, p[f"norm{k}.weight"],
                                                       p[f"norm{k}.bias"], L, EPS)
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
            g, dgamma, dbeta = self._k.layer_norm_backward(g, z, p[f"norm{k}.weight"], mean,
                                                           rstd, L)
            g, dW, db = self._k.conv1d_backward(g, h_in, p[f"conv{k}.weight"], L_in,
                                                self.strides[k])
            arrays.assign(self.grads[f"norm{k}.weight"], dgamma)
            arrays.assign(self.grads[f"norm{k}.bias"], dbeta)
            arrays.assign(self.grads[f"conv{k}.weight"], dW)
            arrays.assign(self.grads[f"conv{k}.bias"], db)
        return arrays.host_like(g, dy)
