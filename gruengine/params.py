"""One flat buffer for all parameters, one for all gradients, with named views.

    buf = ParamBuffer({"encoder": gru, "head": linear})
    buf.data, buf.grad            # (N,) flat arrays
    buf.params["head.weight"]     # view into buf.data, shape of the parameter
    buf.zero_grad()               # one fill

Building the buffer copies every module's current parameter (and gradient) values in and
re-points the modules' ``params[k]`` / ``grads[k]`` dict entries to views of the flat
arrays. Layers read ``self.params[k]`` at every call and write gradients into
``self.grads[k]`` in place (docs/architecture.md, "Modules"), so they keep working, see
the same numbers, and an optimizer can update every parameter with one fused loop.

Modules built with ``device="cuda"`` hold device arrays: the buffer is then built on the
device (``device == "cuda"``, ``data`` and ``grad`` are device arrays and the named views
are device views), so parameters and gradients never leave the GPU. ``state_dict`` returns
NumPy copies and ``load_state_dict`` takes NumPy arrays on every device.

A :class:`Segment` is what the optimizers update with one kernel call: flat data, gradient
and state arrays with named ranges. A ParamBuffer is one segment (``buf.segment()``), a
dict of arrays is one segment per array; ``gruengine.optim`` has one code path over both.
"""
import numpy as np

from . import arrays
from ._checks import check_dtype, check_state_dict
from ._device import device_of
from .reference.optim import chunk_bounds

__all__ = ["ParamBuffer", "Segment", "array_segments"]


def _named_copies(flat, views):
    # flat: (N,) NumPy or device -> {name: NumPy copy of flat[sl] in shape}; one device copy
    host = arrays.to_host(flat)
    return {name: host[sl].reshape(shape).copy() for name, (sl, shape) in views.items()}


def _assign_named(flat, views, named):
    # flat[sl] = named[name] for every view, in place; device: assembled on the host, one copy
    host = flat if isinstance(flat, np.ndarray) else np.empty(flat.shape[0], flat.dtype)
    for name, (sl, _) in views.items():
        host[sl] = named[name].reshape(-1)
    if host is not flat:
        arrays.assign(flat, host)


class Segment:
    """Flat parameters with named ranges, updated by one optimizer kernel call.

    Parameters
    ----------
    data : ndarray or CUDA device array, shape (N,)
        C-contiguous, updated in place.
    views : dict[str, (slice, tuple)]
        Parameter name -> (its range in ``data``, its shape); the ranges tile ``data`` in order.
    grad : same kind as ``data``, shape (N,), optional
        The flat gradient (a ParamBuffer's); None when gradients come with each step.

    Attributes
    ----------
    state : dict[str, array (N,)]
        Optimizer state name -> flat buffer on the segment's device (set by the optimizer).
    device, dtype, size
    """

    def __init__(self, data, views, grad=None):
        self.data, self.grad, self.views = data, grad, dict(views)
        self.device = device_of(data)
        self.dtype = np.dtype(data.dtype)
        self.size = data.shape[0]
        self.state = {}
        self._grid = None

    @property
    def grid(self):
        """(starts, stops): int64 chunk bounds of the sum of squares, on the segment's device.

        Each parameter's range is cut from its own start, so one parameter alone and the same
        parameter inside a flat buffer are reduced on the same chunks, with the same bits."""
        if self._grid is None:
            bounds = [chunk_bounds(sl.start, sl.stop - sl.start) for sl, _ in self.views.values()]
            self._grid = tuple(arrays.on_device_of(np.concatenate(b), self.device)
                               for b in zip(*bounds))
        return self._grid

    def parts(self):
        """name -> a Segment of that one parameter, over this one's data and state memory
        (this segment itself when it holds one parameter)."""
        if len(self.views) == 1:
            return {name: self for name in self.views}
        out = {}
        for name, (sl, shape) in self.views.items():
            part = Segment(self.data[sl], {name: (slice(0, sl.stop - sl.start), shape)})
            part.state = {s: a[sl] for s, a in self.state.items()}
            out[name] = part
        return out

    def named_copies(self, flat):
        """``{name: NumPy copy}`` of each parameter's range of ``flat`` (N,) (data, grad or
        a state buffer), in the parameter's shape."""
        return _named_copies(flat, self.views)

    def assign_named(self, flat, named):
        """Copy ``named[name]`` (NumPy, the parameter's shape) into each range of ``flat``."""
        _assign_named(flat, self.views, named)


