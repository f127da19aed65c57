"""SequenceModel: (Embedding | Linear | nothing) -> [conv front end] -> recurrent stack ->
pooling -> Linear head.

    model = SequenceModel({"input": "tokens", "vocab_size": 20000, "embed_dim": 128,
                           "hidden_size": 128, "bidirectional": True, "pooling": "max",
                           "task": "classify", "num_outputs": 2, "seed": 0})
    logits = model.forward(ids, lengths)          # ids (B, T) int64 -> (B, 2)
    loss, dlogits = model.loss_and_grad(logits, targets, lengths)
    model.params.zero_grad(); model.backward(dlogits)   # fills model.params.grad

Tasks: ``classify`` (outputs (B, C), softmax cross-entropy), ``regress`` (outputs (B, K),
mean squared error), ``tag`` (outputs (B, T, C), one label per step, padding steps masked).

On ``device="cuda"`` the whole training step stays on the GPU: parameters, gradients and
(through ``gruengine.optim``) optimizer state live there, the batch goes over once, the
activations backward needs stay there, and ``forward`` copies only the outputs back (for
the metrics). ``loss_and_grad`` then computes the loss on the GPU from the outputs it kept
and returns ``doutputs`` as a device array, which ``backward`` takes as is.
"""
from dataclasses import dataclass, asdict, fields

import numpy as np

from . import arrays
from ._checks import check_array, check_dtype, check_lengths, check_positive_int
from .backend import check_device
from .cells import CELLS

INPUTS = ("tokens", "features")
POOLINGS = ("last", "mean", "max")
TASKS = ("classify", "regress", "tag")


@dataclass
class ModelConfig:
    task: str = "classify"
    num_outputs: int = 2
    input: str = "tokens"
    vocab_size: int = 20000
    embed_dim: int = 128
    padding_idx: int | None = 0  # None: every id is a real token
    num_features: int = 1
    input_proj: int = 0          # features: 0 = straight into the cell, else a Linear to this size
    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    reset_after: bool = True
    forget_bias: float = 0.0     # LSTM only: added to bias_ih's forget block at initialisation
    pooling: str = "last"
    # convolutional front end (gruengine.conv): 0 = none, else channels of every block
    conv_channels: int = 0
    conv_kernels: tuple = (7, 5, 3)   # kernel sizes, one block per entry
    conv_stride: int = 1         # stride of the first block (the recurrent stack sees T/stride)
    conv_norm: str = "batch"     # 'batch' or 'layer' normalisation in each block
    conv_skip: bool = False      # the head also reads the front end's output, mean over time
    embed_skip: bool = False     # the head also reads the token embeddings, mean over time
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"model config: unknown keys {extra}; expected some of {sorted(known)}")
        return cls(**d)

    def validate(self):
        """Check every field; return a copy with dtype/device resolved."""
        c = ModelConfig(**asdict(self))
        _choice("task", c.task, TASKS)
        _choice("input", c.input, INPUTS)
        _choice("cell", c.cell, tuple(CELLS))
        _choice("pooling", c.pooling, POOLINGS)
        c.num_outputs = check_positive_int("num_outputs", c.num_outputs)
        c.hidden_size = check_positive_int("hidden_size", c.hidden_size)
        c.num_layers = check_positive_int("num_layers", c.num_layers)
        if c.input == "tokens":
            c.vocab_size = check_positive_int("vocab_size", c.vocab_size, minimum=2)
            c.embed_dim = check_positive_int("embed_dim", c.embed_dim)
            if c.padding_idx is not None and not (
                    isinstance(c.padding_idx, (int, np.integer)) and 0 <= c.padding_idx < c.vocab_size):
                raise ValueError(f"padding_idx: expected an integer in [0, {c.vocab_size}), "
                                 f"got {c.padding_idx!r}")
        else:
            c.num_features = check_positive_int("num_features", c.num_features)
            c.input_proj = check_positive_int("input_proj", c.input_proj, minimum=0)
        if isinstance(c.dropout, bool) or not isinstance(c.dropout, (int, float)) \
                or not 0.0 <= c.dropout < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {c.dropout!r}")
        c.dropout = float(c.dropout)
        c.bidirectional, c.reset_after = bool(c.bidirectional), bool(c.reset_after)
        c.forget_bias = _forget_bias(c.forget_bias, c.cell)
        if c.embed_skip and (c.input != "tokens" or c.task == "tag"):
            raise ValueError(f"embed_skip: expected false for a {c.task!r} model reading "
                             f"{c.input} (it pools token embeddings for one output per "
                             f"sequence), got {c.embed_skip!r}")
        c.embed_skip = bool(c.embed_skip)
        from .conv import validate_model_config
        validate_model_config(c)
        c.dtype = check_dtype("dtype", c.dtype).name
        c.device = check_device(c.device)
        if isinstance(c.seed, bool) or not isinstance(c.seed, (int, np.integer)) or c.seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {c.seed!r}")
        c.seed = int(c.seed)
        return c

    def to_dict(self):
        return asdict(self)


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")


