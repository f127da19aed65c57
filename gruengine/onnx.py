"""ONNX: export a SequenceModel as one graph; read GRU/LSTM layers out of any ONNX model.

    import gruengine.onnx
    gruengine.onnx.export_checkpoint("runs/imdb/best.npz", "imdb.onnx")  # + imdb.tokenizer.json
    model, meta = gruengine.onnx.load("imdb.onnx")          # a gruengine export, back again
    stacks = gruengine.onnx.read_recurrent("other.onnx")    # the GRU/LSTM layers of any model
    gru = gruengine.onnx.recurrent_module(stacks[0])        # a gruengine.GRU / LSTM with them

The exported graph (opset ``OPSET``, IR version ``IR_VERSION``, float32, dynamic batch and
time axes) computes what ``gruengine predict`` reports:

    inputs   ids (batch, time) int64               token models
             features (batch, time, F) float32     feature models: the raw series, as the
                                                   data were read (unscaled; padding any value)
             lengths (batch,) int64, in [1, time]
    output   probabilities (batch, C)              classify: softmax of the head
             probabilities (batch, time, C)        tag: per step (padding steps as the model:
                                                   the softmax of the head's bias)
             values (batch, K)                     regress

Inside, the features go through the input scaling the model was trained with (when
``export`` is given one; ``export_checkpoint`` passes the checkpoint's), the input is made
time-major and projected, the convolutional front end runs in eval mode with its lengths
ceil(L / stride) (``onnx_features``), each recurrent layer is one ONNX ``GRU`` node
(``linear_before_reset`` = reset_after) or ``LSTM`` node with ``sequence_lens`` = those
lengths, the pooling is built from elementary ops with a (time, batch) mask made from them
(with ``conv_skip`` the front end's mean over time joins it), and the head is a Gemm (a
MatMul per step for tag). The operators' ``sequence_lens`` semantics were checked with
onnxruntime against gruengine's packed ones: Y is zero past a length, Y_h is the state at the
last valid step, the reverse direction starts there, and padding is never read. onnxruntime
runs GRU and LSTM in float32 only, so a float64 model is exported in float32 (the scaling
runs in float64, as the Scaler does). The minGRU has no ONNX operator; exporting one, or a
model option the graph does not reproduce, raises ValueError naming it.

Initializers carry the model's state_dict names, and the metadata its configuration, classes,
data configuration and scaling, so ``onnx_import.load`` rebuilds the model and checkpoint
metadata from the graph alone.

Text models need their tokenizer: ``export`` writes it next to the graph as
``<name>.tokenizer.json`` and into the graph's metadata (``gruengine.tokenizer``); see
``tokenizer_spec``. Needs ``pip install 'gruengine[onnx]'`` (onnx, onnxruntime), imported on
first use.
"""
import json
import os

import numpy as np

from ._files import write_atomic
from ._optional import require
from .convert import to_onnx
from .onnx_features import front_end, scale_features, valid_steps

__all__ = ["OPSET", "IR_VERSION", "export", "export_checkpoint", "verify", "tokenizer_spec",
           "tokenizer_path", "load", "read_recurrent", "recurrent_module", "import_onnx"]

OPSET = 17          # ReduceMax takes axes as an attribute up to 17; onnxruntime >= 1.13 runs it
IR_VERSION = 8      # the IR of opset 17, so runtimes of that generation open the file
FORMAT_VERSION = 1  # of the gruengine.* metadata
TOKENIZER_SUFFIX = ".tokenizer.json"


def _onnx():
    return require("onnx", "ONNX export and import")


