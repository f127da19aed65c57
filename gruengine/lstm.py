"""class LSTM: a stack of (bi)directional LSTM layers with PyTorch names, shapes and semantics.

    lstm = gruengine.LSTM(8, 16, num_layers=2, bidirectional=True, seed=0)
    y, (h_n, c_n) = lstm.forward(x, lengths=lengths)       # y (B,T,D*H); h_n, c_n (L*D,B,H)
    dx, (dh0, dc0) = lstm.backward(dy)                      # fills lstm.grads

Parameters per layer k and direction (suffix "" or "_reverse"): weight_ih_l{k} (4H, in),
weight_hh_l{k} (4H, H), bias_ih_l{k} (4H,), bias_hh_l{k} (4H,), gate order i, f, g, o.
``forget_bias`` (Jozefowicz et al. 2015 use 1) is added to the forget block of ``bias_ih``
only, after PyTorch's uniform draw, so the forget gate's effective bias (b_ih + b_hh) starts
near it and a torch ``nn.LSTM`` given the same state_dict computes the same function.
The layers, directions, dropout and gradients are ``gruengine.recurrent.RecurrentStack``'s;
this module defines the cell: its parameters, its ops (``lstm_*``) and the (h, c) state pair.
"""
import math

import numpy as np

from . import arrays
from .recurrent import RecurrentStack

__all__ = ["LSTM"]


class LSTM(RecurrentStack):
    """Multi-layer, optionally bidirectional LSTM (PyTorch ``nn.LSTM(batch_first=True)`` semantics).

    Parameters
    ----------
    input_size, hidden_size, num_layers : int
    bidirectional : bool
    dtype : float32 or float64
    device : 'cpu' (Numba kernels), 'cuda' (numba.cuda kernels), 'reference' (NumPy spec) or 'auto'
    seed : int or None -- weights ~ U(-1/sqrt(H), 1/sqrt(H)); also seeds dropout masks
    dropout : float in [0, 1) -- on the outputs of every layer but the last, in training only
    forget_bias : finite float -- added to the forget-gate block bias_ih[H:2H] of every layer
        and direction at initialisation (0 = PyTorch's initialisation; 1 = Jozefowicz et al.)
    """

    _op = "lstm"
    _op_weights = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dtype=np.float32, device="cpu", seed=None, dropout=0.0, forget_bias=0.0):
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float, np.integer,
                                                                         np.floating)) \
                or not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias: expected a finite number, got {forget_bias!r}")
        super().__init__(input_size, hidden_size, num_layers=num_layers,
                         bidirectional=bidirectional, dtype=dtype, device=device, seed=seed,
                         dropout=dropout)
        self.forget_bias = float(forget_bias)
        if self.forget_bias:
            # after the seeded draws, so forget_bias changes no other parameter of a seed
            H = self.hidden_size
            for name, p in self.params.items():
                if name.startswith("bias_ih_"):
                    b = arrays.to_host(p).copy()
                    b[H:2 * H] += self.dtype.type(self.forget_bias)
                    arrays.assign(p, b)

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
        dy = self._check_dy(dy, any(a is not None for a in dh_n_dc_n), "dh_n_dc_n")
        B = self._saved["shape"][0]
        dh_n = self._check_state("dh_n_dc_n[0]", dh_n_dc_n[0], B)
        dc_n = self._check_state("dh_n_dc_n[1]", dh_n_dc_n[1], B)
        dx, (dh0, dc0) = self._stack_backward(dy, (dh_n, dc_n))
        dx, dh0, dc0 = (arrays.host_like(a, caller) for a in (dx, dh0, dc0))
        return dx, (dh0, dc0)

    __call__ = forward
