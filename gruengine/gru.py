"""The GRU layer: a stack of (optionally bidirectional) GRU layers with PyTorch semantics.

Semantics are those of ``torch.nn.GRU(batch_first=True)`` fed a packed sequence: outputs
past each row's length are zero, ``h_n`` is the state after the row's last valid step, the
reverse direction starts at each row's last valid step, and padding never reaches any output
or gradient. Parameters carry PyTorch's names, shapes, gate order (r, z, n) and default
initialisation (uniform in +-1/sqrt(H)), so ``state_dict`` moves to and from PyTorch as is.
"""
import math

import numpy as np

from . import arrays, backend
from .module import Module
from ._checks import check_dtype, check_lengths, check_positive_int

__all__ = ["GRU"]


class GRU(Module):
    """Multi-layer, optionally bidirectional GRU on NumPy arrays.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bidirectional : bool, default False
    reset_after : bool, default True
        True: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (cuDNN, PyTorch, Keras).
        False: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) (Cho et al. 2014).
    dtype : float32 or float64
    device : 'cpu', 'cuda', 'auto' or 'reference' (the NumPy specification)
    seed : int or None
        Seeds the initialisation and the dropout masks.
    dropout : float in [0, 1)
        Dropout on the outputs of every layer but the last, in training mode only.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 reset_after=True, dtype=np.float32, device="cpu", seed=None, dropout=0.0):
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.bidirectional = bool(bidirectional)
        self.reset_after = bool(reset_after)
        self.dtype = check_dtype("dtype", dtype)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
                or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.device = backend.check_device(device)
        self.training = True
        self.num_directions = 2 if self.bidirectional else 1
        rng = np.random.default_rng(seed)
        H = self.hidden_size
        bound = 1.0 / math.sqrt(H)
        self.params = {}
        for name, shape in self._shapes():
            self.params[name] = rng.uniform(-bound, bound, shape).astype(self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        # dropout masks come from their own stream, seeded from the same seed
        self._dropout_rng = np.random.default_rng(rng.integers(0, 2**63))
        self._ctx = None
        self._place_params()

    # ---- parameters -------------------------------------------------------------------
    def _suffix(self, layer, direction):
        return f"_l{layer}" + ("_reverse" if direction else "")

    def _shapes(self):
        H, D = self.hidden_size, self.num_directions
        for layer in range(self.num_layers):
            inp = self.input_size if layer == 0 else D * H
            for d in range(D):
                sfx = self._suffix(layer, d)
                yield "weight_ih" + sfx, (3 * H, inp)
                yield "weight_hh" + sfx, (3 * H, H)
                yield "bias_ih" + sfx, (3 * H,)
                yield "bias_hh" + sfx, (3 * H,)

    def _weights(self, layer, d):
        # read the dict at every call: a ParamBuffer may re-point entries to flat views
        sfx = self._suffix(layer, d)
        p = self.params
        return (p["weight_ih" + sfx], p["weight_hh" + sfx], p["bias_ih" + sfx], p["bias_hh" + sfx])

    # ---- forward / backward -------------------------------------------------------------
    def forward(self, x, h0=None, lengths=None, return_gates=False):
        """x (B, T, I) -> y (B, T, D*H), h_n (L*D, B, H) [, gates].

        ``lengths`` (B,) integers in [1, T] (None: all T). ``h0`` (L*D, B, H) (None: zeros).
        With ``return_gates=True`` a third value maps "l{k}" / "l{k}_reverse" to a dict of
        (B, T, H) NumPy arrays "r", "z", "n", "h" (zero at padding).
        NumPy x gives NumPy outputs; a CUDA device array x gives device arrays (on
        ``device='cuda'`` nothing then leaves the GPU).
        """
        L, D, H, dev = self.num_layers, self.num_directions, self.hidden_size, self.device
        arrays.check("x", x, (None, None, self.input_size), self.dtype)
        B, T = x.shape[:2]
        if B == 0 or T == 0:
            raise ValueError("x: expected at least one sequence and one step, "
                             f"got shape {x.shape}")
        lengths = np.ascontiguousarray(check_lengths("lengths", arrays.to_host(lengths), B, T))
        if h0 is None:
            h0 = arrays.zeros((L * D, B, H), self.dtype, dev)
        else:
            h0 = arrays.on_device_of(arrays.check("h0", h0, (L * D, B, H), self.dtype), dev)
        K = backend.get_kernels(dev)
        lengths_k = arrays.on_device_of(lengths, dev)
        inp = arrays.on_device_of(x, dev)
        inputs, caches, masks = [], [], []
        h_n = arrays.zeros((L * D, B, H), self.dtype, dev)
        gates = {} if return_gates else None
        for layer in range(L):
            outs = []
            for d in range(D):
                i = layer * D + d
                W = self._weights(layer, d)
                y_d, h_last, cache = K.gru_forward(inp, h0[i], *W, lengths_k, self.reset_after,
                                                   bool(d))
                arrays.assign(h_n[i], h_last)
                outs.append(y_d)
                caches.append(cache)
                if return_gates:
                    key = f"l{layer}" + ("_reverse" if d else "")
                    gates[key] = _gates(*map(arrays.to_host, (inp, y_d, h0[i])), lengths,
                                        *map(arrays.to_host, W), self.reset_after, bool(d))
            inputs.append(inp)
            out = arrays.concat_last(outs)
            mask = None
            if self.training and self.dropout > 0.0 and layer < L - 1:
                keep = self._dropout_rng.random(out.shape) >= self.dropout
                mask = arrays.on_device_of((keep / (1.0 - self.dropout)).astype(self.dtype), dev)
                out = arrays.multiply(out, mask)
            masks.append(mask)
            inp = out
        self._ctx = dict(B=B, T=T, lengths=lengths_k, h0=h0, inputs=inputs, caches=caches,
                         masks=masks)
        y, h_n = arrays.host_like(inp, x), arrays.host_like(h_n, x)
        return (y, h_n, gates) if return_gates else (y, h_n)

    def backward(self, dy, dh_n=None):
        """dy (B, T, D*H) or None, dh_n (L*D, B, H) or None -> dx (B, T, I), dh0 (L*D, B, H).

        Writes the parameter gradients into ``self.grads`` in place (overwriting them).
        dy at padding positions is ignored, as with packed sequences. Results are NumPy
        arrays or device arrays as the given gradients are.
        """
        if self._ctx is None:
            raise ValueError("backward: no forward pass to differentiate; call forward first")
        c = self._ctx
        L, D, H, B, T = self.num_layers, self.num_directions, self.hidden_size, c["B"], c["T"]
        dev = self.device
        if dy is None and dh_n is None:
            raise ValueError("dy: expected an array of shape "
                             f"({B}, {T}, {D * H}) when dh_n is None, got None")
        caller = dy if dy is not None else dh_n
        if dy is None:
            dy = arrays.zeros((B, T, D * H), self.dtype, dev)
        else:
            dy = arrays.on_device_of(arrays.check("dy", dy, (B, T, D * H), self.dtype), dev)
        if dh_n is None:
            dh_n = arrays.zeros((L * D, B, H), self.dtype, dev)
        else:
            dh_n = arrays.on_device_of(arrays.check("dh_n", dh_n, (L * D, B, H), self.dtype), dev)
        K = backend.get_kernels(dev)
        dh0 = arrays.zeros((L * D, B, H), self.dtype, dev)
        d_out = dy
        for layer in range(L - 1, -1, -1):
            if c["masks"][layer] is not None:
                d_out = arrays.multiply(d_out, c["masks"][layer])
            inp = c["inputs"][layer]
            d_inp = None
            for d in range(D):
                i = layer * D + d
                sfx = self._suffix(layer, d)
                W = self._weights(layer, d)
                dy_d = arrays.columns(d_out, d * H, (d + 1) * H)
                dx_d, dh0_d, dW_ih, dW_hh, db_ih, db_hh = K.gru_backward(
                    dy_d, dh_n[i], inp, c["h0"][i], *W, c["lengths"], c["caches"][i],
                    self.reset_after, bool(d))
                arrays.assign(dh0[i], dh0_d)
                for name, g in (("weight_ih", dW_ih), ("weight_hh", dW_hh), ("bias_ih", db_ih),
                                ("bias_hh", db_hh)):
                    arrays.assign(self.grads[name + sfx], g)
                d_inp = dx_d if d_inp is None else arrays.add(d_inp, dx_d)
            d_out = d_inp
        return arrays.host_like(d_out, caller), arrays.host_like(dh0, caller)

    __call__ = forward


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _gates(inp, y, h0, lengths, W_ih, W_hh, b_ih, b_hh, reset_after, reverse):
    # Recompute r, z, n of one layer and direction from its input and output (host side, so
    # it works for every backend).  inp: (B, T, I)  y: (B, T, H)  h0: (B, H)  -> dict of (B, T, H)
    B, T, _ = inp.shape
    H = h0.shape[1]
    valid = (np.arange(T)[None, :] < lengths[:, None])[:, :, None]       # (B, T, 1)
    if reverse:
        h_prev = np.concatenate([y[:, 1:], np.zeros((B, 1, H), y.dtype)], axis=1)
        h_prev[np.arange(B), lengths - 1] = h0
    else:
        h_prev = np.concatenate([h0[:, None], y[:, :-1]], axis=1)
    with np.errstate(over="ignore"):
        gx = inp @ W_ih.T + b_ih
        gh = h_prev @ W_hh[:2 * H].T + b_hh[:2 * H]
        r = _sigmoid(gx[..., :H] + gh[..., :H])
        z = _sigmoid(gx[..., H:2 * H] + gh[..., H:])
        if reset_after:
            n = np.tanh(gx[..., 2 * H:] + r * (h_prev @ W_hh[2 * H:].T + b_hh[2 * H:]))
        else:
            n = np.tanh(gx[..., 2 * H:] + (r * h_prev) @ W_hh[2 * H:].T + b_hh[2 * H:])
    out = {"r": r, "z": z, "n": n, "h": y}
    return {k: np.where(valid, v, 0).astype(y.dtype) for k, v in out.items()}
