"""ConvFrontEnd and the SequenceModel around it: PyTorch parity of the blocks (nn.Conv1d,
nn.LayerNorm, ReLU with the same weights), float64 finite differences through the whole
model, outputs that do not depend on the rest of the batch, and old model configs (without
the front end's keys) still loading."""
import numpy as np
import pytest

from gruengine.conv import ConvFrontEnd, out_lengths
from gruengine.models import ModelConfig, SequenceModel
from tests.gradcheck import assert_sampled_fd, random_lengths

try:
    import torch
except ImportError:  # pragma: no cover - optional test dependency
    torch = None


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1), (3, 1)])
def test_front_end_matches_torch_blocks(rng, strides, norm):
    F, T = 3, int(rng.integers(9, 16)) | 1
    fe = ConvFrontEnd(F, channels=(5, 4), kernel_sizes=(5, 3), strides=strides, norm=norm,
                      dtype=np.float64, seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((2, T, F))
    lengths = np.array([T, T], dtype=np.int64)
    y, L = fe.forward(x, lengths)
    dy = rng.standard_normal(y.shape)
    dx = fe.backward(dy)
    tx = torch.tensor(x.transpose(0, 2, 1), requires_grad=True)
    h, mods = tx, []
    norm_kind = norm
    for k, (cin, c, K, s) in enumerate(zip((F, 5), (5, 4), (5, 3), strides)):
        conv = torch.nn.Conv1d(cin, c, K, stride=s, padding=(K - 1) // 2, dtype=torch.float64)
        norm = torch.nn.LayerNorm(c, eps=1e-5, dtype=torch.float64) if norm_kind == "layer" \
            else _ChannelsLast(torch.nn.BatchNorm1d(c, eps=1e-5, dtype=torch.float64))
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(fe.params[f"conv{k}.weight"]))
            if norm_kind == "layer":
                conv.bias.copy_(torch.tensor(fe.params[f"conv{k}.bias"]))
            else:
                conv.bias.zero_()
            norm.weight.copy_(torch.tensor(fe.params[f"norm{k}.weight"]) + 0.5)
            fe.params[f"norm{k}.weight"] += 0.5                 # not the trivial 1
        mods.append((conv, norm))
    # the first forward moved the running statistics: back to their start (mean 0, var 1)
    fe.buffers.update({n: v * 0 + n.endswith("var") for n, v in fe.buffers.items()})
    y, L = fe.forward(x, lengths)
    dx = fe.backward(dy)
    for conv, norm in mods:
        h = torch.relu(norm(conv(h).transpose(1, 2))).transpose(1, 2)
    np.testing.assert_allclose(y, h.detach().numpy().transpose(0, 2, 1), rtol=1e-10, atol=1e-12)
    (h * torch.tensor(dy.transpose(0, 2, 1))).sum().backward()
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 1), rtol=1e-9, atol=1e-11)
    for k, (conv, norm) in enumerate(mods):
        np.testing.assert_allclose(fe.grads[f"conv{k}.weight"], conv.weight.grad.numpy(),
                                   rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(fe.grads[f"norm{k}.bias"], norm.bias.grad.numpy(),
                                   rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(L, out_lengths(lengths, strides[0]))
    if norm_kind == "batch":                # running statistics as torch keeps them; eval uses them
        for k, (conv, norm) in enumerate(mods):
            np.testing.assert_allclose(fe.buffers[f"norm{k}.running_mean"],
                                       norm.inner.running_mean.numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(fe.buffers[f"norm{k}.running_var"],
                                       norm.inner.running_var.numpy(), rtol=1e-10)
            norm.eval()
        y_eval, _ = fe.eval().forward(x, lengths)
        h = torch.tensor(x.transpose(0, 2, 1))
        for conv, norm in mods:
            h = torch.relu(norm(conv(h).transpose(1, 2))).transpose(1, 2)
        np.testing.assert_allclose(y_eval, h.detach().numpy().transpose(0, 2, 1), rtol=1e-10,
                                   atol=1e-12)


class _ChannelsLast(torch.nn.Module if torch is not None else object):
    """BatchNorm1d on (B, T, C): torch's takes (B, C, T)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    @property
    def weight(self):
        return self.inner.weight

    @property
    def bias(self):
        return self.inner.bias

    def forward(self, h):
        return self.inner(h.transpose(1, 2)).transpose(1, 2)


def _model(rng, **kw):
    cfg = dict(task="classify", num_outputs=3, input="features", num_features=2, hidden_size=4,
               conv_channels=3, conv_kernels=(3, 2), dtype="float64", bidirectional=True,
               seed=int(rng.integers(1 << 30)))
    cfg.update(kw)
    return SequenceModel(cfg)


@pytest.mark.parametrize("kw", [dict(conv_stride=1, conv_skip=True, pooling="mean"),
                                dict(conv_stride=2, pooling="last"),
                                dict(conv_stride=3, conv_skip=True, pooling="max", cell="lstm"),
                                dict(conv_stride=2, conv_skip=True, pooling="mean", cell="mingru",
                                     task="regress", num_outputs=2)])
def test_model_gradients_match_finite_differences(rng, kw):
    m = _model(rng, **kw)
    B, T = 3, 9
    x = rng.standard_normal((B, T, 2))
    L = random_lengths(rng, B, T)
    y = rng.integers(0, 3, B) if m.config.task == "classify" else rng.standard_normal((B, 2))

    def loss():
        return m.loss_and_grad(m.forward(x, L), y, L)[0]

    m.params.zero_grad()
    out = m.forward(x, L)
    _, d = m.loss_and_grad(out, y, L)
    m.backward(d)
    checks = [(name, m.params.params[name], m.params.grads[name]) for name in m.params.params
              if name.startswith(("frontend", "head", "rnn.weight_ih_l0"))]
    assert any(n.startswith("frontend.conv0") for n, _, _ in checks)
    assert_sampled_fd(loss, checks, k=4, seed=int(rng.integers(1 << 30)))


def test_outputs_do_not_depend_on_the_batch_or_its_padding(rng):
    m = _model(rng, conv_stride=2, conv_skip=True, pooling="mean")
    m.eval()
    x = rng.standard_normal((4, 11, 2))
    L = random_lengths(rng, 4, 11)
    out = m.forward(x, L)
    for b in range(4):
        alone = m.forward(np.ascontiguousarray(x[b:b + 1, :L[b]]), L[b:b + 1])
        np.testing.assert_allclose(out[b], alone[0], rtol=1e-12, atol=1e-13)
    junk = x.copy()
    for b in range(4):
        junk[b, L[b]:] = 1e6
    np.testing.assert_array_equal(m.forward(junk, L), out)


def test_old_model_configs_load_without_the_front_end():
    old = {k: v for k, v in ModelConfig().to_dict().items() if not k.startswith("conv_")}
    m = SequenceModel(ModelConfig.from_dict(dict(old, input="features", num_features=2)))
    assert "frontend" not in m.modules and m.config.conv_channels == 0
    with pytest.raises(ValueError, match=r"^conv_stride: a tag model needs one output per "):
        SequenceModel(dict(old, task="tag", conv_channels=4, conv_stride=2))
    with pytest.raises(ValueError, match=r"^conv_kernels: expected a non-empty list"):
        SequenceModel(dict(old, conv_channels=4, conv_kernels=()))


def test_front_end_checks_its_arguments():
    with pytest.raises(ValueError, match=r"^strides: expected 3 integers, got \(1, 2\)$"):
        ConvFrontEnd(2, 4, (3, 3, 3), (1, 2))
    fe = ConvFrontEnd(2, 4, (3,), dtype=np.float64)
    with pytest.raises(ValueError, match=r"^x: expected shape"):
        fe.forward(np.zeros((1, 5, 3)))
    with pytest.raises(RuntimeError, match="before forward"):
        ConvFrontEnd(2, 4, (3,)).backward(np.zeros((1, 5, 4), np.float32))
