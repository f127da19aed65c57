"""The recurrent stack a model configuration asks for, by cell name.

    rnn = CELLS[config.cell](input_size, config, seed)   # forward(x, h0, lengths) -> (y, h_n)

Every factory returns a module with the GRU's interface, so ``SequenceModel`` has one code
path for the three cells: the LSTM is wrapped so that its cell state stays inside.
"""


def _make_gru(input_size, c, seed):
    from .gru import GRU
    return GRU(input_size, c.hidden_size, num_layers=c.num_layers, bidirectional=c.bidirectional,
               reset_after=c.reset_after, dtype=c.dtype, device=c.device, seed=seed,
               dropout=c.dropout)


def _make_lstm(input_size, c, seed):
    from .lstm import LSTM
    if not c.reset_after:
        raise ValueError("reset_after: only the GRU has the reset_after=False form; "
                         "use reset_after=True with cell 'lstm'")
    return _HiddenOnly(LSTM(input_size, c.hidden_size, num_layers=c.num_layers,
                            bidirectional=c.bidirectional, dtype=c.dtype, device=c.device,
                            seed=seed, dropout=c.dropout,
                            forget_bias=c.forget_bias))


def _make_mingru(input_size, c, seed):
    from .mingru import MinGRU
    if not c.reset_after:
        raise ValueError("reset_after: only the GRU has the reset_after=False form; "
                         "use reset_after=True with cell 'mingru'")
    return MinGRU(input_size, c.hidden_size, num_layers=c.num_layers,
                  bidirectional=c.bidirectional, dtype=c.dtype, device=c.device,
                  seed=seed, dropout=c.dropout)


class _HiddenOnly:
    """An LSTM seen through the GRU interface: (y, h_n) out, (dx, dh0) back; the cell state
    stays inside (the head reads h_n only)."""

    def __init__(self, inner):
        self.inner = inner
        self.params, self.grads = inner.params, inner.grads   # the same dicts (ParamBuffer)

    def forward(self, x, h0=None, lengths=None):
        y, (h_n, _) = self.inner.forward(x, None, lengths=lengths)
        return y, h_n

    def backward(self, dy, dh_n=None):
        dx, (dh0, _) = self.inner.backward(dy, (dh_n, None))
        return dx, dh0

    def train(self):
        self.inner.train()
        return self

    def eval(self):
        self.inner.eval()
        return self


# cell name -> factory(input_size, ModelConfig, seed) -> recurrent module with the GRU interface
# (forward(x, h0, lengths) -> (y, h_n), backward(dy, dh_n) -> (dx, dh0)).
CELLS = {"gru": _make_gru, "lstm": _make_lstm, "mingru": _make_mingru}
