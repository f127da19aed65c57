"""Reading ONNX models: the GRU/LSTM nodes of any producer as gruengine layers, and a
gruengine export as its SequenceModel again (the public names are in ``gruengine.onnx``).

A node is read only when gruengine's layer computes exactly its function; anything else is
refused with one line naming it: an activation other than the defaults (GRU Sigmoid, Tanh;
LSTM Sigmoid, Tanh, Tanh), activation_alpha/beta, clip, LSTM input_forget or non-zero
peepholes, a lone 'reverse' direction (gruengine layers run forward or bidirectional), weights
that are not constants, a constant non-zero initial state, another dtype than float32/64.
``sequence_lens`` and ``layout`` change how the node is fed, not what it computes.

Layers that feed each other through reshaping only (Transpose, Reshape, Squeeze, Unsqueeze,
Flatten, Identity) and share ``sequence_lens`` form one stack. The reshaping is checked by
running it on a probe tensor: it must put the directions side by side per step, as
gruengine's stack does, or the layers stay separate one-layer stacks.
"""
import json
import os

import numpy as np

from ._optional import require
from .convert import from_onnx
from .neighbours import KEYS as NEIGHBOUR_KEYS

_RECURRENT = {"GRU": "gru", "LSTM": "lstm"}
_DEFAULT_ACTS = {"gru": ["sigmoid", "tanh"], "lstm": ["sigmoid", "tanh", "tanh"]}
_KNOWN_ATTRS = {"gru": {"hidden_size", "direction", "linear_before_reset", "layout",
                        "activations", "activation_alpha", "activation_beta", "clip"},
                "lstm": {"hidden_size", "direction", "input_forget", "layout",
                         "activations", "activation_alpha", "activation_beta", "clip"}}
_RESHAPING = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")
_ZERO_PRESERVING = ("Slice", "Gather", "Expand", "Reshape", "Unsqueeze", "Squeeze", "Identity",
                    "Transpose", "Cast", "Tile")


def _onnx():
    return require("onnx", "ONNX import")


def _load_proto(src):
    onnx = _onnx()
    if isinstance(src, onnx.ModelProto):
        return src, "model"
    path = os.fspath(src)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        return onnx.load(path), path
    except Exception as e:          # DecodeError and friends
        why = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{path}: not a readable ONNX model ({why})") from None


class _Graph:
    """Constants, producers and consumers of one ONNX graph (the top level)."""

    def __init__(self, graph, onnx):
        self.onnx = onnx
        self.consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.producer, self.consumers = {}, {}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute:
                a = node.attribute[0]
                if a.name == "value":
                    self.consts[node.output[0]] = onnx.numpy_helper.to_array(a.t)
                elif a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    self.consts[node.output[0]] = np.array(onnx.helper.get_attribute_value(a))
            for o in node.output:
                self.producer[o] = node
            for i, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, i))

    def attrs(self, node):
        out = {}
        for a in node.attribute:
            v = self.onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [s.decode() for s in v]
            out[a.name] = v
        return out

    def is_zero(self, name, depth=0):
        """The tensor is all zeros whatever the inputs (a zero initial state, however built)."""
        if name in self.consts:
            return not np.any(self.consts[name])
        node = self.producer.get(name)
        if node is None or depth > 32:
            return False
        if node.op_type == "ConstantOfShape":
            value = self.attrs(node).get("value")
            return value is None or not np.any(self.onnx.numpy_helper.to_array(value))
        if node.op_type == "Concat":
            return all(self.is_zero(i, depth + 1) for i in node.input)
        if node.op_type in _ZERO_PRESERVING:
            return self.is_zero(node.input[0], depth + 1)
        return False


def _input(node, k):
    return node.input[k] if len(node.input) > k and node.input[k] else None


