"""The module API every layer shares (docs/architecture.md, "Modules").

``params`` and ``grads`` are dicts of arrays with the same keys; optimizers update ``params``
in place and ``backward`` writes into ``grads`` in place, so a ``ParamBuffer`` can re-point
both to views of one flat buffer.
"""
from ._checks import check_state_dict


class Module:
    """params/grads dicts, state_dict, train/eval; subclasses set ``params``, ``grads``
    and ``training`` in their constructor."""

    def parameters(self):
        return self.params

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict):
        check_state_dict("state_dict", state_dict, self.params)
        for k, v in state_dict.items():
            self.params[k][...] = v

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0
