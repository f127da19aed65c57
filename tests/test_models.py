"""SequenceModel: gradients against central finite differences (float64), outputs against
torch where importable, padding invariance, state_dict round trip, clear config errors."""
import numpy as np
import pytest

from gruengine.models import SequenceModel, ModelConfig


def _inputs(cfg, rng, B=3, T=6):
    lengths = rng.integers(1, T + 1, size=B).astype(np.int64)
    lengths[0] = T
    if cfg["input"] == "tokens":
        x = rng.integers(1, cfg["vocab_size"], size=(B, T)).astype(np.int64)
        x[np.arange(T)[None, :] >= lengths[:, None]] = 0
    else:
        x = rng.standard_normal((B, T, cfg["num_features"]))
    if cfg["task"] == "classify":
        y = rng.integers(0, cfg["num_outputs"], size=B).astype(np.int64)
    elif cfg["task"] == "regress":
        y = rng.standard_normal((B, cfg["num_outputs"]))
    else:
        y = rng.integers(0, cfg["num_outputs"], size=(B, T)).astype(np.int64)
    return x, lengths, y


def _fix_dropout(model, seed=99):
    # the same masks on every forward, so finite differences see one function
    model.set_dropout_rngs(lambda k: np.random.default_rng([seed, k]))


def _loss(model, x, L, y):
    _fix_dropout(model)
    out = model.forward(x, L)
    return model.loss_and_grad(out, y, L)


CASES = [
    dict(input="tokens", task="classify", pooling="last", bidirectional=True, num_layers=2),
    dict(input="tokens", task="classify", pooling="max", bidirectional=False, num_layers=1),
    dict(input="features", task="regress", pooling="mean", bidirectional=True, num_layers=1,
         input_proj=4),
    dict(input="features", task="regress", pooling="last", bidirectional=False, num_layers=2,
         reset_after=False),
    dict(input="tokens", task="tag", pooling="last", bidirectional=True, num_layers=1),
    dict(input="tokens", task="classify", pooling="mean", bidirectional=False, num_layers=2,
         dropout=0.3),
    dict(input="features", task="regress", pooling="last", bidirectional=True, num_layers=1,
         cell="lstm"),
    dict(input="tokens", task="classify", pooling="max", bidirectional=True, num_layers=2,
         cell="mingru"),
    dict(input="tokens", task="classify", pooling="max", bidirectional=True, num_layers=1,
         embed_skip=True, dropout=0.3),
    dict(input="tokens", task="classify", pooling="mean", bidirectional=False, num_layers=1,
         embed_skip=True, conv_channels=3, conv_kernels=(3,), conv_skip=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_gradients_match_central_differences(case):
    rng = np.random.default_rng(abs(hash(str(case))) % (1 << 31))
    cfg = dict(vocab_size=9, embed_dim=4, num_features=3, hidden_size=3, num_outputs=3,
               dtype="float64", seed=int(rng.integers(1000)), padding_idx=0)
    cfg.update(case)
    model = SequenceModel(cfg)
    model.train()
    x, L, y = _inputs(cfg, rng)
    model.params.zero_grad()
    loss, dout = _loss(model, x, L, y)
    model.backward(dout)
    analytic = model.params.grad.copy()
    data = model.params.data
    # central differences in float64 on 4 random entries of every named parameter
    picks = np.concatenate([rng.choice(np.arange(sl.start, sl.stop), min(4, sl.stop - sl.start),
                                       replace=False) for sl in model.params.slices.values()])
    numeric = np.empty(len(picks))
    eps = 1e-6
    for j, i in enumerate(picks):        # test-only loop over a few dozen scalars
        old = data[i]
        data[i] = old + eps
        lp, _ = _loss(model, x, L, y)
        data[i] = old - eps
        lm, _ = _loss(model, x, L, y)
        data[i] = old
        numeric[j] = (lp - lm) / (2 * eps)
    scale = max(np.abs(numeric).max(), 1e-3)
    err = np.abs(analytic[picks] - numeric).max()
    assert err <= 1e-6 * scale + 1e-8, f"max abs diff {err:.3g} (scale {scale:.3g})"
    assert np.abs(numeric).max() > 1e-4          # the probe moved the loss at all
    # the embedding's padding row never learns
    if cfg["input"] == "tokens":
        assert not analytic[model.params.slices["embedding.weight"]].reshape(9, 4)[0].any()
    assert np.isfinite(loss) and loss > 0
    if cfg.get("dropout"):
        assert len(model.dropout_rngs()) == 3       # input, head and between the layers


@pytest.mark.parametrize("pooling", ["last", "max"])
def test_padding_content_never_matters(pooling):
    rng = np.random.default_rng(7)
    cfg = dict(input="features", num_features=2, hidden_size=5, num_outputs=2, task="classify",
               pooling=pooling, bidirectional=True, seed=3, dtype="float64")
    model = SequenceModel(cfg).eval()
    x, L, _ = _inputs(dict(cfg, input="features"), rng, B=4, T=7)
    x2 = x.copy()
    pad = np.arange(7)[None, :] >= L[:, None]
    x2[pad] = rng.standard_normal((int(pad.sum()), 2)) * 10
    assert pad.any()
    np.testing.assert_array_equal(model.forward(x, L), model.forward(x2, L))


@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[9],
                                  dict(input="features", task="classify", pooling="mean",
                                       bidirectional=True, num_layers=1, conv_channels=4,
                                       conv_kernels=(3, 3), conv_stride=2, conv_skip=True)],
                         ids=["proj-mean", "tag", "embed-conv-skip", "conv-stride-skip"])