def _read_layer(g, node, where):
    """One GRU/LSTM node -> a dict with its function's parameters; ValueError if unsupported."""
    cell = _RECURRENT[node.op_type]
    at = g.attrs(node)
    where = f"{where}: node {node.name or node.output[0]!r} ({node.op_type})"
    unknown = sorted(set(at) - _KNOWN_ATTRS[cell])
    if unknown:
        raise ValueError(f"{where}: attribute {unknown[0]!r} is not supported")
    direction = at.get("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{where}: direction {direction!r} is not supported (a lone reverse "
                         f"layer); gruengine layers run 'forward' or 'bidirectional'")
    D = 2 if direction == "bidirectional" else 1
    acts = [a.lower() for a in at.get("activations", _DEFAULT_ACTS[cell] * D)]
    if acts != _DEFAULT_ACTS[cell] * D:
        raise ValueError(f"{where}: activations {at['activations']} are not supported; "
                         f"expected the defaults {_DEFAULT_ACTS[cell]} per direction")
    for name in ("activation_alpha", "activation_beta", "clip"):
        if name in at:
            raise ValueError(f"{where}: attribute {name!r} is not supported (gruengine's cells "
                             f"have no {'cell clipping' if name == 'clip' else name})")
    if at.get("input_forget", 0):
        raise ValueError(f"{where}: input_forget=1 (coupled input and forget gates) is not "
                         f"supported")
    arrays = {}
    for k, name in enumerate(("W", "R", "B")):
        src = _input(node, k + 1)
        if src is None:
            if name != "B":
                raise ValueError(f"{where}: input {name} is missing")
            continue
        if src not in g.consts:
            raise ValueError(f"{where}: {name} is computed by the graph, not a constant; "
                             f"export it with constant folding")
        arrays[name] = g.consts[src]
    dtype = arrays["R"].dtype
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"{where}: dtype {dtype} is not supported; gruengine layers run "
                         f"float32 or float64")
    state_inputs = [5, 6] if cell == "lstm" else [5]
    initial = []
    for k in state_inputs:
        src = _input(node, k)
        if src is None or g.is_zero(src):
            continue
        if src in g.consts:
            raise ValueError(f"{where}: a constant non-zero initial state ({src!r}) is not "
                             f"supported; gruengine layers start from zero or a given h0")
        initial.append(src)
    if cell == "lstm":
        p = _input(node, 7)
        if p is not None and not g.is_zero(p):
            raise ValueError(f"{where}: peephole weights P are not supported")
    layer = dict(arrays)
    if cell == "gru":
        layer["linear_before_reset"] = int(at.get("linear_before_reset", 0))
    R = arrays["R"]
    if R.ndim != 3 or R.shape[0] != D:
        raise ValueError(f"{where}: R expected shape ({D}, G*H, H) for direction "
                         f"{direction!r}, got {R.shape}")
    H = R.shape[2]
    if "hidden_size" in at and at["hidden_size"] != H:
        raise ValueError(f"{where}: hidden_size {at['hidden_size']} does not match R's shape "
                         f"{R.shape}")
    try:
        sd = from_onnx([layer], reset_after=bool(layer.get("linear_before_reset", 1)))
    except ValueError as e:
        raise ValueError(f"{where}: {' '.join(str(e).split())}") from None
    return {"node": node, "name": node.name or node.output[0], "cell": cell,
            "reset_after": bool(layer.get("linear_before_reset", 1)), "D": D, "H": H,
            "input_size": int(arrays["W"].shape[2]), "dtype": dtype, "layout": at.get("layout", 0),
            "seq_lens": _input(node, 4), "initial": initial, "state_dict": sd}


def _apply(g, node, a):
    """Run one reshaping node on the probe ``a`` (None when it cannot be run here)."""
    at, op = g.attrs(node), node.op_type
    second = g.consts.get(_input(node, 1)) if _input(node, 1) else None
    if op == "Identity":
        return a
    if op == "Transpose":
        return a.transpose(at.get("perm", list(range(a.ndim))[::-1]))
    if op == "Flatten":
        k = at.get("axis", 1)
        k = k + a.ndim if k < 0 else k
        return a.reshape(int(np.prod(a.shape[:k])), -1)
    axes = at.get("axes", None if second is None else [int(v) for v in second])
    if op == "Reshape":
        if second is None:
            return None
        shape = [a.shape[i] if s == 0 and not at.get("allowzero", 0) else int(s)
                 for i, s in enumerate(second)]
        return a.reshape(shape)
    if op == "Squeeze":
        return np.squeeze(a, axis=None if axes is None else tuple(axes))
    if op == "Unsqueeze" and axes is not None:
        out = a
        for ax in sorted(ax % (a.ndim + len(axes)) for ax in axes):
            out = np.expand_dims(out, ax)
        return out
    return None


def _feeds(g, a, b):
    """True when layer ``a``'s Y reaches layer ``b``'s X through reshaping alone and arrives
    as gruengine's stack passes it: (time, batch, D*H), directions side by side."""
    T, B, D, H = 5, 3, a["D"], a["H"]
    probe = np.arange(T * B * D * H, dtype=np.float64)
    y = probe.reshape((T, D, B, H) if a["layout"] == 0 else (B, T, D, H))
    tbf = y.transpose(0, 2, 1, 3).reshape(T, B, D * H) if a["layout"] == 0 else \
        y.reshape(B, T, D * H).transpose(1, 0, 2)
    want = tbf if b["layout"] == 0 else tbf.transpose(1, 0, 2)
    name, x = a["node"].output[0], y
    for _ in range(16):
        if name == b["node"].input[0]:
            return x.shape == want.shape and np.array_equal(x, want)
        users = g.consumers.get(name, [])
        if len(users) != 1 or users[0][1] != 0 or users[0][0].op_type not in _RESHAPING:
            return False
        node = users[0][0]
        try:
            x = _apply(g, node, x)
        except ValueError:
            return False
        if x is None:
            return False
        name = node.output[0]
    return False