def _forget_bias(v, cell):
    # shared with the run configuration's check (gruengine.config)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not np.isfinite(v):
        raise ValueError(f"forget_bias: expected a finite number, got {v!r}")
    if v != 0 and cell != "lstm":
        raise ValueError(f"forget_bias: only the LSTM has a forget gate; expected 0 with cell "
                         f"{cell!r}, got {v!r}")
    return float(v)


def _sub_seed(seed, k):
    # independent, reproducible streams per module from one seed
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


class SequenceModel:
    """A recurrent sequence model assembled from gruengine modules (see module docstring)."""

    def __init__(self, config):
        from .layers import Embedding, Linear, Pool, Dropout
        from .params import ParamBuffer
        self.config = c = ModelConfig.from_dict(config).validate()
        self.dtype = np.dtype(c.dtype)
        D = 2 if c.bidirectional else 1
        mods = {}
        if c.input == "tokens":
            mods["embedding"] = Embedding(c.vocab_size, c.embed_dim, padding_idx=c.padding_idx,
                                          dtype=self.dtype, device=c.device, seed=_sub_seed(c.seed, 0))
            cell_in = c.embed_dim
        elif c.input_proj:
            mods["input_proj"] = Linear(c.num_features, c.input_proj, dtype=self.dtype,
                                        device=c.device, seed=_sub_seed(c.seed, 0))
            cell_in = c.input_proj
        else:
            cell_in = c.num_features
        if c.conv_channels:
            from .conv import ConvFrontEnd
            strides = [c.conv_stride] + [1] * (len(c.conv_kernels) - 1)
            mods["frontend"] = ConvFrontEnd(cell_in, c.conv_channels, c.conv_kernels, strides,
                                            norm=c.conv_norm, dtype=self.dtype, device=c.device,
                                            seed=_sub_seed(c.seed, 5))
            cell_in = c.conv_channels
        mods["rnn"] = CELLS[c.cell](cell_in, c, _sub_seed(c.seed, 1))
        head_in = (D * c.hidden_size + (c.conv_channels if c.conv_skip else 0)
                   + (c.embed_dim if c.embed_skip else 0))
        mods["head"] = Linear(head_in, c.num_outputs, dtype=self.dtype, device=c.device,
                              seed=_sub_seed(c.seed, 2))
        self.modules = mods
        # dropout on the cell's input and on the features the head reads (no parameters)
        self._drop_in = Dropout(c.dropout, seed=_sub_seed(c.seed, 3), device=c.device) if c.dropout else None
        self._drop_out = Dropout(c.dropout, seed=_sub_seed(c.seed, 4), device=c.device) if c.dropout else None
        self.pool = Pool(c.pooling, device=c.device) if c.pooling != "last" else None
        self.skip_pool = Pool("mean", device=c.device) if c.conv_skip else None
        self.embed_pool = Pool("mean", device=c.device) if c.embed_skip else None
        self.params = ParamBuffer(mods)
        self.training = True
        self._cache = None
        self._outputs = None      # (host copy returned by forward, the outputs where computed)
        self.neighbours = None    # a gruengine.neighbours.Neighbours: mixed in, in eval mode

    # ------------------------------------------------------------------ modes
    # the attribute under which each module keeps the Generator its dropout masks come from
    _RNG_ATTRS = ("_dropout_rng", "_rng")

    def _dropout_holders(self):
        """(object, attribute) of every dropout Generator: ours and the cell's."""
        out = []
        rnn = self.modules["rnn"]
        for m in (self._drop_in, self._drop_out, getattr(rnn, "inner", rnn)):
            if m is None:
                continue
            for attr in self._RNG_ATTRS:
                if isinstance(getattr(m, attr, None), np.random.Generator):
                    out.append((m, attr))
                    break
        return out

    def dropout_rngs(self):
        """The dropout Generators, in a fixed order."""
        return [getattr(m, a) for m, a in self._dropout_holders()]

    def set_dropout_rngs(self, make):
        """Replace the k-th dropout Generator by ``make(k)`` (a trainer reseeds them per step,
        so the masks are a function of the step and a resumed run draws the same ones)."""
        for k, (m, a) in enumerate(self._dropout_holders()):
            setattr(m, a, make(k))

    def train(self):
        return self._set_mode(True)

    def eval(self):
        return self._set_mode(False)

    def _set_mode(self, training):
        self.training = training
        for m in list(self.modules.values()) + [self._drop_in, self._drop_out]:
            if m is not None:
                m.train() if training else m.eval()
        return self

    # ------------------------------------------------------------------ forward / backward
    def check_inputs(self, inputs, lengths):
        c = self.config
        if c.input == "tokens":
            check_array("inputs", inputs, (None, None), np.int64)
            if inputs.size and (inputs.min() < 0 or inputs.max() >= c.vocab_size):
                raise ValueError(f"inputs: token ids must lie in [0, {c.vocab_size}), got range "
                                 f"[{int(inputs.min())}, {int(inputs.max())}]")
        else:
            check_array("inputs", inputs, (None, None, c.num_features), self.dtype)
        B, T = inputs.shape[:2]
        return check_lengths("lengths", lengths, B, T)

    def forward(self, inputs, lengths=None):
        """inputs (B, T) int64 ids or (B, T, F) features; lengths (B,) -> outputs
        (B, num_outputs), or (B, T, num_outputs) for ``task='tag'`` (NumPy on every device)."""
        feats, B, T, lengths = self._features(inputs, lengths)
        if self._drop_out is not None and self.training:
            feats = self._drop_out.forward(feats)
        out = self.modules["head"].forward(feats)
        self._cache = (B, T, lengths)
        host = arrays.to_host(out)
        if self.neighbours is not None and not self.training:
            # log of the probabilities mixed with the nearest training sequence's label
            host = self.neighbours.mix(host, arrays.to_host(feats))
            out = arrays.on_device_of(host, self.config.device)
        self._outputs = (host, out)
        return host

    def features(self, inputs, lengths=None):
        """The vectors the head reads, as NumPy: (B, head inputs), or (B, T, 2H or H) for
        ``task='tag'``; the outputs are ``features @ head.weight.T + head.bias``. Call it in
        eval mode (``model.eval()``) for a sequence's representation: in training mode it is a
        training forward pass (batch norm reads the batch and moves its running averages)."""
        return arrays.to_host(self._features(inputs, lengths)[0])

    def _features(self, inputs, lengths):
        # (features the head reads, B, T, lengths after the front end's strides)
        c, m, dev = self.config, self.modules, self.config.device
        lengths = self.check_inputs(inputs, lengths)
        B, T = inputs.shape[:2]
        x = arrays.on_device_of(inputs, dev)                      # the batch goes over once
        bag = None
        if c.input == "tokens":
            x = m["embedding"].forward(x)                         # (B, T, E)
            if c.embed_skip:
                bag = self.embed_pool.forward(x, lengths)         # (B, E)
        elif "input_proj" in m:
            x = m["input_proj"].forward(x)                        # (B, T, P)
        skip = None
        if "frontend" in m:
            x, lengths = m["frontend"].forward(x, lengths)        # (B, T', C), T' = T/stride
            if c.conv_skip:
                skip = self.skip_pool.forward(x, lengths)         # (B, C)
        if self._drop_in is not None and self.training:
            x = self._drop_in.forward(x)
        y, h_n = m["rnn"].forward(x, lengths=lengths)             # y (B, T', D*H), h_n (L*D, B, H)
        D = 2 if c.bidirectional else 1
        if c.task == "tag":
            feats = y                                             # (B, T, D*H)
        elif c.pooling == "last":
            # the last layer's final states, directions side by side: right for reverse too
            feats = arrays.concat_last([h_n[h_n.shape[0] - D + d] for d in range(D)])  # (B, D*H)
        else:
            feats = self.pool.forward(y, lengths)                 # (B, D*H)
        if skip is not None:
            feats = arrays.concat_last([feats, skip])             # (B, D*H + C)
        if bag is not None:
            feats = arrays.concat_last([feats, bag])              # (B, D*H [+ C] + E)
        return feats, B, T, lengths

    def backward(self, doutputs):
        """Accumulate gradients into ``self.params.grad`` (after ``zero_grad``).

        ``doutputs``: NumPy, or the device array ``loss_and_grad`` returned on 'cuda'."""
        if self._cache is None:
            raise ValueError("backward: call forward first")
        c, m, dev = self.config, self.modules, self.config.device
        B, T, lengths = self._cache
        dfeats = m["head"].backward(arrays.on_device_of(doutputs, dev))
        if self._drop_out is not None and self.training:
            dfeats = self._drop_out.backward(dfeats)
        D, H = (2 if c.bidirectional else 1), c.hidden_size
        dskip = dbag = None
        if c.embed_skip:
            n = D * H + (c.conv_channels if c.conv_skip else 0)
            dbag = arrays.columns(dfeats, n, n + c.embed_dim)
            dfeats = arrays.columns(dfeats, 0, n)
        if c.conv_skip:
            dskip = arrays.columns(dfeats, D * H, D * H + c.conv_channels)
            dfeats = arrays.columns(dfeats, 0, D * H)
        if c.task == "tag":
            dy, dh_n = dfeats, None
        elif c.pooling == "last":
            LD = c.num_layers * D
            dy, dh_n = None, arrays.zeros((LD, B, H), self.dtype, dev)     # (L*D, B, H)
            for d in range(D):
                arrays.assign(dh_n[LD - D + d], arrays.columns(dfeats, d * H, (d + 1) * H))
        else:
            dy, dh_n = self.pool.backward(dfeats), None
        dx, _ = m["rnn"].backward(dy, dh_n)
        if self._drop_in is not None and self.training:
            dx = self._drop_in.backward(dx)
        if "frontend" in m:
            if dskip is not None:
                dx = arrays.add(dx, self.skip_pool.backward(dskip))
            dx = m["frontend"].backward(dx)
        if c.input == "tokens":
            if dbag is not None:
                dx = arrays.add(dx, self.embed_pool.backward(dbag))
            m["embedding"].backward(dx)
        elif "input_proj" in m:
            m["input_proj"].backward(dx)
        return None

    # ------------------------------------------------------------------ loss and metrics
    def check_targets(self, targets, n, T=None):
        c = self.config
        if c.task == "classify":
            check_array("targets", targets, (n,), np.int64)
        elif c.task == "tag":
            check_array("targets", targets, (n, T), np.int64)
        else:
            check_array("targets", targets, (n, c.num_outputs))
            return targets.astype(self.dtype, copy=False)
        if targets.size and (targets.min() < 0 or targets.max() >= c.num_outputs):
            raise ValueError(f"targets: class labels must lie in [0, {c.num_outputs}), got range "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        return targets

    def loss_and_grad(self, outputs, targets, lengths):
        """Loss of ``outputs`` against ``targets`` for the model's task -> (loss, doutputs).

        On 'cuda' the loss runs on the GPU (on the outputs ``forward`` kept there, when
        ``outputs`` is what it returned) and ``doutputs`` is a device array."""
        from . import losses
        c = self.config
        if c.device == "cuda":
            kept = self._outputs
            outputs = kept[1] if kept is not None and outputs is kept[0] else \
                arrays.on_device_of(arrays.check("outputs", outputs, (None,) * outputs.ndim,
                                                 self.dtype), "cuda")
        if c.task == "classify":
            targets = self.check_targets(targets, outputs.shape[0])
            return losses.softmax_cross_entropy(outputs, targets)
        if c.task == "regress":
            targets = self.check_targets(targets, outputs.shape[0])
            return losses.mse(outputs, targets)
        B, T, C = outputs.shape
        targets = self.check_targets(targets, B, T)
        mask = self.step_mask(lengths, B, T)                      # (B, T)
        tgt = np.where(mask, targets, 0).reshape(B * T)
        flat = outputs.reshape(B * T, C)
        loss, dflat = losses.softmax_cross_entropy(flat if arrays.is_device(flat) else
                                                   np.ascontiguousarray(flat),
                                                   np.ascontiguousarray(tgt),
                                                   mask.reshape(B * T).astype(self.dtype))
        return loss, dflat.reshape(B, T, C)

    @staticmethod
    def step_mask(lengths, B, T):
        return np.arange(T)[None, :] < np.asarray(lengths)[:, None]      # (B, T) bool

    def score(self, outputs, targets, lengths):
        """Sums for metrics: {'correct': , 'count': } (classify/tag) or {'sq_err':, 'count':}."""
        c = self.config
        if c.task == "classify":
            return {"correct": int((outputs.argmax(1) == targets).sum()), "count": len(targets)}
        if c.task == "tag":
            B, T, _ = outputs.shape
            mask = self.step_mask(lengths, B, T)
            return {"correct": int(((outputs.argmax(2) == targets) & mask).sum()),
                    "count": int(mask.sum())}
        err = outputs.astype(np.float64) - targets
        return {"sq_err": float((err * err).sum()), "count": int(err.size)}

    def predict_proba(self, outputs):
        """Softmax over the last axis (classify/tag); the outputs themselves for regress."""
        if self.config.task == "regress":
            return outputs
        z = outputs - outputs.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """{'<module>.<param>': NumPy copy} in PyTorch-style names, e.g. 'rnn.weight_ih_l0',
        and the front end's batch-norm running statistics ('frontend.norm0.running_mean')."""
        fe = self.modules.get("frontend")
        return dict(self.params.state_dict(), **(fe.buffer_state("frontend.") if fe else {}),
                    **(self.neighbours.state_dict() if self.neighbours is not None else {}))

    def load_state_dict(self, d):
        """Validate names, shapes and dtypes, then copy in place (views stay valid). The
        stored neighbours (``neighbours.features``, ``neighbours.labels``) come with it when
        ``d`` has them, and are dropped when it has not."""
        from .neighbours import KEYS, Neighbours
        if not isinstance(d, dict):
            raise ValueError(f"state_dict: expected a dict of arrays, got {type(d).__name__}")
        have = [k for k in KEYS if k in d]
        if have and len(have) < len(KEYS):
            raise ValueError(f"state_dict: {have} without {sorted(set(KEYS) - set(have))}")
        if have and self.config.task != "classify":
            raise ValueError("state_dict: stored neighbours belong to a classifier")
        nb = Neighbours(d[KEYS[0]], d[KEYS[1]], self.config.num_outputs) if have else None
        width = self.modules["head"].in_features
        if nb is not None and nb.features.shape[1] != width:
            raise ValueError(f"state_dict: neighbours.features has {nb.features.shape[1]} "
                             f"columns; the head reads {width}")
        d = {k: v for k, v in d.items() if k not in KEYS}
        fe = self.modules.get("frontend")
        self.params.load_state_dict(fe.load_buffer_state(d, "frontend.") if fe else d)
        self.neighbours = nb