def test_features_are_what_the_head_reads(case):
    # outputs = features @ W.T + b, by hand from the head's parameters; each row's features
    # are those of the row alone (its own length, no other row in the batch)
    rng = np.random.default_rng(12)
    cfg = dict(dict(vocab_size=11, embed_dim=4, num_features=3, hidden_size=5, num_outputs=3,
                    seed=4, dtype="float64"), **case)
    model = SequenceModel(cfg).eval()
    x, L, _ = _inputs(cfg, rng, B=4, T=8)
    out = model.forward(x, L)
    f = model.features(x, L)
    sd = model.state_dict()
    W, b = sd["head.weight"], sd["head.bias"]
    np.testing.assert_allclose(f @ W.T + b, out, rtol=1e-12, atol=1e-12)
    if case["task"] != "tag":
        assert f.shape == (4, W.shape[1])
        for i in range(4):
            alone = model.features(x[i:i + 1, :L[i]], L[i:i + 1])
            np.testing.assert_allclose(alone[0], f[i], rtol=1e-10, atol=1e-12)


def test_forward_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    cfg = dict(input="tokens", vocab_size=20, embed_dim=5, hidden_size=4, num_layers=2,
               bidirectional=True, num_outputs=3, task="classify", pooling="last", seed=5,
               dtype="float64")
    model = SequenceModel(cfg).eval()
    x, L, _ = _inputs(cfg, rng, B=5, T=8)
    ours = model.forward(x, L)
    sd = model.state_dict()
    emb = torch.nn.Embedding(20, 5, padding_idx=0).double()
    gru = torch.nn.GRU(5, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    head = torch.nn.Linear(8, 3).double()
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(sd["embedding.weight"]))
        for name, p in gru.named_parameters():
            p.copy_(torch.from_numpy(sd[f"rnn.{name}"]))
        head.weight.copy_(torch.from_numpy(sd["head.weight"]))
        head.bias.copy_(torch.from_numpy(sd["head.bias"]))
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            emb(torch.from_numpy(x)), torch.from_numpy(L), batch_first=True, enforce_sorted=False)
        _, h_n = gru(packed)
        ref = head(torch.cat([h_n[-2], h_n[-1]], dim=1)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_embed_skip_matches_torch():
    # the head reads [max-pooled BiGRU outputs, mean of the embeddings over the valid steps]
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % (1 << 31)))
    cfg = dict(input="tokens", vocab_size=30, embed_dim=5, hidden_size=4, bidirectional=True,
               num_outputs=2, task="classify", pooling="max", embed_skip=True, dtype="float64",
               seed=int(rng.integers(1000)))
    model = SequenceModel(cfg).eval()
    x, L, _ = _inputs(cfg, rng, B=6, T=9)
    sd = model.state_dict()
    assert sd["head.weight"].shape == (2, 2 * 4 + 5)
    emb = torch.nn.Embedding(30, 5, padding_idx=0).double()
    gru = torch.nn.GRU(5, 4, bidirectional=True, batch_first=True).double()
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(sd["embedding.weight"]))
        for name, p in gru.named_parameters():
            p.copy_(torch.from_numpy(sd[f"rnn.{name}"]))
        e = emb(torch.from_numpy(x))
        packed = torch.nn.utils.rnn.pack_padded_sequence(e, torch.from_numpy(L), batch_first=True,
                                                         enforce_sorted=False)
        y, _ = gru(packed)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True, padding_value=-1e30)
        mask = torch.from_numpy(np.arange(9)[None, :] < L[:, None]).unsqueeze(-1).double()
        bag = (e * mask).sum(1) / torch.from_numpy(L).double().unsqueeze(1)
        feats = torch.cat([y.max(1).values, bag], dim=1).numpy()
    ref = feats @ sd["head.weight"].T + sd["head.bias"]
    np.testing.assert_allclose(model.forward(x, L), ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="embed_skip: expected false for a 'regress' model"):
        SequenceModel(dict(input="features", task="regress", num_features=2, embed_skip=True))


def test_state_dict_round_trip_and_validation():
    cfg = dict(input="tokens", vocab_size=11, embed_dim=3, hidden_size=4, num_outputs=2, seed=1)
    a, b = SequenceModel(cfg), SequenceModel(dict(cfg, seed=2))
    x, L, _ = _inputs(dict(cfg, task="classify"), np.random.default_rng(0))
    assert not np.allclose(a.eval().forward(x, L), b.eval().forward(x, L))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.forward(x, L), b.forward(x, L))
    sd = a.state_dict()
    sd["head.bias"] = sd["head.bias"][:1]
    with pytest.raises(ValueError, match="head.bias"):
        b.load_state_dict(sd)


@pytest.mark.parametrize("bad, match", [
    (dict(hidden_size=0), "hidden_size: expected an integer >= 1, got 0"),
    (dict(cell="rnn"), "cell: expected one of"),
    (dict(pooling="sum"), "pooling: expected one of"),
    (dict(device="tpu"), "device: expected one of"),
    (dict(dropout=1.5), "dropout: expected a number in"),
    (dict(dtype="int8"), "dtype: expected dtype float32 or float64"),
    (dict(task="rank"), "task: expected one of"),
    (dict(colour="red"), r"unknown keys \['colour'\]"),
])
def test_bad_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        SequenceModel(dict(dict(input="tokens", vocab_size=5, hidden_size=2), **bad))


def test_inputs_are_validated():
    model = SequenceModel(dict(input="tokens", vocab_size=5, embed_dim=2, hidden_size=2))
    with pytest.raises(ValueError, match=r"inputs: token ids must lie in \[0, 5\)"):
        model.forward(np.array([[1, 7]], dtype=np.int64), np.array([2]))
    with pytest.raises(ValueError, match="lengths"):
        model.forward(np.array([[1, 2]], dtype=np.int64), np.array([3]))
    assert ModelConfig.from_dict({"hidden_size": 3}).validate().hidden_size == 3