def _stackable(g, a, b):
    same = all(a[k] == b[k] for k in ("cell", "reset_after", "D", "H", "dtype", "seq_lens"))
    return same and not b["initial"] and not a["initial"] and \
        b["input_size"] == a["D"] * a["H"] and _feeds(g, a, b)


def read_recurrent(src):
    """The GRU/LSTM layers of an ONNX model (path or ModelProto), grouped into stacks.

    Returns a list of dicts, one per stack, in graph order: ``cell`` ('gru' | 'lstm'),
    ``reset_after``, ``num_layers``, ``bidirectional``, ``input_size``, ``hidden_size``,
    ``dtype`` (name), ``nodes`` (node names), ``sequence_lens`` (the input that feeds the
    lengths, or None), ``initial_state`` (inputs that feed a non-zero initial state: pass
    them as h0) and ``state_dict`` (PyTorch names). Raises ValueError (one line) naming a
    node gruengine cannot compute exactly, or when there is no GRU/LSTM node."""
    model, where = _load_proto(src)
    g = _Graph(model.graph, _onnx())
    layers = [_read_layer(g, n, where) for n in model.graph.node if n.op_type in _RECURRENT
              and n.domain in ("", "ai.onnx")]
    if not layers:
        raise ValueError(f"{where}: no GRU or LSTM node in the graph")
    chains, used = [], set()
    for i, first in enumerate(layers):
        if i in used:
            continue
        chain = [first]
        used.add(i)
        while True:
            nxt = [j for j, b in enumerate(layers) if j not in used and _stackable(g, chain[-1], b)]
            if len(nxt) != 1:
                break
            chain.append(layers[nxt[0]])
            used.add(nxt[0])
        chains.append(chain)
    return [_stack(chain) for chain in chains]


def _stack(chain):
    top = chain[0]
    sd = {}
    for k, layer in enumerate(chain):
        for name, v in layer["state_dict"].items():
            sd[name.replace("_l0", f"_l{k}")] = v
    return {"cell": top["cell"], "reset_after": top["reset_after"], "num_layers": len(chain),
            "bidirectional": top["D"] == 2, "input_size": top["input_size"],
            "hidden_size": top["H"], "dtype": np.dtype(top["dtype"]).name,
            "nodes": [layer["name"] for layer in chain], "sequence_lens": top["seq_lens"],
            "initial_state": top["initial"] or None, "state_dict": sd}


def recurrent_module(stack, device="cpu"):
    """A ``gruengine.GRU`` or ``LSTM`` holding one stack of ``read_recurrent``."""
    from .gru import GRU
    from .lstm import LSTM
    if not isinstance(stack, dict) or "state_dict" not in stack:
        raise ValueError(f"stack: expected a dict from read_recurrent, got {type(stack).__name__}")
    kw = dict(num_layers=stack["num_layers"], bidirectional=stack["bidirectional"],
              dtype=np.dtype(stack["dtype"]), device=device)
    if stack["cell"] == "gru":
        m = GRU(stack["input_size"], stack["hidden_size"], reset_after=stack["reset_after"], **kw)
    else:
        m = LSTM(stack["input_size"], stack["hidden_size"], **kw)
    m.load_state_dict(stack["state_dict"])
    return m


def _summary(stack):
    return {k: v for k, v in stack.items() if k != "state_dict"}


def _props(model):
    return {p.key: p.value for p in model.metadata_props}


def load(src, device=None):
    """A graph written by ``gruengine.onnx.export`` -> ``(SequenceModel in eval mode, meta)``;
    meta holds model_config, vocab, classes, train_config (max_len, truncate), data_config
    and scaling (the input Scaler's JSON, or None), as a checkpoint's does. ValueError (one line) for any other graph."""
    from .data.text import Vocab
    from .models import SequenceModel
    model, where = _load_proto(src)
    props = _props(model)
    if "gruengine.model_config" not in props:
        raise ValueError(f"{where}: not a gruengine export (no gruengine.model_config "
                         f"metadata); read its GRU/LSTM layers with read_recurrent")
    try:
        mcfg = json.loads(props["gruengine.model_config"])
        extra = {k: json.loads(props.get(f"gruengine.{k}", "null"))
                 for k in ("classes", "data_config", "tokenizer", "scaling", "ensemble")}
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: gruengine metadata is not valid JSON ({e})") from None
    if device is not None:
        mcfg["device"] = device
    ens = extra["ensemble"]
    k = 1 if ens is None else ens.get("members") if isinstance(ens, dict) else None
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 64:
        raise ValueError(f"{where}: gruengine.ensemble metadata: expected members in [1, 64], "
                         f"got {extra['ensemble']!r}")
    stacks = read_recurrent(model)
    if len(stacks) != k:
        raise ValueError(f"{where}: the recurrent nodes form {len(stacks)} stacks, its "
                         f"metadata describes {k} model(s)")
    g = _Graph(model.graph, _onnx())
    nets = [_member(g, SequenceModel(mcfg), stacks, j, "" if k == 1 else f"member{j}.", where)
            for j in range(k)]
    c = nets[0].config
    if k == 1:
        net = nets[0]
    else:
        from .ensemble import EnsembleModel
        net = EnsembleModel(nets).eval()
    tok = extra["tokenizer"]
    meta = {"kind": "gruengine-import", "source": where, "model_config": c.to_dict(),
            "classes": extra["classes"], "data_config": extra["data_config"],
            "scaling": extra["scaling"],
            "vocab": None if tok is None else Vocab(tok["tokens"],
                                                    tok.get("ngrams", 1)).to_json(),
            "train_config": {} if tok is None else {"max_len": tok["max_len"],
                                                    "truncate": tok["truncate"]}}
    if k > 1:
        meta["ensemble"] = {"members": k}
    return net, meta


