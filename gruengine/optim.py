"""Optimizers (Adam, AdamW, SGD) and gradient clipping, with PyTorch's semantics.

    buf = ParamBuffer({"gru": gru, "head": head})
    opt = AdamW(buf, lr=1e-3, weight_decay=1e-2)
    ...backward fills buf.grad through the modules' grads views...
    norm = opt.step(max_norm=1.0)      # global-norm clipping folded into one fused Adam loop
    opt.lr = schedule(step)            # schedules set the attribute

``params`` is a :class:`~gruengine.params.ParamBuffer` (fast path: one kernel over the
flat buffer) or a dict name -> ndarray (each array updated in place, one kernel call
each). Both are :class:`~gruengine.params.Segment` lists to the optimizer (one segment
for the buffer, one per array) and go through one code path: the global norm is the sum,
in order, of every segment's chunk partial sums, then the update kernel runs once per
segment. Both give bit-identical results: the kernels are elementwise, and the global
norm is reduced on the same chunk grid (each parameter's range is cut into chunks from
its own start), so the clipping scale has the same bits too.

With ``max_norm``, a non-finite gradient norm skips the update (parameters, state and
step count stay as they were) and ``step`` returns that norm, so a caller can stop.

Parameters on the GPU (a ParamBuffer of ``device="cuda"`` modules, or a dict of CUDA device
arrays) keep their optimizer state on the GPU too and update there with the CUDA kernels
(``gruengine.kernels.cuda.optim``, the same primitives as ``kernels.cpu.optim``): only the
norm's chunk partials come back. ``state_dict`` returns NumPy copies on every device.
"""
import math

import numpy as np

from . import arrays
from ._checks import check_dtype, check_positive_int, check_state_dict
from ._device import device_of, is_device
from .backend import get_kernels
from .params import ParamBuffer, array_segments

__all__ = ["Adam", "AdamW", "SGD", "clip_grad_norm", "clip_grad_value", "from_config"]

_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6)


# ---------------------------------------------------------------- scalar checks

def _check_real(name, value, low=None, low_inclusive=True, high=None, high_inclusive=True):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a real number, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or (value < low if low_inclusive else value <= low)
    if high is not None:
        bad = bad or (value > high if high_inclusive else value >= high)
    if bad:
        lo = "" if low is None else f"{'>=' if low_inclusive else '>'} {low}"
        hi = "" if high is None else f"{'<=' if high_inclusive else '<'} {high}"
        want = " and ".join(s for s in (lo, hi) if s) or "finite"
        raise ValueError(f"{name}: expected a finite number {want}, got {value!r}")
    return value


def _check_betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2) with each in [0, 1), got {betas!r}")
    return (_check_real("betas[0]", betas[0], 0.0, True, 1.0, False),
            _check_real("betas[1]", betas[1], 0.0, True, 1.0, False))


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


# ---------------------------------------------------------------- gradient lists

def _flat(a):
    # a: any shape -> (a.size,) view when C-contiguous, else a contiguous copy (read-only use);
    # device arrays are contiguous (module parameters and gradients, or views of a flat buffer)
    if is_device(a):
        return a.reshape(a.size)
    return a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1)


def _global_norm(k, grads_on_grids):
    # [(g (N,), (starts, stops))] -> float: every chunk's partial sum of squares, in order,
    # added left to right; the same bits for one flat buffer or its parameters one by one
    partials = [k.sum_of_squares_partials(g, starts, stops) for g, (starts, stops) in grads_on_grids]
    return math.sqrt(k.ordered_sum(np.concatenate(partials)) if partials else 0.0)


def _grad_arrays(name, grads):
    if isinstance(grads, dict):
        items = [(f"{name}[{k!r}]", g) for k, g in grads.items()]
    elif isinstance(grads, (list, tuple)):
        items = [(f"{name}[{i}]", g) for i, g in enumerate(grads)]
    else:
        raise ValueError(f"{name}: expected a dict or list of arrays, got {type(grads).__name__}")
    out = []
    for label, g in items:
        if is_device(g):
            check_dtype(f"{label}.dtype", g.dtype)
            if out and not is_device(out[0]):
                raise ValueError(f"{label}: expected a numpy.ndarray like the others, got a device array")
            out.append(g)
            continue
        if not isinstance(g, np.ndarray):
            raise ValueError(f"{label}: expected a numpy.ndarray, got {type(g).__name__}")
        if out and is_device(out[0]):
            raise ValueError(f"{label}: expected a CUDA device array like the others, got a numpy.ndarray")
        check_dtype(f"{label}.dtype", g.dtype)
        if not g.flags.writeable:
            raise ValueError(f"{label}: expected a writeable array (clipped in place), got a read-only one")
        out.append(g)
    return out


