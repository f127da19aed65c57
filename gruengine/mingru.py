"""class MinGRU: a stack of (bi)directional minGRU layers with the GRU layer's API.

    m = gruengine.MinGRU(8, 16, num_layers=2, bidirectional=True, seed=0)
    y, h_n = m.forward(x, lengths=lengths)        # y (B,T,D*H); h_n (L*D,B,H)
    dx, dh0 = m.backward(dy)                       # fills m.grads

minGRU (Feng et al., 2024): z_t = σ(W_z x_t + b_z), h̃_t = g(W_h x_t + b_h) with
g(k) = k + 0.5 (k >= 0) else σ(k), h_t = (1 - z_t) h_{t-1} + z_t h̃_t. No recurrent weights:
the whole sequence is one scan (see gruengine/reference/mingru.py and docs/equations.md).

Parameters per layer k and direction (suffix "" or "_reverse"):
    weight_z_l{k} (H, in)   bias_z_l{k} (H,)   -- update gate z
    weight_h_l{k} (H, in)   bias_h_l{k} (H,)   -- candidate h̃
with in = input_size for k = 0 and D*H above; initialised U(-1/sqrt(H), 1/sqrt(H)) from the seed.
h0 defaults to zeros; it enters exactly (A_t ⊙ h0 kept in linear space), never through g(h0).
"""

from .recurrent import RecurrentStack

__all__ = ["MinGRU"]


class MinGRU(RecurrentStack):
    """Multi-layer, optionally bidirectional minGRU with packed-sequence length semantics.

    Parameters
    ----------
    input_size, hidden_size, num_layers : int
    bidirectional : bool
    dtype : float32 or float64
    device : 'cpu' (Numba kernels), 'cuda' (numba.cuda kernels), 'reference' (NumPy log-space
        scan) or 'auto'
    seed : int or None -- weights ~ U(-1/sqrt(H), 1/sqrt(H)); also seeds dropout masks
    dropout : float in [0, 1) -- on the outputs of every layer but the last, in training only
    """

    _op = "mingru"
    _op_weights = ("weight_z", "weight_h", "bias_z", "bias_h")

    def _param_shapes(self, k, in_size):
        H = self.hidden_size
        return {"weight_z": (H, in_size), "bias_z": (H,), "weight_h": (H, in_size),
                "bias_h": (H,)}

    def forward(self, x, h0=None, lengths=None, return_gates=False):
        """x (B,T,I) -> y (B,T,D*H), h_n (L*D,B,H) [, gates].

        ``return_gates=True`` also returns {"l{k}[_reverse]": {"z", "h", "h_tilde": (B,T,H)}}
        ("h" is the hidden state, "h_tilde" the candidate g(W_h x + b_h)).
        """
        return self._forward_h(x, h0, lengths, return_gates)

    def backward(self, dy, dh_n=None):
        """dy (B,T,D*H) or None, dh_n (L*D,B,H) or None -> dx (B,T,I), dh0 (L*D,B,H).

        Writes every parameter gradient into ``self.grads`` (overwrites, in place).
        """
        return self._backward_h(dy, dh_n)

    __call__ = forward
