"""Weight converters between gruengine/PyTorch, Keras and ONNX layouts for GRU and LSTM stacks.

gruengine uses PyTorch's names, shapes and gate order (GRU r,z,n; LSTM i,f,g,o stacked on the
first axis of ``weight_ih_l{k}[_reverse]`` (G*H, in) and ``weight_hh_l{k}[_reverse]`` (G*H, H)),
so a ``torch.nn.GRU/LSTM`` state_dict (as NumPy arrays) loads unchanged.

Keras (``keras.layers.GRU/LSTM``, ``Bidirectional``), one list per layer in ``get_weights()`` order:
    [kernel (in, G*H), recurrent_kernel (H, G*H), bias] (+ the backward layer's three)
    GRU gates z, r, h; bias (2, 3H) = [input bias; recurrent bias] when reset_after=True,
    (3H,) = b_ih + b_hh when reset_after=False.  LSTM gates i, f, c, o; bias (4H,) = b_ih + b_hh.
ONNX (``GRU``/``LSTM`` operators), one dict per layer:
    W (D, G*H, in), R (D, G*H, H), B (D, 2*G*H) = [Wb; Rb], direction 0 forward, 1 reverse.
    GRU gates z, r, h and "linear_before_reset" (1 for reset_after=True); LSTM gates i, o, f, c
    (no peepholes).

Every form computes the same function: merging b_ih + b_hh is exact wherever both biases sit
outside any product with a gate (all of Keras' merged forms), and on the way back the whole
bias goes to b_ih and b_hh is zero.
"""
import re

import numpy as np

from ._checks import check_array

__all__ = ["to_keras", "from_keras", "to_onnx", "from_onnx", "describe"]

# gate blocks of the foreign layout, as indices of gruengine/PyTorch blocks
_KERAS_ORDER = {"gru": (1, 0, 2), "lstm": (0, 1, 2, 3)}   # z,r,h <- r,z,n ; i,f,c,o <- i,f,g,o
_ONNX_ORDER = {"gru": (1, 0, 2), "lstm": (0, 3, 1, 2)}    # z,r,h <- r,z,n ; i,o,f,c <- i,f,g,o
_GATES = {3: "gru", 4: "lstm"}
_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")


def _blocks(a, order, H):
    """Permute the gate blocks of ``a`` along axis 0 (each block H rows)."""
    return np.concatenate([a[g * H:(g + 1) * H] for g in order], axis=0)


def _inverse(order):
    inv = [0] * len(order)
    for new, old in enumerate(order):
        inv[old] = new
    return tuple(inv)


