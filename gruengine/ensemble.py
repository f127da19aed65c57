"""Ensembles of seeds: K models of one configuration, trained with different seeds on the same
data, whose predicted probabilities (classify, tag) or values (regress) are averaged.

    model = EnsembleModel([m1, m2, m3])          # SequenceModels of one architecture
    probs = model.predict_proba(model.forward(x, lengths))     # the members' mean

``EnsembleModel`` has the inference side of a ``SequenceModel`` (``forward``, ``predict_proba``,
``loss_and_grad``'s loss, ``score``), so ``evaluate``, ``predict`` and the ONNX export take
either. Its ``forward`` returns the log of the averaged probabilities: a softmax of it gives
the average back, and the cross-entropy of it is the ensemble's. The training side is
``gruengine.ensemble_train``; an ensemble's best.npz holds each member's weights under
``member<k>/`` and ``meta['ensemble']``.
"""
import numpy as np

from . import checkpoint as ckpt
from .errors import CheckpointError

__all__ = ["EnsembleModel", "member_seeds", "pack", "unpack", "MAX_MEMBERS"]

MAX_MEMBERS = 64


def member_seeds(seed, k):
    """The seeds of an ensemble of ``k`` trained with ``seed``: ``seed`` itself first (member 1
    is the single model of that seed), then seeds drawn from (seed, member), which do not
    repeat the members of an ensemble trained with a neighbouring seed."""
    return [int(seed)] + [int(np.random.SeedSequence([int(seed), 23, j]).generate_state(1)[0]
                              & 0x7FFFFFFF) for j in range(1, k)]


class EnsembleModel:
    """The mean prediction of ``members`` (SequenceModels with one architecture)."""

    def __init__(self, members):
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"members: an ensemble needs at least 2 models, got {len(members)}")
        first = members[0].config
        for m in members[1:]:
            if m.config.to_dict() | {"seed": 0} != first.to_dict() | {"seed": 0}:
                raise ValueError("members: the models of an ensemble must share one "
                                 "architecture (their configurations differ beyond the seed)")
        self.members = members
        self.config = first
        self.dtype = members[0].dtype
        self.training = False
        self.member_outputs = None        # the members' outputs of the last forward

    def __len__(self):
        return len(self.members)

    def train(self):
        raise ValueError("an EnsembleModel is for inference; train its members")

    def eval(self):
        for m in self.members:
            m.eval()
        return self

    def forward(self, inputs, lengths=None):
        """The members' mean: log-probabilities (classify/tag) or values (regress)."""
        outs = [np.asarray(m.forward(inputs, lengths)) for m in self.members]
        self.member_outputs = outs
        if self.config.task == "regress":
            return np.mean(outs, axis=0, dtype=np.float64).astype(self.dtype)
        p = np.mean([m.predict_proba(o.astype(np.float64)) for m, o in zip(self.members, outs)],
                    axis=0)
        return np.log(np.maximum(p, np.finfo(self.dtype).tiny)).astype(self.dtype)

    def loss_and_grad(self, outputs, targets, lengths):
        """(the ensemble's loss, None): cross-entropy of the averaged probabilities, or MSE."""
        loss, _ = self.members[0].loss_and_grad(outputs, targets, lengths)
        return float(loss), None

    def score(self, outputs, targets, lengths):
        return self.members[0].score(outputs, targets, lengths)

    def predict_proba(self, outputs):
        return self.members[0].predict_proba(outputs)

    def state_dict(self):
        """{'member<k>/<name>': array} over the members (k from 0)."""
        return pack(self.members)


def pack(members):
    """The arrays of an ensemble checkpoint: each member's state_dict under 'member<k>'."""
    return ckpt.join_arrays(**{f"member{k}": m.state_dict() for k, m in enumerate(members)})


def unpack(arrays, meta, path):
    """-> (number of members, [state_dict per member]) of an ensemble checkpoint, checked."""
    info = meta.get("ensemble")
    k = info.get("members") if isinstance(info, dict) else None
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_MEMBERS:
        raise CheckpointError(f"checkpoint {path}: metadata field ensemble.members: expected "
                              f"an integer in [2, {MAX_MEMBERS}], got {k!r}")
    states = [ckpt.split_arrays(arrays, f"member{j}") for j in range(k)]
    missing = [j + 1 for j, s in enumerate(states) if not s]
    if missing:
        raise CheckpointError(f"checkpoint {path}: the weights of ensemble member(s) "
                              f"{missing} are missing")
    return k, states
