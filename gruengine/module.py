"""The module API every layer shares (docs/architecture.md, "Modules").

``params`` and ``grads`` are dicts of arrays with the same keys; optimizers update ``params``
in place and ``backward`` writes into ``grads`` in place, so a ``ParamBuffer`` can re-point
both to views of one flat buffer. On ``device="cuda"`` both hold CUDA device arrays (they stay
on the GPU between steps); ``state_dict`` always returns NumPy copies and ``load_state_dict``
takes NumPy arrays on every device.
"""
from . import arrays
from ._checks import check_state_dict


class Module:
    """params/grads dicts, state_dict, train/eval; subclasses set ``params``, ``grads``,
    ``device`` and ``training`` in their constructor, then call ``_place_params``."""

    def _place_params(self):
        # the constructor builds parameters on the host (seeded init); on 'cuda' they move
        # to the device once, here, and stay there
        if self.device == "cuda":
            self.params = {k: arrays.to_device(v) for k, v in self.params.items()}
            self.grads = {k: arrays.to_device(v) for k, v in self.grads.items()}

    def parameters(self):
        return self.params

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def state_dict(self):
        """{name: NumPy copy} of every parameter, whatever the device."""
        return {k: arrays.to_host(v).copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict):
        check_state_dict("state_dict", state_dict, self.params)
        for k, v in state_dict.items():
            arrays.assign(self.params[k], v)

    def zero_grad(self):
        for g in self.grads.values():
            arrays.fill_zero(g)
