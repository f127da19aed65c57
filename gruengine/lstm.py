"""class LSTM: a stack of (bi)directional LSTM layers with PyTorch names, shapes and semantics.

    lstm = gruengine.LSTM(8, 16, num_layers=2, bidirectional=True, seed=0)
    y, (h_n, c_n) = lstm.forward(x, lengths=lengths)       # y (B,T,D*H); h_n, c_n (L*D,B,H)
    dx, (dh0, dc0) = lstm.backward(dy)                      # fills lstm.grads

Parameters per layer k and direction (suffix "" or "_reverse"): weight_ih_l{k} (4H, in),
weight_hh_l{k} (4H, H), bias_ih_l{k} (4H,), bias_hh_l{k} (4H,), gate order i, f, g, o.
``_RecurrentStack`` holds what every recurrent stack shares (parameters, state_dict, dropout
between layers, train/eval); ``gruengine.mingru.MinGRU`` reuses it.
"""
import numpy as np

from . import arrays
from ._checks import check_dtype, check_lengths, check_positive_int
from .backend import check_device, get_kernels
from .module import Module

__all__ = ["LSTM"]


class _RecurrentStack(Module):
    """Parameters, state_dict, train/eval and inter-layer dropout of a recurrent stack.

    Subclasses set ``_op`` (the kernel name prefix), ``_op_weights`` (parameter names in the
    op's argument order) and ``_param_shapes(k, in_size)``; ``_stack_forward`` and
    ``_stack_backward`` run the layers and directions for any number of recurrent states.
    """

    _op = None

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dtype=np.float32, device="cpu", seed=None, dropout=0.0):
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.dtype = check_dtype("dtype", dtype)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
                or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.device = check_device(device)
        self._kernels = get_kernels(self.device)
        for name in (f"{self._op}_forward", f"{self._op}_backward", f"{self._op}_gates"):
            if not hasattr(self._kernels, name):
                raise ValueError(f"device: {type(self).__name__} has no {self.device!r} kernels "
                                 f"(missing {name}); use device='cpu'")
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.hidden_size)
        self.params = {}
        for k in range(self.num_layers):
            in_size = self.input_size if k == 0 else self.num_directions * self.hidden_size
            for sfx in self._suffixes():
                for name, shape in self._param_shapes(k, in_size).items():
                    w = rng.uniform(-bound, bound, size=shape)
                    self.params[f"{name}_l{k}{sfx}"] = w.astype(self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        # dropout masks come from their own stream, seeded from the same seed (as in GRU)
        self._dropout_rng = np.random.default_rng(rng.integers(0, 2**63))
        self.training = True
        self._saved = None
        self._place_params()

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def _check_x(self, x, lengths):
        # -> x where this stack computes, lengths (B,) int64 on the host
        arrays.check("x", x, (None, None, self.input_size), self.dtype)
        B, T, _ = x.shape
        if B == 0 or T == 0:
            raise ValueError(f"x: expected at least one sequence and one step, got shape {x.shape}")
        lengths = check_lengths("lengths", arrays.to_host(lengths), B, T)
        return arrays.on_device_of(x, self.device), lengths

    def _check_state(self, name, a, B):
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if a is None:
            return arrays.zeros(shape, self.dtype, self.device)
        return arrays.on_device_of(arrays.check(name, a, shape, self.dtype), self.device)

    def _check_dy(self, dy, have_dh_n):
        if self._saved is None:
            raise ValueError("backward: no forward pass to differentiate; call forward first")
        B, T = self._saved["shape"]
        shape = (B, T, self.num_directions * self.hidden_size)
        if dy is None:
            if not have_dh_n:
                raise ValueError(f"dy: expected an array of shape {shape} when the state "
                                 "gradient is None, got None")
            return arrays.zeros(shape, self.dtype, self.device)
        return arrays.on_device_of(arrays.check("dy", dy, shape, self.dtype), self.device)

    def _dropout_mask(self, shape):
        keep = self._dropout_rng.random(shape) >= self.dropout
        return arrays.on_device_of((keep / (1.0 - self.dropout)).astype(self.dtype), self.device)

    def _weights(self, k, sfx):
        # layer k's weights in the op's argument order (read at every call: a ParamBuffer
        # may re-point the dict entries to views of a flat buffer)
        return tuple(self.params[f"{name}_l{k}{sfx}"] for name in self._op_weights)

    def _stack_forward(self, x, lengths, states, return_gates):
        # x (B,T,I) checked, on this stack's device; lengths (B,) host; states: tuple of
        # (L*D,B,H) initial states (h0[, c0]) on the device.
        # -> y (B,T,D*H), tuple of final states (device side), gates dict (NumPy)
        B, T, _ = x.shape
        D, kern = self.num_directions, self._kernels
        op_forward = getattr(kern, f"{self._op}_forward")
        op_gates = getattr(kern, f"{self._op}_gates")
        finals = tuple(arrays.zeros(s0.shape, self.dtype, self.device) for s0 in states)
        layers, gates = [], {}
        lengths = arrays.on_device_of(lengths, self.device)
        inp = x
        for k in range(self.num_layers):
            outs, caches = [], []
            for d, sfx in enumerate(self._suffixes()):
                i = k * D + d
                y, *fin, cache = op_forward(inp, *(s0[i] for s0 in states),
                                            *self._weights(k, sfx), lengths, reverse=bool(d))
                for f, v in zip(finals, fin):
                    arrays.assign(f[i], v)
                outs.append(y)
                caches.append(cache)
                if return_gates:
                    gates[f"l{k}{sfx}"] = {g: arrays.to_host(a) for g, a in op_gates(cache).items()}
            out = arrays.concat_last(outs)
            mask = None
            if self.training and self.dropout > 0 and k < self.num_layers - 1:
                mask = self._dropout_mask(out.shape)
                out = arrays.multiply(out, mask)
            layers.append((inp, caches, mask))
            inp = out
        self._saved = {"shape": (B, T), "lengths": lengths, "states": states, "layers": layers}
        return inp, finals, gates

    def _stack_backward(self, dy, dfinals):
        # dy (B,T,D*H) checked; dfinals: tuple of (L*D,B,H) final-state gradients.
        # -> dx (B,T,I), tuple of initial-state gradients; writes self.grads in place
        s = self._saved
        D, H = self.num_directions, self.hidden_size
        op_backward = getattr(self._kernels, f"{self._op}_backward")
        dstates = tuple(arrays.zeros(a.shape, self.dtype, self.device) for a in dfinals)
        nst = len(dfinals)
        dout = dy
        for k in range(self.num_layers - 1, -1, -1):
            inp, caches, mask = s["layers"][k]
            if mask is not None:
                dout = arrays.multiply(dout, mask)
            dinp = None
            for d, sfx in enumerate(self._suffixes()):
                i = k * D + d
                dy_d = arrays.columns(dout, d * H, (d + 1) * H)
                dx, *rest = op_backward(dy_d, *(a[i] for a in dfinals), inp,
                                        *(s0[i] for s0 in s["states"]), *self._weights(k, sfx),
                                        s["lengths"], caches[d], reverse=bool(d))
                for a, v in zip(dstates, rest[:nst]):
                    arrays.assign(a[i], v)
                for name, g in zip(self._op_weights, rest[nst:]):
                    arrays.assign(self.grads[f"{name}_l{k}{sfx}"], g)
                dinp = dx if dinp is None else arrays.add(dinp, dx)
            dout = dinp
        return dout, dstates


class LSTM(_RecurrentStack):
    """Multi-layer, optionally bidirectional LSTM (PyTorch ``nn.LSTM(batch_first=True)`` semantics).

    Parameters
    ----------
    input_size, hidden_size, num_layers : int
    bidirectional : bool
    dtype : float32 or float64
    device : 'cpu' (Numba kernels), 'cuda' (numba.cuda kernels), 'reference' (NumPy spec) or 'auto'
    seed : int or None -- weights ~ U(-1/sqrt(H), 1/sqrt(H)); also seeds dropout masks
    dropout : float in [0, 1) -- on the outputs of every layer but the last, in training only
    """

    _op = "lstm"
    _op_weights = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def _param_shapes(self, k, in_size):
        H = self.hidden_size
        return {"weight_ih": (4 * H, in_size), "weight_hh": (4 * H, H),
                "bias_ih": (4 * H,), "bias_hh": (4 * H,)}

    def forward(self, x, h0_c0=None, lengths=None, return_gates=False):
        """x (B,T,I) -> y (B,T,D*H), (h_n, c_n) each (L*D,B,H) [, gates].

        ``h0_c0``: None (zeros) or a pair (h0, c0), each (L*D,B,H) or None.
        ``lengths``: (B,) ints in [1,T]; outputs past a length are zero, h_n/c_n are the state
        at the last valid step, the reverse direction starts there (packed-sequence semantics).
        ``return_gates=True`` also returns {"l{k}[_reverse]": {"i","f","g","o","c","h": (B,T,H)}}.
        NumPy x gives NumPy outputs; a CUDA device array x gives device arrays.
        """
        caller = x
        x, lengths = self._check_x(x, lengths)
        B = x.shape[0]
        if h0_c0 is None:
            h0_c0 = (None, None)
        if not isinstance(h0_c0, (tuple, list)) or len(h0_c0) != 2:
            raise ValueError(f"h0_c0: expected None or a pair (h0, c0), got {type(h0_c0).__name__}")
        h0 = self._check_state("h0_c0[0]", h0_c0[0], B)
        c0 = self._check_state("h0_c0[1]", h0_c0[1], B)
        y, (h_n, c_n), gates = self._stack_forward(x, lengths, (h0, c0), return_gates)
        y, h_n, c_n = (arrays.host_like(a, caller) for a in (y, h_n, c_n))
        return (y, (h_n, c_n), gates) if return_gates else (y, (h_n, c_n))

    def backward(self, dy, dh_n_dc_n=None):
        """dy (B,T,D*H), optional (dh_n, dc_n) each (L*D,B,H) or None -> dx (B,T,I), (dh0, dc0).

        ``dy`` may be None when a state gradient is given. dy at padding positions is ignored.
        Writes every parameter gradient into ``self.grads`` (overwrites, in place).
        """
        if dh_n_dc_n is None:
            dh_n_dc_n = (None, None)
        if not isinstance(dh_n_dc_n, (tuple, list)) or len(dh_n_dc_n) != 2:
            raise ValueError("dh_n_dc_n: expected None or a pair (dh_n, dc_n), "
                             f"got {type(dh_n_dc_n).__name__}")
        caller = next((a for a in (dy, *dh_n_dc_n) if a is not None), None)
        dy = self._check_dy(dy, any(a is not None for a in dh_n_dc_n))
        B = self._saved["shape"][0]
        dh_n = self._check_state("dh_n_dc_n[0]", dh_n_dc_n[0], B)
        dc_n = self._check_state("dh_n_dc_n[1]", dh_n_dc_n[1], B)
        dx, (dh0, dc0) = self._stack_backward(dy, (dh_n, dc_n))
        dx, dh0, dc0 = (arrays.host_like(a, caller) for a in (dx, dh0, dc0))
        return dx, (dh0, dc0)

    __call__ = forward
