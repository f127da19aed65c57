"""The GRU layer: a stack of (optionally bidirectional) GRU layers with PyTorch semantics.

Semantics are those of ``torch.nn.GRU(batch_first=True)`` fed a packed sequence: outputs
past each row's length are zero, ``h_n`` is the state after the row's last valid step, the
reverse direction starts at each row's last valid step, and padding never reaches any output
or gradient. Parameters carry PyTorch's names, shapes, gate order (r, z, n) and default
initialisation (uniform in +-1/sqrt(H)), so ``state_dict`` moves to and from PyTorch as is.
The layers, directions, dropout and gradients are ``gruengine.recurrent.RecurrentStack``'s;
this module defines the cell: its parameters, its ops (``gru_*``) and ``reset_after``.
"""
import numpy as np

from .recurrent import RecurrentStack

__all__ = ["GRU"]


class GRU(RecurrentStack):
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

    _op = "gru"
    _op_weights = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 reset_after=True, dtype=np.float32, device="cpu", seed=None, dropout=0.0):
        self.reset_after = bool(reset_after)
        super().__init__(input_size, hidden_size, num_layers=num_layers,
                         bidirectional=bidirectional, dtype=dtype, device=device, seed=seed,
                         dropout=dropout)

    def _param_shapes(self, k, in_size):
        H = self.hidden_size
        return {"weight_ih": (3 * H, in_size), "weight_hh": (3 * H, H),
                "bias_ih": (3 * H,), "bias_hh": (3 * H,)}

    def _op_args(self):
        return (self.reset_after,)

    def forward(self, x, h0=None, lengths=None, return_gates=False):
        """x (B, T, I) -> y (B, T, D*H), h_n (L*D, B, H) [, gates].

        ``lengths`` (B,) integers in [1, T] (None: all T). ``h0`` (L*D, B, H) (None: zeros).
        With ``return_gates=True`` a third value maps "l{k}" / "l{k}_reverse" to a dict of
        (B, T, H) NumPy arrays "r", "z", "n", "h" (zero at padding).
        NumPy x gives NumPy outputs; a CUDA device array x gives device arrays (on
        ``device='cuda'`` nothing then leaves the GPU).
        """
        return self._forward_h(x, h0, lengths, return_gates)

    def backward(self, dy, dh_n=None):
        """dy (B, T, D*H) or None, dh_n (L*D, B, H) or None -> dx (B, T, I), dh0 (L*D, B, H).

        Writes the parameter gradients into ``self.grads`` in place (overwriting them).
        dy at padding positions is ignored, as with packed sequences. Results are NumPy
        arrays or device arrays as the given gradients are.
        """
        return self._backward_h(dy, dh_n)

    __call__ = forward