def array_segments(params):
    """One :class:`Segment` per array of a dict name -> ndarray (or CUDA device array).

    Validated: string names, one device, float32/float64, C-contiguous, writeable and
    disjoint on the host (each array is updated in place through a flat view)."""
    if not params:
        raise ValueError("params: expected a non-empty dict of name -> ndarray or a ParamBuffer, got {}")
    device = device_of(next(iter(params.values())))
    for name, p in params.items():
        if not isinstance(name, str):
            raise ValueError(f"params: expected string names, got {name!r}")
        if device_of(p) != device:
            raise ValueError(f"params[{name!r}]: expected every parameter on one device "
                             f"({device}, like the first), got {type(p).__name__}")
        if device == "cpu" and not isinstance(p, np.ndarray):
            raise ValueError(f"params[{name!r}]: expected a numpy.ndarray, got {type(p).__name__}")
        check_dtype(f"params[{name!r}].dtype", p.dtype)
        if device == "cpu" and not (p.flags.c_contiguous and p.flags.writeable):
            raise ValueError(f"params[{name!r}]: expected a C-contiguous writeable array "
                             f"(updated in place), got a non-contiguous or read-only one")
    items = list(params.items())
    for i in range(len(items) if device == "cpu" else 0):
        for j in range(i + 1, len(items)):
            a, b = items[i][1], items[j][1]
            if a.size and b.size and np.may_share_memory(a, b):
                raise ValueError(f"params[{items[j][0]!r}]: shares memory with {items[i][0]!r}; "
                                 f"expected distinct arrays")
    return [Segment(p.reshape(p.size), {name: (slice(0, p.size), tuple(p.shape))})
            for name, p in params.items()]