def clip_grad_norm(grads, max_norm):
    """Scale gradients in place so their global L2 norm is at most ``max_norm``.

    Like ``torch.nn.utils.clip_grad_norm_``: ``coef = max_norm / (norm + 1e-6)`` and the
    gradients are multiplied by it when it is below 1.

    Parameters
    ----------
    grads : dict[str, ndarray] or list of ndarray
        float32 / float64 arrays, modified in place.
    max_norm : float
        Positive.

    Returns
    -------
    float
        The total norm before clipping. When it is not finite (NaN or Inf in a
        gradient) the gradients are left unchanged and the NaN/Inf is returned, so the
        caller can stop.

    CUDA device arrays (all of them, not mixed with NumPy) are clipped on the GPU.
    """
    grads = _grad_arrays("grads", grads)
    max_norm = _check_real("max_norm", max_norm, 0.0, False)
    k = get_kernels(device_of(grads[0]) if grads else "cpu")
    flats = [_flat(g) for g in grads]
    norm = _global_norm(k, [(f, k.chunk_bounds(0, f.shape[0])) for f in flats])
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + _CLIP_EPS)
    if coef < 1.0:
        for g in grads:
            k.scale_inplace(g, coef)
    return norm


def clip_grad_value(grads, clip_value):
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place.

    Like ``torch.nn.utils.clip_grad_value_``; NaN stays NaN. ``clip_value`` must be positive.
    """
    grads = _grad_arrays("grads", grads)
    clip_value = _check_real("clip_value", clip_value, 0.0, False)
    for g in grads:
        get_kernels(device_of(g)).clamp_inplace(g, clip_value)


# ---------------------------------------------------------------- optimizers

class _Optimizer:
    """Shared machinery: parameter segments, grads validation, clipping, state_dict.

    Subclasses define ``_state_names(hyper=None)``, ``_validate_hyper(dict) -> dict`` (every
    hyper-parameter except lr), ``_set_hyper``, ``_hyper_meta`` and
    ``_update(p, g, state, grad_scale)`` over (N,) arrays.
    """

    def __init__(self, params, lr):
        self.lr = lr
        self.num_steps = 0
        self._setup_params(params)

    # -- parameters and state

    def _setup_params(self, params):
        # self._segments: what the update kernels run over (one per ParamBuffer, one per array)
        if isinstance(params, ParamBuffer):
            self._params = dict(params.params)
            self._segments = [params.segment()]
        elif isinstance(params, dict):
            self._segments = array_segments(params)
            self._params = dict(params)
        else:
            raise ValueError(f"params: expected a ParamBuffer or a dict of name -> ndarray, "
                             f"got {type(params).__name__}")
        self._device = self._segments[0].device
        self._allocate_state()

    def _allocate_state(self):
        # segment.state[s]: (N,) zeros beside the segment's data; self._parts: name -> the
        # one-parameter segment over the same memory (for gradients given as a dict)
        for seg in self._segments:
            seg.state = {s: arrays.zeros(seg.size, seg.dtype, seg.device) for s in self._state_names()}
        self._parts = {name: part for seg in self._segments for name, part in seg.parts().items()}

    @property
    def _k(self):
        # the primitives: reference, CPU (Numba) or CUDA, same names and arguments
        return get_kernels(self._device)

    @property
    def lr(self):
        """Learning rate; settable (schedules change it between steps)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check_real("lr", value, 0.0, True)

    # -- the step

    def step(self, grads=None, max_norm=None):
        """Apply one update in place.

        Parameters
        ----------
        grads : dict[str, ndarray], optional
            Same names, shapes and dtypes as the parameters. ``None`` with a
            ParamBuffer means its flat ``.grad`` (the fused path); required with a dict.
        max_norm : float, optional
            Clip by the global L2 norm over all gradients (torch's formula), folded into
            the update as a scale; the gradients themselves are not modified.

        Returns
        -------
        float or None
            The pre-clip global norm when ``max_norm`` is given, else None. If that norm
            is not finite, nothing is updated.
        """
        if max_norm is not None:
            max_norm = _check_real("max_norm", max_norm, 0.0, False)
        if grads is None and all(seg.grad is not None for seg in self._segments):
            work = [(seg, seg.grad) for seg in self._segments]
        else:
            flat_grads = self._check_grads(grads)
            work = [(part, flat_grads[name]) for name, part in self._parts.items()]

        norm = None
        grad_scale = 1.0
        if max_norm is not None:
            norm = _global_norm(self._k, [(g, seg.grid) for seg, g in work])
            if not math.isfinite(norm):
                return norm
            grad_scale = min(1.0, max_norm / (norm + _CLIP_EPS))

        self.num_steps += 1
        for seg, g in work:
            self._update(seg.data, g, seg.state, grad_scale)
        return norm

    def _check_grads(self, grads):
        if grads is None:
            raise ValueError("grads: expected a dict of arrays matching params (required when params "
                             "is a dict), got None")
        if not isinstance(grads, dict):
            raise ValueError(f"grads: expected a dict of name -> ndarray, got {type(grads).__name__}")
        if grads.keys() != self._params.keys():
            missing = sorted(set(self._params) - set(grads))
            extra = sorted(set(grads) - set(self._params))
            raise ValueError(f"grads: keys do not match params; missing {missing}, unexpected {extra}")
        flat = {}
        for name, p in self._params.items():
            g = grads[name]
            if is_device(g) != (self._device == "cuda"):
                kind = "CUDA device array" if self._device == "cuda" else "numpy.ndarray"
                raise ValueError(f"grads[{name!r}]: expected a {kind} like the parameters, "
                                 f"got {type(g).__name__}")
            arrays.check(f"grads[{name!r}]", g, tuple(p.shape), p.dtype, finite=False)
            flat[name] = _flat(g)
        return flat

    # -- state_dict

    def state_dict(self):
        """``{"arrays": {"<state>.<param name>": ndarray copy}, "meta": {json-serialisable}}``."""
        out = {}
        for s in self._segments[0].state:          # one copy per state buffer (from the GPU on cuda)
            for seg in self._segments:
                out.update((f"{s}.{name}", a) for name, a in seg.named_copies(seg.state[s]).items())
        meta = {"type": type(self).__name__, "step": self.num_steps, "lr": self.lr,
                "names": list(self._params)}
        meta.update(self._hyper_meta())
        return {"arrays": out, "meta": meta}

    def load_state_dict(self, state_dict):
        """Validate (type, names, shapes, dtypes, hyper-parameters), then restore in place.

        Restores the step count, lr and the other hyper-parameters saved with the state.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"arrays", "meta"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"state_dict: expected a dict with keys ['arrays', 'meta'], got {got}")
        meta = state_dict["meta"]
        if not isinstance(meta, dict):
            raise ValueError(f"state_dict['meta']: expected a dict, got {type(meta).__name__}")
        required = ["type", "step", "lr", "names"] + list(self._hyper_meta())
        missing = [k for k in required if k not in meta]
        if missing:
            raise ValueError(f"state_dict['meta']: missing keys {missing}")
        kind = type(self).__name__
        if meta["type"] != kind:
            raise ValueError(f"state_dict['meta']['type']: expected {kind!r}, got {meta['type']!r}")
        names = meta["names"]
        if not isinstance(names, (list, tuple)) or sorted(map(str, names)) != sorted(self._params):
            raise ValueError(f"state_dict['meta']['names']: expected the names {sorted(self._params)}, "
                             f"got {names!r}")
        step = check_positive_int("state_dict['meta']['step']", meta["step"], minimum=0)
        lr = _check_real("state_dict['meta']['lr']", meta["lr"], 0.0, True)
        hyper = self._validate_hyper(meta)
        # Expected arrays follow the saved hyper-parameters (SGD keeps no buffer without momentum).
        expected = {}
        for s in self._state_names(hyper):
            for name, p in self._params.items():
                expected[f"{s}.{name}"] = p
        check_state_dict("state_dict['arrays']", state_dict["arrays"], expected)

        self.lr = lr
        self.num_steps = step
        self._set_hyper(hyper)
        if set(self._segments[0].state) != set(self._state_names()):
            self._allocate_state()
        saved = state_dict["arrays"]
        for seg in self._segments:
            for s, flat in seg.state.items():
                seg.assign_named(flat, {name: saved[f"{s}.{name}"] for name in seg.views})

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyper_meta().items())
        return f"{type(self).__name__}(lr={self.lr!r}, {hyper}, step={self.num_steps})"


class Adam(_Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam``: ``weight_decay`` is L2 (added to the gradient).

    ``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``; ``params`` is
    a ParamBuffer or a dict name -> ndarray. State: ``exp_avg`` and ``exp_avg_sq`` per parameter.
    """
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self._set_hyper(self._validate_hyper({"betas": betas, "eps": eps, "weight_decay": weight_decay}))
        super().__init__(params, lr)

    def _state_names(self, hyper=None):
        return ("exp_avg", "exp_avg_sq")

    @staticmethod
    def _validate_hyper(h):
        return {"betas": _check_betas(h["betas"]),
                "eps": _check_real("eps", h["eps"], 0.0, False),
                "weight_decay": _check_real("weight_decay", h["weight_decay"], 0.0, True)}

    def _set_hyper(self, h):
        self.betas, self.eps, self.weight_decay = h["betas"], h["eps"], h["weight_decay"]

    def _hyper_meta(self):
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, p, g, state, grad_scale):
        # p, g: (N,) one dtype; state["exp_avg"], state["exp_avg_sq"]: (N,)
        self._k.adam_step(p, g, state["exp_avg"], state["exp_avg_sq"], self.num_steps, self.lr,
                          self.betas[0], self.betas[1], self.eps, self.weight_decay,
                          self._decoupled, grad_scale)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter), as ``torch.optim.AdamW``: decoupled weight decay,
    ``param *= 1 - lr * weight_decay`` before the Adam update.

    ``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)``.
    """
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class SGD(_Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay, as ``torch.optim.SGD``.

    ``SGD(params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)``.
    State: ``momentum_buffer`` per parameter when ``momentum != 0`` (set to the gradient
    on the first step).
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self._set_hyper(self._validate_hyper({"momentum": momentum, "dampening": dampening,
                                              "nesterov": nesterov, "weight_decay": weight_decay}))
        super().__init__(params, lr)

    def _state_names(self, hyper=None):
        momentum = self.momentum if hyper is None else hyper["momentum"]
        return ("momentum_buffer",) if momentum != 0.0 else ()

    @staticmethod
    def _validate_hyper(h):
        out = {"momentum": _check_real("momentum", h["momentum"], 0.0, True),
               "dampening": _check_real("dampening", h["dampening"]),
               "nesterov": _check_bool("nesterov", h["nesterov"]),
               "weight_decay": _check_real("weight_decay", h["weight_decay"], 0.0, True)}
        if out["nesterov"] and (out["momentum"] <= 0.0 or out["dampening"] != 0.0):
            raise ValueError(f"nesterov: requires momentum > 0 and dampening == 0, got momentum="
                             f"{out['momentum']!r}, dampening={out['dampening']!r}")
        return out

    def _set_hyper(self, h):
        self.momentum, self.dampening = h["momentum"], h["dampening"]
        self.nesterov, self.weight_decay = h["nesterov"], h["weight_decay"]

    def _hyper_meta(self):
        return {"momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def _update(self, p, g, state, grad_scale):
        # p, g: (N,); state["momentum_buffer"]: (N,) when momentum != 0
        self._k.sgd_step(p, g, state.get("momentum_buffer"), self.lr, self.momentum, self.dampening,
                         self.nesterov, self.weight_decay, grad_scale, self.num_steps == 1)


def from_config(c, params):
    """The optimizer a run configuration names (``optimizer``, ``lr``, ``weight_decay``) over
    ``params`` (a ParamBuffer)."""
    if c["optimizer"] == "sgd":
        return SGD(params, lr=c["lr"], momentum=0.9, weight_decay=c["weight_decay"])
    cls = AdamW if c["optimizer"] == "adamw" else Adam
    return cls(params, lr=c["lr"], weight_decay=c["weight_decay"])
