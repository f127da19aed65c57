"""RecurrentStack: layers x directions of one recurrent cell, shared by GRU, LSTM and MinGRU.

A cell is defined by its one-layer, one-direction ops, which every backend (``reference``,
``kernels.cpu``, ``kernels.cuda``) exposes under the same names and argument order:

    <op>_forward(x, *states0, *weights, lengths, *extra, reverse=False)
        -> y (B,T,H), *final_states (B,H), cache
    <op>_backward(dy, *dfinal_states, x, *states0, *weights, lengths, cache, *extra, reverse=False)
        -> dx (B,T,I), *dstates0 (B,H), *dweights
    <op>_gates(cache) -> {name: (B,T,H)}, zero past each row's length

``states0`` is (h0,) or (h0, c0); ``extra`` holds the cell's options (the GRU's reset_after).
The stack owns the parameters (PyTorch names ``<weight>_l{k}[_reverse]``), runs the layers and
directions, applies dropout between layers in training mode and writes the gradients.
A subclass sets ``_op``, ``_op_weights`` and ``_param_shapes`` and, when its ops take
options, ``_op_args``; its public ``forward``/``backward`` only parse the state arguments.
"""
import numpy as np

from . import arrays
from ._checks import check_dtype, check_lengths, check_positive_int
from .backend import check_device, get_kernels
from .module import Module

__all__ = ["RecurrentStack"]


class RecurrentStack(Module):
    """Parameters, state_dict, train/eval, inter-layer dropout and the layer/direction loops
    of a stack of one recurrent cell, for any number of recurrent states.

    Subclasses set ``_op`` (the kernel name prefix), ``_op_weights`` (parameter names in the
    op's argument order), ``_param_shapes(k, in_size)`` (name -> shape, in initialisation
    order) and, if needed, ``_op_args()`` (extra op arguments after ``lengths``).
    """

    _op = None
    _op_weights = ()

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
        # the draws below fix the parameters and the dropout stream of a seed: their order
        # (layers, directions, then _param_shapes order) must not change
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
        # dropout masks come from their own stream, seeded from the same seed
        self._dropout_rng = np.random.default_rng(rng.integers(0, 2**63))
        self.training = True
        self._saved = None
        self._place_params()

    def _param_shapes(self, k, in_size):
        raise NotImplementedError

    def _op_args(self):
        # the cell's options, passed to its ops after ``lengths`` (GRU: reset_after)
        return ()

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    # ---- argument checks ------------------------------------------------------------------
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

    def _check_dy(self, dy, have_dstate, dstate_name):
        if self._saved is None:
            raise ValueError("backward: no forward pass to differentiate; call forward first")
        B, T = self._saved["shape"]
        shape = (B, T, self.num_directions * self.hidden_size)
        if dy is None:
            if not have_dstate:
                raise ValueError(f"dy: expected an array of shape {shape} when {dstate_name} "
                                 "is None, got None")
            return arrays.zeros(shape, self.dtype, self.device)
        return arrays.on_device_of(arrays.check("dy", dy, shape, self.dtype), self.device)

    # ---- the cells with one state (GRU, minGRU) ----------------------------------------------
    def _forward_h(self, x, h0, lengths, return_gates):
        caller = x
        x, lengths = self._check_x(x, lengths)
        h0 = self._check_state("h0", h0, x.shape[0])
        y, (h_n,), gates = self._stack_forward(x, lengths, (h0,), return_gates)
        y, h_n = arrays.host_like(y, caller), arrays.host_like(h_n, caller)
        return (y, h_n, gates) if return_gates else (y, h_n)

    def _backward_h(self, dy, dh_n):
        caller = dy if dy is not None else dh_n
        dy = self._check_dy(dy, dh_n is not None, "dh_n")
        dh_n = self._check_state("dh_n", dh_n, self._saved["shape"][0])
        dx, (dh0,) = self._stack_backward(dy, (dh_n,))
        return arrays.host_like(dx, caller), arrays.host_like(dh0, caller)

    # ---- the layer x direction loops -----------------------------------------------------------
    def _dropout_mask(self, shape):
        from .layers import dropout_mask
        mask = dropout_mask(shape, self.dropout, self._dropout_rng, self.dtype)
        return arrays.on_device_of(mask, self.device)

    def _weights(self, k, sfx):
        # layer k's weights in the op's argument order (read at every call: a ParamBuffer
        # may re-point the dict entries to views of a flat buffer)
        return tuple(self.params[f"{name}_l{k}{sfx}"] for name in self._op_weights)

    def _stack_forward(self, x, lengths, states, return_gates, lean=None):
        # x (B,T,I) checked, on this stack's device; lengths (B,) host; states: tuple of
        # (L*D,B,H) initial states (h0[, c0]) on the device.
        # -> y (B,T,D*H), tuple of final states (device side), gates dict (NumPy)
        # In eval mode a backend's <op>_infer (CPU) runs instead of <op>_forward: no cache
        # is kept, and a backward after it first recomputes the forward (_caches).
        B, T, _ = x.shape
        D, kern, extra = self.num_directions, self._kernels, self._op_args()
        if lean is None:
            lean = not self.training and not return_gates
        op_forward = getattr(kern, f"{self._op}_forward")
        op_infer = getattr(kern, f"{self._op}_infer", None) if lean else None
        op_gates = getattr(kern, f"{self._op}_gates")
        finals = tuple(arrays.zeros(s0.shape, self.dtype, self.device) for s0 in states)
        layers, gates = [], {}
        lengths = arrays.on_device_of(lengths, self.device)
        inp = x
        for k in range(self.num_layers):
            outs, caches = [], []
            for d, sfx in enumerate(self._suffixes()):
                i = k * D + d
                op_args = (inp, *(s0[i] for s0 in states), *self._weights(k, sfx), lengths,
                           *extra)
                if op_infer is not None:
                    y, *fin = op_infer(*op_args, reverse=bool(d))
                    cache = None
                else:
                    y, *fin, cache = op_forward(*op_args, reverse=bool(d))
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

    def _caches(self):
        # the saved forward with its caches: recomputed once if it ran the lean eval path
        s = self._saved
        if any(c is None for _, caches, _ in s["layers"] for c in caches):
            self._stack_forward(s["layers"][0][0], s["lengths"], s["states"], False, lean=False)
        return self._saved

    def _stack_backward(self, dy, dfinals):
        # dy (B,T,D*H) checked; dfinals: tuple of (L*D,B,H) final-state gradients.
        # -> dx (B,T,I), tuple of initial-state gradients; writes self.grads in place
        s = self._caches()
        D, H, extra = self.num_directions, self.hidden_size, self._op_args()
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
                                        s["lengths"], caches[d], *extra, reverse=bool(d))
                for a, v in zip(dstates, rest[:nst]):
                    arrays.assign(a[i], v)
                for name, g in zip(self._op_weights, rest[nst:]):
                    arrays.assign(self.grads[f"{name}_l{k}{sfx}"], g)
                dinp = dx if dinp is None else arrays.add(dinp, dx)
            dout = dinp
        return dout, dstates