def describe(state_dict):
    """Infer (cell, num_layers, bidirectional, input_size, hidden_size) from a GRU/LSTM state_dict.

    Raises ValueError naming the problem when the keys or shapes are not a GRU/LSTM stack.
    """
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"state_dict: expected a non-empty dict of arrays, got "
                         f"{type(state_dict).__name__}")
    layers, reverse = set(), False
    for k in state_dict:
        m = _KEY.match(str(k))
        if not m:
            raise ValueError(f"state_dict: unexpected key {k!r}; expected weight_ih_l0, "
                             "weight_hh_l0, bias_ih_l0, bias_hh_l0 ... (GRU or LSTM)")
        layers.add(int(m.group(2)))
        reverse |= bool(m.group(3))
    L = max(layers) + 1
    D = 2 if reverse else 1
    w_hh = check_array("state_dict['weight_hh_l0']", state_dict.get("weight_hh_l0"), (None, None))
    GH, H = w_hh.shape
    if H == 0 or GH % H or GH // H not in _GATES:
        raise ValueError(f"state_dict['weight_hh_l0']: expected shape (3H, H) for a GRU or "
                         f"(4H, H) for an LSTM, got {w_hh.shape}")
    cell = _GATES[GH // H]
    I = check_array("state_dict['weight_ih_l0']", state_dict.get("weight_ih_l0"),
                    (GH, None), w_hh.dtype).shape[1]
    expected = {}
    for k in range(L):
        for sfx in ("", "_reverse")[:D]:
            in_size = I if k == 0 else D * H
            expected.update({f"weight_ih_l{k}{sfx}": (GH, in_size), f"weight_hh_l{k}{sfx}": (GH, H),
                             f"bias_ih_l{k}{sfx}": (GH,), f"bias_hh_l{k}{sfx}": (GH,)})
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(f"state_dict: keys do not match a {L}-layer {cell.upper()}; "
                         f"missing {missing}")
    for name, shape in expected.items():
        check_array(f"state_dict[{name!r}]", state_dict[name], shape, w_hh.dtype)
    return cell, L, D == 2, I, H


def _check_reset_after(reset_after, cell):
    if not isinstance(reset_after, (bool, np.bool_)):
        raise ValueError(f"reset_after: expected True or False, got {reset_after!r}")
    if cell == "lstm" and not reset_after:
        raise ValueError("reset_after: only applies to a GRU; an LSTM takes the default True")
    return bool(reset_after)


def to_keras(state_dict, reset_after=True):
    """gruengine/PyTorch state_dict -> one Keras weight list per layer.

    Each list is ``[kernel, recurrent_kernel, bias]`` (plus the backward layer's three for a
    bidirectional stack), the order ``layer.set_weights`` takes. ``reset_after`` must match the
    GRU the weights belong to (Keras' ``reset_after``); ignored shapes aside, LSTM needs nothing.
    """
    cell, L, bidir, _, H = describe(state_dict)
    reset_after = _check_reset_after(reset_after, cell)
    order = _KERAS_ORDER[cell]
    out = []
    for k in range(L):
        weights = []
        for sfx in ("", "_reverse") if bidir else ("",):
            w_ih, w_hh, b_ih, b_hh = (state_dict[f"{n}_l{k}{sfx}"] for n in
                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            kernel = np.ascontiguousarray(_blocks(w_ih, order, H).T)
            recurrent = np.ascontiguousarray(_blocks(w_hh, order, H).T)
            if cell == "gru" and reset_after:
                bias = np.stack([_blocks(b_ih, order, H), _blocks(b_hh, order, H)])
            else:
                bias = _blocks(b_ih + b_hh, order, H)
            weights += [kernel, recurrent, bias]
        out.append(weights)
    return out


def from_keras(layers, reset_after=True):
    """Keras weight lists (one per layer, as ``to_keras`` returns) -> gruengine state_dict.

    GRU or LSTM and bidirectional (6 arrays per layer instead of 3) are read off the shapes.
    ``reset_after`` states the GRU form wanted; Keras weights of the other form raise.
    """
    if isinstance(layers, (list, tuple)) and layers and isinstance(layers[0], np.ndarray):
        layers = [layers]                               # a single layer's flat list
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"layers: expected a non-empty list of Keras weight lists, got "
                         f"{type(layers).__name__}")
    sd = {}
    D = None
    for k, weights in enumerate(layers):
        if not isinstance(weights, (list, tuple)) or len(weights) not in (3, 6):
            got = (f"{len(weights)} arrays" if isinstance(weights, (list, tuple))
                   else type(weights).__name__)
            raise ValueError(f"layers[{k}]: expected 3 arrays [kernel, recurrent_kernel, bias] "
                             f"or 6 (bidirectional), got {got}")
        if D is None:
            D = len(weights) // 3
        elif len(weights) // 3 != D:
            raise ValueError(f"layers[{k}]: expected {3 * D} arrays like layer 0, "
                             f"got {len(weights)}")
        for d, sfx in enumerate(("", "_reverse")[:D]):
            kernel, recurrent, bias = weights[3 * d:3 * d + 3]
            where = f"layers[{k}][{3 * d + 1}]"
            recurrent = check_array(where, recurrent, (None, None))
            H, GH = recurrent.shape
            if H == 0 or GH % H or GH // H not in _GATES:
                raise ValueError(f"{where}: expected recurrent_kernel (H, 3H) or (H, 4H), "
                                 f"got {recurrent.shape}")
            cell = _GATES[GH // H]
            ra = _check_reset_after(reset_after, cell)
            kernel = check_array(f"layers[{k}][{3 * d}]", kernel, (None, GH), recurrent.dtype)
            want_bias = (2, GH) if cell == "gru" and ra else (GH,)
            bias = check_array(f"layers[{k}][{3 * d + 2}]", bias, want_bias, recurrent.dtype)
            inv = _inverse(_KERAS_ORDER[cell])
            sd[f"weight_ih_l{k}{sfx}"] = _blocks(kernel.T, inv, H)
            sd[f"weight_hh_l{k}{sfx}"] = _blocks(recurrent.T, inv, H)
            if bias.ndim == 2:
                sd[f"bias_ih_l{k}{sfx}"] = _blocks(bias[0], inv, H)
                sd[f"bias_hh_l{k}{sfx}"] = _blocks(bias[1], inv, H)
            else:
                sd[f"bias_ih_l{k}{sfx}"] = _blocks(bias, inv, H)
                sd[f"bias_hh_l{k}{sfx}"] = np.zeros_like(sd[f"bias_ih_l{k}{sfx}"])
    describe(sd)                                        # layers fit together (sizes, one cell)
    return sd


def to_onnx(state_dict, reset_after=True):
    """gruengine/PyTorch state_dict -> one dict per layer with the ONNX GRU/LSTM inputs.

    Each dict holds ``W`` (D, G*H, in), ``R`` (D, G*H, H), ``B`` (D, 2*G*H) and the operator
    attributes ``hidden_size``, ``direction`` ("forward" | "bidirectional") and, for a GRU,
    ``linear_before_reset`` (1 when ``reset_after``).
    """
    cell, L, bidir, _, H = describe(state_dict)
    reset_after = _check_reset_after(reset_after, cell)
    order = _ONNX_ORDER[cell]
    out = []
    for k in range(L):
        Ws, Rs, Bs = [], [], []
        for sfx in ("", "_reverse") if bidir else ("",):
            w_ih, w_hh, b_ih, b_hh = (state_dict[f"{n}_l{k}{sfx}"] for n in
                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            Ws.append(_blocks(w_ih, order, H))
            Rs.append(_blocks(w_hh, order, H))
            Bs.append(np.concatenate([_blocks(b_ih, order, H), _blocks(b_hh, order, H)]))
        layer = {"W": np.stack(Ws), "R": np.stack(Rs), "B": np.stack(Bs), "hidden_size": H,
                 "direction": "bidirectional" if bidir else "forward"}
        if cell == "gru":
            layer["linear_before_reset"] = int(reset_after)
        out.append(layer)
    return out


def from_onnx(layers, reset_after=True):
    """ONNX GRU/LSTM inputs (one dict per layer with W, R, B) -> gruengine state_dict.

    A GRU dict's ``linear_before_reset`` (default 0, as in ONNX) must agree with
    ``reset_after``. ``B`` may be omitted (zeros); LSTM peepholes ``P`` must be absent or zero.
    """
    if isinstance(layers, dict):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"layers: expected a non-empty list of dicts with W, R, B, got "
                         f"{type(layers).__name__}")
    sd = {}
    for k, layer in enumerate(layers):
        if not isinstance(layer, dict) or "W" not in layer or "R" not in layer:
            raise ValueError(f"layers[{k}]: expected a dict with 'W', 'R' and optionally 'B'")
        R = check_array(f"layers[{k}]['R']", layer["R"], (None, None, None))
        D, GH, H = R.shape
        if D not in (1, 2) or H == 0 or GH % H or GH // H not in _GATES:
            raise ValueError(f"layers[{k}]['R']: expected shape (D, 3H, H) or (D, 4H, H) with "
                             f"D 1 or 2, got {R.shape}")
        cell = _GATES[GH // H]
        ra = _check_reset_after(reset_after, cell)
        W = check_array(f"layers[{k}]['W']", layer["W"], (D, GH, None), R.dtype)
        B = layer.get("B")
        B = np.zeros((D, 2 * GH), R.dtype) if B is None else \
            check_array(f"layers[{k}]['B']", B, (D, 2 * GH), R.dtype)
        if cell == "gru":
            lbr = layer.get("linear_before_reset", 0)
            if lbr not in (0, 1) or bool(lbr) != ra:
                raise ValueError(f"layers[{k}]['linear_before_reset']: expected "
                                 f"{int(ra)} for reset_after={ra}, got {lbr!r}")
        elif layer.get("P") is not None and np.any(layer["P"]):
            raise ValueError(f"layers[{k}]['P']: peephole weights are not supported; "
                             "expected absent or all zero")
        inv = _inverse(_ONNX_ORDER[cell])
        for d, sfx in enumerate(("", "_reverse")[:D]):
            sd[f"weight_ih_l{k}{sfx}"] = _blocks(W[d], inv, H)
            sd[f"weight_hh_l{k}{sfx}"] = _blocks(R[d], inv, H)
            sd[f"bias_ih_l{k}{sfx}"] = _blocks(B[d, :GH], inv, H)
            sd[f"bias_hh_l{k}{sfx}"] = _blocks(B[d, GH:], inv, H)
    describe(sd)
    return sd
