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
import numpy as np

from .lstm import _RecurrentStack

__all__ = ["MinGRU"]


class MinGRU(_RecurrentStack):
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

    def _param_shapes(self, k, in_size):
        H = self.hidden_size
        return {"weight_z": (H, in_size), "bias_z": (H,), "weight_h": (H, in_size),
                "bias_h": (H,)}

    def _weights(self, k, sfx):
        n, p = self._layer_names(k, sfx), self.params
        return p[n["weight_z"]], p[n["weight_h"]], p[n["bias_z"]], p[n["bias_h"]]

    def forward(self, x, h0=None, lengths=None, return_gates=False):
        """x (B,T,I) -> y (B,T,D*H), h_n (L*D,B,H) [, gates].

        ``return_gates=True`` also returns {"l{k}[_reverse]": {"z", "h", "h_tilde": (B,T,H)}}
        ("h" is the hidden state, "h_tilde" the candidate g(W_h x + b_h)).
        """
        x, lengths = self._check_x(x, lengths)
        B, T, _ = x.shape
        h0 = self._check_state("h0", h0, B)
        D, kern = self.num_directions, self._kernels
        h_n = np.empty_like(h0)
        layers, gates = [], {}
        inp = x
        for k in range(self.num_layers):
            outs, caches = [], []
            for d, sfx in enumerate(self._suffixes()):
                y, hn, cache = kern.mingru_forward(inp, h0[k * D + d], *self._weights(k, sfx),
                                                   lengths, reverse=bool(d))
                h_n[k * D + d] = hn
                outs.append(y)
                caches.append(cache)
                if return_gates:
                    gates[f"l{k}{sfx}"] = kern.mingru_gates(cache)
            out = outs[0] if D == 1 else np.concatenate(outs, axis=2)
            mask = None
            if self.training and self.dropout > 0 and k < self.num_layers - 1:
                mask = self._dropout_mask(out.shape)
                out = out * mask
            layers.append((inp, caches, mask))
            inp = out
        self._saved = {"shape": (B, T), "lengths": lengths, "h0": h0, "layers": layers}
        return (inp, h_n, gates) if return_gates else (inp, h_n)

    def backward(self, dy, dh_n=None):
        """dy (B,T,D*H) or None, dh_n (L*D,B,H) or None -> dx (B,T,I), dh0 (L*D,B,H).

        Writes every parameter gradient into ``self.grads`` (overwrites, in place).
        """
        dy = self._check_dy(dy, dh_n is not None)
        s = self._saved
        dh_n = self._check_state("dh_n", dh_n, s["shape"][0])
        D, H, kern = self.num_directions, self.hidden_size, self._kernels
        dh0 = np.empty_like(dh_n)
        dout = dy
        for k in range(self.num_layers - 1, -1, -1):
            inp, caches, mask = s["layers"][k]
            if mask is not None:
                dout = dout * mask
            dinp = None
            for d, sfx in enumerate(self._suffixes()):
                dy_d = np.ascontiguousarray(dout[:, :, d * H:(d + 1) * H])
                dx, dh, dW_z, dW_h, db_z, db_h = kern.mingru_backward(
                    dy_d, dh_n[k * D + d], inp, s["h0"][k * D + d], *self._weights(k, sfx),
                    s["lengths"], caches[d], reverse=bool(d))
                dh0[k * D + d] = dh
                n = self._layer_names(k, sfx)
                self.grads[n["weight_z"]][...] = dW_z
                self.grads[n["weight_h"]][...] = dW_h
                self.grads[n["bias_z"]][...] = db_z
                self.grads[n["bias_h"]][...] = db_h
                dinp = dx if dinp is None else dinp + dx
            dout = dinp
        return dout, dh0

    __call__ = forward
