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
"""
import numpy as np

from . import arrays
from ._checks import check_dtype, check_state_dict

__all__ = ["ParamBuffer"]


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
        # Re-point only after every check and copy succeeded, so a failure leaves modules untouched.
        for module, key, name, _, _ in entries:
            module.params[key] = self.params[name]
            module.grads[key] = self.grads[name]

    @property
    def size(self):
        """Number of scalars in the buffer."""
        return self.data.shape[0]

    def zero_grad(self):
        """Set every gradient to zero (one fill of the flat gradient array)."""
        arrays.fill_zero(self.grad)

    def state_dict(self):
        """NumPy copies of the named parameters: ``{"prefix.k": ndarray}`` (one copy from the
        device on 'cuda')."""
        data = arrays.to_host(self.data)
        return {name: data[sl].reshape(self.params[name].shape).copy()
                for name, sl in self.slices.items()}

    def load_state_dict(self, state_dict):
        """Validate names, shapes, dtypes and finiteness, then copy into the buffer in place."""
        check_state_dict("state_dict", state_dict, self.params)
        # on cuda: assembled on the host, then one copy over
        data = np.empty(self.size, self.dtype) if self.device == "cuda" else self.data
        for name, sl in self.slices.items():
            data[sl] = state_dict[name].reshape(-1)
        if data is not self.data:
            arrays.assign(self.data, data)

    def __repr__(self):
        where = ", on cuda" if self.device == "cuda" else ""
        return f"ParamBuffer({len(self.params)} arrays, {self.size} {self.dtype} scalars{where})"