class ParamBuffer:
    """Flat parameter and gradient storage for a dict of modules.

    Parameters
    ----------
    modules : dict[str, module]
        Prefix -> module; each module has ``.params`` and ``.grads`` dicts with the same
        keys, float32 or float64 arrays, one dtype across all modules. Parameter
        ``k`` of module ``prefix`` is named ``"prefix.k"``.

    Attributes
    ----------
    data, grad : ndarray (or CUDA device array), shape (N,)
        The flat parameter and gradient arrays (C-contiguous).
    params, grads : dict[str, ndarray]
        ``"prefix.k"`` -> view into ``data`` / ``grad`` with the parameter's shape.
    slices : dict[str, slice]
        ``"prefix.k"`` -> the parameter's range in the flat arrays.
    dtype : numpy.dtype
    device : 'cuda' when the modules' parameters are device arrays, else 'cpu'
    """

    def __init__(self, modules):
        if not isinstance(modules, dict) or not modules:
            got = type(modules).__name__ if not isinstance(modules, dict) else "an empty dict"
            raise ValueError(f"modules: expected a non-empty dict of name -> module, got {got}")
        entries = []   # (module, key, name, param, grad)
        seen_modules = {}
        for prefix, module in modules.items():
            if not isinstance(prefix, str) or not prefix:
                raise ValueError(f"modules: expected non-empty string names, got {prefix!r}")
            if id(module) in seen_modules:
                raise ValueError(f"modules[{prefix!r}]: the same module is also given as "
                                 f"{seen_modules[id(module)]!r}; expected each module once")
            seen_modules[id(module)] = prefix
            params = getattr(module, "params", None)
            grads = getattr(module, "grads", None)
            if not isinstance(params, dict) or not isinstance(grads, dict):
                raise ValueError(f"modules[{prefix!r}]: expected a module with .params and .grads dicts, "
                                 f"got {type(module).__name__}")
            if module.params is not params or module.grads is not grads:
                raise ValueError(f"modules[{prefix!r}]: expected .params and .grads to be dicts the module "
                                 f"keeps (they are re-pointed to the flat buffer), got a new dict on each access")
            if set(params) != set(grads):
                raise ValueError(f"modules[{prefix!r}].grads: keys do not match params; "
                                 f"missing {sorted(set(params) - set(grads))}, "
                                 f"unexpected {sorted(set(grads) - set(params))}")
            for key, p in params.items():
                name = f"{prefix}.{key}"
                on_device = arrays.is_device(p)
                if not isinstance(p, np.ndarray) and not on_device:
                    raise ValueError(f"params[{name!r}]: expected a numpy.ndarray or a CUDA device "
                                     f"array, got {type(p).__name__}")
                if arrays.is_device(grads[key]) != on_device:
                    raise ValueError(f"grads[{name!r}]: expected the same kind of array as the "
                                     f"parameter ({'device' if on_device else 'numpy'}), got "
                                     f"{type(grads[key]).__name__}")
                check_dtype(f"params[{name!r}].dtype", p.dtype)
                arrays.check(f"grads[{name!r}]", grads[key], tuple(p.shape), p.dtype, finite=False)
                entries.append((module, key, name, p, grads[key]))
        if not entries:
            raise ValueError("modules: expected at least one parameter, got modules with empty .params")

        dtype = np.dtype(entries[0][3].dtype)
        on_device = arrays.is_device(entries[0][3])
        for _, _, name, p, _ in entries:
            if p.dtype != dtype:
                raise ValueError(f"params[{name!r}]: expected dtype {dtype} (all parameters must share "
                                 f"the dtype of {entries[0][2]!r}), got {p.dtype}")
            if arrays.is_device(p) != on_device:
                raise ValueError(f"params[{name!r}]: expected every module on one device (the "
                                 f"first, {entries[0][2]!r}, is on {'cuda' if on_device else 'cpu'})")
        params_list = [p for _, _, _, p, _ in entries]
        if not on_device:     # device arrays come from the modules' own constructors
            for i in range(len(params_list)):
                for j in range(i + 1, len(params_list)):
                    a, b = params_list[i], params_list[j]
                    if a.size and b.size and np.may_share_memory(a, b):
                        raise ValueError(f"params[{entries[j][2]!r}]: shares memory with "
                                         f"{entries[i][2]!r}; tied parameters are not supported")

        total = sum(p.size for p in params_list)
        self.dtype = dtype
        self.device = "cuda" if on_device else "cpu"
        data = np.empty(total, dtype=dtype)
        grad = np.zeros(total, dtype=dtype)
        self.slices = {}
        offset = 0
        for _, _, name, p, g in entries:
            sl = slice(offset, offset + p.size)
            data[sl] = arrays.to_host(p).reshape(-1)
            grad[sl] = arrays.to_host(g).reshape(-1)
            self.slices[name] = sl
            offset += p.size
        self.data = arrays.to_device(data) if on_device else data
        self.grad = arrays.to_device(grad) if on_device else grad
        self.params = {name: self.data[sl].reshape(p.shape)
                       for (_, _, name, p, _), sl in zip(entries, self.slices.values())}
        self.grads = {name: self.grad[sl].reshape(p.shape)
                      for (_, _, name, p, _), sl in zip(entries, self.slices.values())}
        self._views = {name: (sl, tuple(self.params[name].shape)) for name, sl in self.slices.items()}
        # Re-point only after every check and copy succeeded, so a failure leaves modules untouched.
        for module, key, name, _, _ in entries:
            module.params[key] = self.params[name]
            module.grads[key] = self.grads[name]

    @property
    def size(self):
        """Number of scalars in the buffer."""
        return self.data.shape[0]

    def segment(self):
        """The whole buffer as one :class:`Segment` (data, grad, every parameter's range).

        A new one on each call: the optimizer state it will hold belongs to one optimizer."""
        return Segment(self.data, self._views, grad=self.grad)

    def zero_grad(self):
        """Set every gradient to zero (one fill of the flat gradient array)."""
        arrays.fill_zero(self.grad)

    def state_dict(self):
        """NumPy copies of the named parameters: ``{"prefix.k": ndarray}`` (one copy from the
        device on 'cuda')."""
        return _named_copies(self.data, self._views)

    def load_state_dict(self, state_dict):
        """Validate names, shapes, dtypes and finiteness, then copy into the buffer in place."""
        check_state_dict("state_dict", state_dict, self.params)
        _assign_named(self.data, self._views, state_dict)   # on cuda: one copy over

    def __repr__(self):
        where = ", on cuda" if self.device == "cuda" else ""
        return f"ParamBuffer({len(self.params)} arrays, {self.size} {self.dtype} scalars{where})"