class _Graph:
    """The nodes and initializers of one graph; ``op`` appends a node, returns its outputs."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.inits, self._count, self._consts = onnx, [], [], {}, set()
        self.prefix = ""          # of the initializers' names: 'member<k>.' in an ensemble
        self.scaled = None        # the scaled input, computed once for every member

    def const(self, name, value, dtype=np.float32):
        """An initializer; a name already given returns the first one (same value)."""
        name = self.prefix + name
        if name not in self._consts:
            a = np.ascontiguousarray(np.asarray(value, dtype=dtype))
            self.inits.append(self.onnx.numpy_helper.from_array(a, name))
            self._consts.add(name)
        return name

    def op(self, op_type, *inputs, outputs=None, **attrs):
        k = self._count[op_type] = self._count.get(op_type, 0) + 1
        base = f"{op_type}_{k}"
        outs = [base] if outputs is None else [f"{base}_{o}" for o in outputs]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, name=base,
                                                     **attrs))
        return outs[0] if outputs is None else outs


def _input(g, model, sd, scaler):
    """Graph input -> (x (time, batch, in) float32, lengths (B,) int64, the input's value_info):
    scaled, projected and through the front end as the model has them."""
    c, h, tp = model.config, g.onnx.helper, g.onnx.TensorProto
    lengths = "lengths"
    if c.input == "tokens":
        info = h.make_tensor_value_info("ids", tp.INT64, ["batch", "time"])
        ids_tb = g.op("Transpose", "ids", perm=[1, 0])                          # (T, B)
        x = g.op("Gather", g.const("embedding.weight", sd["embedding.weight"]), ids_tb)
        bag = _mean_over_time(g, x, lengths) if c.embed_skip else None          # (B, E)
    else:
        F = c.num_features if scaler is None else scaler.num_features
        info = h.make_tensor_value_info("features", tp.FLOAT, ["batch", "time", F])
        if scaler is not None and g.scaled is None:
            g.scaled = scale_features(g, "features", lengths, scaler)
        x = "features" if scaler is None else g.scaled
        x = g.op("Transpose", x, perm=[1, 0, 2])                                # (T, B, F)
        if c.input_proj:
            w_t = g.op("Transpose", g.const("input_proj.weight", sd["input_proj.weight"]))
            x = g.op("Add", g.op("MatMul", x, w_t),
                     g.const("input_proj.bias", sd["input_proj.bias"]))
    skip = []                  # what the head reads beside the pooled states, in the model's order
    if "frontend" in model.modules:
        x, lengths = front_end(g, model.modules["frontend"], sd, x, lengths)   # (T', B, C)
        if c.conv_skip:
            skip.append(_mean_over_time(g, x, lengths))                         # (B, C)
    if c.input == "tokens" and c.embed_skip:
        skip.append(bag)
    return x, lengths, skip, info


def _recurrent(g, model, sd, x, seq_lens):
    """The GRU/LSTM stack: x (T, B, in) -> (y (T, B, D*H), h_n of the last layer (D, B, H))."""
    c = model.config
    rnn = {k[len("rnn."):]: v for k, v in sd.items() if k.startswith("rnn.")}
    to_tbf = g.const("shape.t_b_f", [0, 0, -1], np.int64)
    h_n = None
    for k, layer in enumerate(to_onnx(rnn, reset_after=c.reset_after)):
        attrs = {"hidden_size": int(layer["hidden_size"]), "direction": layer["direction"]}
        if c.cell == "gru":
            attrs["linear_before_reset"] = layer["linear_before_reset"]
        W, R, B = (g.const(f"rnn.l{k}.{n}", layer[n]) for n in ("W", "R", "B"))
        y, h_n = g.op(c.cell.upper(), x, W, R, B, seq_lens, outputs=("Y", "Y_h"), **attrs)
        # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H): directions side by side per step
        x = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), to_tbf)
    return x, h_n


def _step_mask(g, x, lengths):
    """(T, B, 1) bool: step t of the time-major x is valid for row b (t < lengths[b])."""
    mask = g.op("Transpose", valid_steps(g, x, lengths, 0), perm=[1, 0])        # (T, B)
    return g.op("Unsqueeze", mask, g.const("axes.2", [2], np.int64))


def _mean_over_time(g, x, lengths):
    """x (T, B, F) -> (B, F): the mean over each row's valid steps."""
    mask = g.op("Cast", _step_mask(g, x, lengths), to=g.onnx.TensorProto.FLOAT)
    total = g.op("ReduceSum", g.op("Mul", x, mask), g.const("axes.0", [0], np.int64),
                 keepdims=0)                                                    # (B, F)
    count = g.op("Unsqueeze", g.op("Cast", lengths, to=g.onnx.TensorProto.FLOAT),
                 g.const("axes.1", [1], np.int64))                              # (B, 1)
    return g.op("Div", total, count)


def _features(g, model, y, h_n, lengths, skip):
    """What the head reads: (B, D*H [+ C] [+ E]) pooled [and the means over time of the front
    end and of the embeddings], or (B, T, D*H) per step for tag."""
    c = model.config
    if c.task == "tag":
        masked = g.op("Mul", y, g.op("Cast", _step_mask(g, y, lengths),
                                     to=g.onnx.TensorProto.FLOAT))
        return g.op("Transpose", masked, perm=[1, 0, 2])             # (B, T, D*H)
    if c.pooling == "last":
        # the last layer's final states (D, B, H) -> (B, D*H), directions side by side
        feats = g.op("Reshape", g.op("Transpose", h_n, perm=[1, 0, 2]),
                     g.const("shape.b_f", [0, -1], np.int64))
    elif c.pooling == "max":
        low = g.op("Where", _step_mask(g, y, lengths), y, g.const("minus_inf", -np.inf))
        feats = g.op("ReduceMax", low, axes=[0], keepdims=0)
    else:
        feats = _mean_over_time(g, y, lengths)
    return g.op("Concat", feats, *skip, axis=1) if skip else feats


def _head(g, model, sd, feats):
    c = model.config
    W, b = g.const("head.weight", sd["head.weight"]), g.const("head.bias", sd["head.bias"])
    if c.task == "tag":
        out = g.op("Add", g.op("MatMul", feats, g.op("Transpose", W)), b)
    else:
        out = g.op("Gemm", feats, W, b, transB=1)
    if c.task == "regress":
        return g.op("Identity", out), "values"
    return g.op("Softmax", out, axis=-1), "probabilities"


def _neighbour_mix(g, nb, feats, probs):
    """(probabilities + one-hot label of the nearest stored training vector) / 2, as
    ``gruengine.neighbours`` mixes them (the cosine's argmax: the query's norm is common)."""
    sims = g.op("Gemm", feats, g.const("neighbours.features", nb.features), transB=1)  # (B, N)
    nearest = g.op("ArgMax", sims, axis=1, keepdims=0)
    label = g.op("Gather", g.const("neighbours.labels", nb.labels, np.int64), nearest)
    vote = g.op("OneHot", label, g.const("neighbours.depth", [nb.num_classes], np.int64),
                g.const("neighbours.off_on", [0.0, 1.0]), axis=-1)
    return g.op("Mul", g.op("Add", probs, vote), g.const("half", 0.5))


def tokenizer_spec(vocab, max_len=None, truncate="head", classes=None):
    """How a text becomes the graph's ``ids`` and ``lengths``, as a JSON-able dict.

    A text is matched by ``break_pattern`` (HTML line breaks -> a space), lowercased, split
    into the matches of ``token_pattern`` (Python ``re`` syntax); token i of ``tokens`` has
    id i, any other token ``unk_id``; with ``max_len`` the first (truncate 'head') or last
    ('tail') max_len ids are kept; a text with no tokens is ``[unk_id]``; a batch is padded
    with ``pad_id`` to its longest row and ``lengths`` holds the true lengths. ``ngrams`` 2
    (a vocabulary with word pairs): the words are cut to max_len first, then after each word
    whose pair with the next word, ``'w1 w2'``, is a token, that token's id follows it.
    """
    from .data.text import Vocab, _BREAK, _TOKEN, TRUNCATE
    if not isinstance(vocab, Vocab):
        raise ValueError(f"vocab: expected a gruengine.data.text.Vocab, got {type(vocab).__name__}")
    if truncate not in TRUNCATE:
        raise ValueError(f"truncate: expected 'head' or 'tail', got {truncate!r}")
    return {"format": "gruengine.tokenizer", "version": 1,
            "break_pattern": "(?i)" + _BREAK.pattern, "lowercase": True,
            "token_pattern": _TOKEN.pattern, "pad_id": 0, "unk_id": 1,
            "max_len": None if max_len is None else int(max_len), "truncate": truncate,
            "classes": None if classes is None else [str(k) for k in classes],
            "ngrams": vocab.ngrams, "tokens": list(vocab.itos)}


# every ModelConfig field the graph reproduces; any other one is refused unless at its default
_EXPORTED = {"task", "num_outputs", "input", "vocab_size", "embed_dim", "padding_idx",
             "num_features", "input_proj", "cell", "hidden_size", "num_layers", "bidirectional",
             "reset_after", "pooling", "conv_channels", "conv_kernels", "conv_stride",
             "conv_norm", "conv_skip",
             "dropout", "dtype", "device", "seed",      # training, numerics, placement only
             "forget_bias",                             # initialisation only: in the weights
             "embed_skip"}


def _check_model(model, vocab, scaling):
    """-> the model's input ``Scaler`` (from ``scaling``: one, its JSON dict, or None)."""
    from dataclasses import fields
    from .ensemble import EnsembleModel
    from .models import ModelConfig, SequenceModel
    from .data.scaling import Scaler
    from .data.text import Vocab
    members = model.members if isinstance(model, EnsembleModel) else [model]
    if not all(isinstance(m, SequenceModel) for m in members):
        raise ValueError(f"model: expected a gruengine.models.SequenceModel or an "
                         f"EnsembleModel, got {type(model).__name__}")
    c = model.config
    for f in fields(ModelConfig):
        if f.name not in _EXPORTED and getattr(c, f.name) != f.default:
            raise ValueError(f"model: option {f.name}={getattr(c, f.name)!r} has no ONNX "
                             f"export; export supports it only at {f.default!r}")
    scaler = Scaler.from_json(scaling) if isinstance(scaling, dict) else scaling
    if scaler is not None:
        if not isinstance(scaler, Scaler) or scaler.num_features is None:
            raise ValueError(f"scaling: expected a fitted gruengine.data.scaling.Scaler or "
                             f"its to_json() dict, got {type(scaling).__name__}")
        if c.input != "features" or scaler.out_features != c.num_features:
            reads = "token ids" if c.input == "tokens" else f"{c.num_features} features"
            raise ValueError(f"scaling: it writes {scaler.out_features} features per step, "
                             f"the model reads {reads}")
    if c.cell not in ("gru", "lstm"):
        raise ValueError(f"model: cell {c.cell!r} has no ONNX operator; export supports "
                         f"'gru' and 'lstm'")
    if vocab is not None:
        if c.input != "tokens":
            raise ValueError("vocab: only a token model takes a vocabulary, this one reads "
                             "features")
        if not isinstance(vocab, Vocab) or len(vocab) != c.vocab_size:
            got = len(vocab) if isinstance(vocab, Vocab) else type(vocab).__name__
            raise ValueError(f"vocab: expected a Vocab of {c.vocab_size} tokens (the model's "
                             f"vocab_size), got {got}")
    return scaler


def export(model, path, *, vocab=None, classes=None, max_len=None, truncate="head",
           data_config=None, scaling=None):
    """Write ``model`` (a SequenceModel, or an EnsembleModel: every member's graph on the one
    input and the mean of their outputs) to ``path`` as one checked ONNX graph.

    ``vocab`` (a Vocab; token models) with ``max_len``/``truncate`` describe the tokenizer,
    written beside the file as ``<name>.tokenizer.json`` and into the metadata; ``classes``
    names the outputs; ``data_config`` is kept in the metadata for ``gruengine evaluate``
    after an import; ``scaling`` (a fitted ``Scaler`` or its JSON dict, feature models) is
    computed inside the graph, whose ``features`` are then the raw, unscaled series, and kept
    in the metadata (``gruengine.scaling``).
    Returns {'path', 'tokenizer' (path or None), 'opset', 'inputs', 'output'}.
    """
    onnx = _onnx()
    scaler = _check_model(model, vocab, scaling)
    c = model.config
    g = _Graph(onnx)
    h, tp = onnx.helper, onnx.TensorProto
    members = getattr(model, "members", [model])
    outs = []
    for k, member in enumerate(members):
        g.prefix = f"member{k}." if len(members) > 1 else ""
        sd = {n: np.asarray(v, dtype=np.float32) for n, v in member.state_dict().items()}
        x, lengths, skip, x_info = _input(g, member, sd, scaler)
        seq_lens = g.op("Cast", lengths, to=tp.INT32)     # the operators' sequence_lens type
        y, h_n = _recurrent(g, member, sd, x, seq_lens)
        feats = _features(g, member, y, h_n, lengths, skip)
        out, out_name = _head(g, member, sd, feats)
        if member.neighbours is not None:
            out = _neighbour_mix(g, member.neighbours, feats, out)
        outs.append(out)
    if len(outs) > 1:
        out = g.op("Mean", *outs)                # probabilities (or values) averaged
    g.nodes.append(h.make_node("Identity", [out], [out_name], name="output"))
    out_shape = ["batch", "time", c.num_outputs] if c.task == "tag" else ["batch", c.num_outputs]
    graph = h.make_graph(
        g.nodes, "gruengine_sequence_model",
        [x_info, h.make_tensor_value_info("lengths", tp.INT64, ["batch"])],
        [h.make_tensor_value_info(out_name, tp.FLOAT, out_shape)], g.inits)
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)],
                     producer_name="gruengine", producer_version=_version())
    m.ir_version = IR_VERSION
    m.doc_string = (f"gruengine SequenceModel ({c.cell}, task {c.task}); inputs "
                    f"{x_info.name}, lengths; output {out_name}")
    mcfg = dict(c.to_dict(), dtype="float32", device="cpu")
    spec = tokenizer_spec(vocab, max_len, truncate, classes) if vocab is not None else None
    props = {"gruengine.format_version": str(FORMAT_VERSION),
             "gruengine.model_config": json.dumps(mcfg, sort_keys=True),
             "gruengine.classes": json.dumps(None if classes is None else list(classes)),
             "gruengine.data_config": json.dumps(data_config, sort_keys=True),
             "gruengine.tokenizer": json.dumps(spec),
             "gruengine.scaling": json.dumps(None if scaler is None else scaler.to_json()),
             "gruengine.ensemble": json.dumps(None if len(members) == 1 else
                                              {"members": len(members)})}
    h.set_model_props(m, props)
    onnx.checker.check_model(m, full_check=True)
    path = os.fspath(path)
    write_atomic(path, m.SerializeToString())
    tok_path = None
    if spec is not None:
        tok_path = tokenizer_path(path)
        write_atomic(tok_path, json.dumps(spec, ensure_ascii=False).encode("utf-8"))
    return {"path": path, "tokenizer": tok_path, "opset": OPSET,
            "inputs": {x_info.name: [d.dim_param or d.dim_value
                                     for d in x_info.type.tensor_type.shape.dim],
                       "lengths": ["batch"]},
            "output": {out_name: out_shape}}