def _member(g, net, stacks, j, prefix, where):
    """``net`` (a fresh SequenceModel) with the weights of the ``j``-th model of the graph:
    recurrent stack ``j`` and the initializers named ``prefix`` + its parameter names."""
    c = net.config
    want = (c.cell, c.num_layers, c.bidirectional, c.hidden_size)
    if tuple(stacks[j][n] for n in ("cell", "num_layers", "bidirectional",
                                                         "hidden_size")) != want:
        raise ValueError(f"{where}: the recurrent nodes do not form the {c.num_layers}-layer "
                         f"{c.cell} stack its metadata describes")
    sd = {f"rnn.{n}": v for n, v in stacks[j]["state_dict"].items()}
    for name in net.state_dict():
        if not name.startswith("rnn."):
            if prefix + name not in g.consts:
                raise ValueError(f"{where}: initializer {prefix + name!r} is missing")
            sd[name] = g.consts[prefix + name]
    for name in NEIGHBOUR_KEYS:              # a classifier's stored training vectors, if any
        if prefix + name in g.consts:
            sd[name] = g.consts[prefix + name]
    net.load_state_dict(sd)
    return net.eval()


def import_onnx(src, out=None):
    """``gruengine import``: an ONNX file -> a gruengine file at ``out``.

    A gruengine export becomes a checkpoint (``.npz``, or ``.safetensors`` by the suffix of
    ``out``) that evaluate, predict, inspect and export accept. Any other graph: its GRU/LSTM
    stacks become a state_dict file (PyTorch names; with several stacks prefixed ``rnn0.``,
    ``rnn1.``, ...) whose metadata lists the stacks. ``out`` defaults to the source path with
    ``.npz``. Returns {'kind': 'checkpoint' | 'state_dict', 'path', 'stacks': [...]}."""
    from . import checkpoint as ckpt
    from .safetensors import save_checkpoint_safetensors, save_safetensors
    model, where = _load_proto(src)
    if out is None:
        if where == "model":
            raise ValueError("out: expected a path when the source is a ModelProto, got None")
        out = os.path.splitext(where)[0] + ".npz"
    out = os.fspath(out)
    if not out.endswith((".npz", ".safetensors")):
        raise ValueError(f"out: expected a path ending in .npz or .safetensors, got {out!r}")
    if "gruengine.model_config" in _props(model):
        net, meta = load(model)
        meta["source"] = os.fspath(src) if where == "model" else where
        sd = net.state_dict()
        if out.endswith(".safetensors"):
            if "ensemble" in meta:
                raise ValueError(f"out: {where} is an ensemble of {len(net)} models; a "
                                 f".safetensors file holds one: import it to a .npz")
            save_checkpoint_safetensors(out, sd, meta)
        else:
            ckpt.save_checkpoint(out, sd if "ensemble" in meta else ckpt.join_arrays(model=sd),
                                 meta)
        return {"kind": "checkpoint", "path": out,
                "stacks": [_summary(s) for s in read_recurrent(model)]}
    stacks = read_recurrent(model)
    sd, summaries = {}, []
    for k, s in enumerate(stacks):
        prefix = "" if len(stacks) == 1 else f"rnn{k}."
        sd.update({prefix + name: v for name, v in s["state_dict"].items()})
        summaries.append(dict(_summary(s), prefix=prefix))
    meta = {"kind": "gruengine-state-dict", "source": where, "stacks": summaries}
    if out.endswith(".safetensors"):
        save_safetensors(sd, out, {"gruengine": json.dumps(meta, sort_keys=True)})
    else:
        ckpt.save_checkpoint(out, sd, meta)
    return {"kind": "state_dict", "path": out, "stacks": summaries}