def tokenizer_path(path):
    """``imdb.onnx`` -> ``imdb.tokenizer.json`` (beside the graph)."""
    root, ext = os.path.splitext(os.fspath(path))
    return (root if ext == ".onnx" else os.fspath(path)) + TOKENIZER_SUFFIX


def _version():
    from . import __version__
    return __version__


def export_checkpoint(checkpoint, path):
    """``gruengine export CKPT model.onnx``: the checkpoint's model, vocabulary, classes,
    max_len/truncate, data_config and input scaling -> ``export``'s result."""
    from .inference import load_model, vocab_from_meta
    model, meta = load_model(checkpoint, device="cpu")
    tc = meta.get("train_config") or {}
    return export(model, path, vocab=vocab_from_meta(meta), classes=meta.get("classes"),
                  max_len=tc.get("max_len"), truncate=tc.get("truncate") or "head",
                  data_config=meta.get("data_config"), scaling=meta.get("scaling"))


def verify(path, model, n=8, max_time=12, seed=0, scaling="file"):
    """Run the graph at ``path`` with onnxruntime on ``n`` random inputs of random lengths
    (up to ``max_time`` steps, padding filled with noise) and return the largest |difference|
    from ``model``'s own ``predict_proba(forward(...))`` (float: 0 when they agree exactly).

    ``scaling``: the input ``Scaler`` (or its JSON dict) applied to the raw inputs before
    ``model``, None for none, or 'file' for the one the graph's metadata records."""
    ort = require("onnxruntime", "verifying an ONNX export")
    from .data.scaling import Scaler
    if isinstance(scaling, str) and scaling == "file":
        props = {p.key: p.value for p in _onnx().load(os.fspath(path)).metadata_props}
        scaling = json.loads(props.get("gruengine.scaling", "null"))
    scaler = Scaler.from_json(scaling) if isinstance(scaling, dict) else scaling
    c = model.config
    rng = np.random.default_rng(seed)
    T = int(max_time)
    lengths = rng.integers(1, T + 1, size=n).astype(np.int64)
    lengths[0] = T
    if c.input == "tokens":
        x = rng.integers(0, c.vocab_size, size=(n, T)).astype(np.int64)
        feed_name = "ids"
    else:
        F = c.num_features if scaler is None else scaler.num_features
        x = (rng.standard_normal((n, T, F)) * rng.uniform(0.1, 10, size=(n, 1, F))
             + rng.uniform(-5, 5, size=(n, 1, F))).astype(np.float32)
        feed_name = "features"
    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {feed_name: x, "lengths": lengths})[0]
    model_x = x if scaler is None else scaler.transform_arrays(x, lengths)
    was_training = model.training
    model.eval()
    want = model.predict_proba(model.forward(model_x.astype(model.dtype, copy=False)
                                             if c.input == "features" else model_x, lengths))
    if was_training:
        model.train()
    return float(np.abs(got.astype(np.float64) - want).max())


from .onnx_import import load, read_recurrent, recurrent_module, import_onnx  # noqa: E402,F401
