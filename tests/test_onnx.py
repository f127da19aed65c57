"""ONNX export and import (gruengine.onnx, gruengine export/import): onnxruntime is the
independent reference; graphs built by hand with onnx.helper stand for other producers."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import gruengine
from gruengine_cli.main import app, _register
from gruengine.models import SequenceModel

_register()


def _session(ort, model_or_path):
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def _lengths(rng, B, T):
    L = rng.integers(1, T + 1, size=B).astype(np.int64)
    L[rng.integers(B)] = T                       # the longest fills the time axis
    return L


def _inputs(model, rng, B, T):
    c = model.config
    if c.input == "tokens":
        return rng.integers(0, c.vocab_size, size=(B, T)).astype(np.int64)   # padding too
    return rng.standard_normal((B, T, c.num_features)).astype(np.float32)


def _targets(model, rng, B, T):
    c = model.config
    if c.task == "classify":
        return rng.integers(0, c.num_outputs, size=B).astype(np.int64)
    if c.task == "tag":
        return rng.integers(0, c.num_outputs, size=(B, T)).astype(np.int64)
    return rng.standard_normal((B, c.num_outputs)).astype(np.float32)


def _trained(config, rng, steps=3):
    """A model after a few AdamW steps on random data (weights away from their init)."""
    model = SequenceModel(dict(config, seed=int(rng.integers(2**31))))
    opt = gruengine.AdamW(model.params, lr=0.05)
    for _ in range(steps):
        B, T = 6, 9
        x, L, y = _inputs(model, rng, B, T), _lengths(rng, B, T), _targets(model, rng, B, T)
        model.params.zero_grad()
        loss, dout = model.loss_and_grad(model.forward(x, L), y, L)
        model.backward(dout)
        opt.step()
    return model.eval()


SHAPES = {
    "token_classifier_bigru_max": dict(task="classify", num_outputs=3, input="tokens",
                                       vocab_size=40, embed_dim=6, hidden_size=8,
                                       bidirectional=True, pooling="max"),
    "feature_regressor_lstm2_last": dict(task="regress", num_outputs=2, input="features",
                                         num_features=4, cell="lstm", hidden_size=7,
                                         num_layers=2, pooling="last"),
    "gru_reset_before_mean": dict(task="classify", num_outputs=2, input="features",
                                  num_features=3, input_proj=5, hidden_size=6,
                                  reset_after=False, bidirectional=True, pooling="mean"),
    "tagger": dict(task="tag", num_outputs=4, input="tokens", vocab_size=30, embed_dim=5,
                   hidden_size=6, num_layers=2, bidirectional=True),
    "bigru2_last": dict(task="classify", num_outputs=2, input="tokens", vocab_size=25,
                        embed_dim=4, hidden_size=5, num_layers=2, bidirectional=True,
                        pooling="last", padding_idx=None),
    "token_conv_layernorm_stride2_skip_max": dict(
        task="classify", num_outputs=2, input="tokens", vocab_size=30, embed_dim=5,
        hidden_size=6, conv_channels=4, conv_kernels=(3, 2), conv_stride=2, conv_norm="layer",
        conv_skip=True, pooling="max"),
    "token_tagger_conv_batchnorm": dict(
        task="tag", num_outputs=3, input="tokens", vocab_size=20, embed_dim=4, hidden_size=5,
        cell="lstm", conv_channels=3, conv_kernels=(4, 3), conv_norm="batch"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_export_runs_in_onnxruntime_like_the_model_and_imports_back(shape, ort, rng, tmp_path):
    import onnx
    from gruengine import onnx as gonnx
    model = _trained(SHAPES[shape], rng)
    path = str(tmp_path / "m.onnx")
    info = gonnx.export(model, path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import] == [gonnx.OPSET] == [17]
    x_name = "ids" if model.config.input == "tokens" else "features"
    assert [i.name for i in proto.graph.input] == [x_name, "lengths"] == list(info["inputs"])
    out_name = "values" if model.config.task == "regress" else "probabilities"
    assert [o.name for o in proto.graph.output] == [out_name]
    sess = _session(ort, path)
    for B, T in ((7, 13), (2, 5), (1, 1)):             # dynamic batch and time axes
        x, L = _inputs(model, rng, B, T), _lengths(rng, B, T)
        got = sess.run(None, {x_name: x, "lengths": L})[0]
        want = model.predict_proba(model.forward(x, L))
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        if out_name == "probabilities":
            np.testing.assert_allclose(got.sum(-1), 1, atol=1e-5)
    back, meta = gonnx.load(path)
    sd, sd_back = model.state_dict(), back.state_dict()
    assert sorted(sd) == sorted(sd_back)
    for k in sd:
        assert sd_back[k].dtype == sd[k].dtype and np.array_equal(sd_back[k], sd[k]), k
    assert back.config == model.config and not back.training
    x, L = _inputs(model, rng, 5, 8), _lengths(rng, 5, 8)
    assert np.array_equal(back.forward(x, L), model.forward(x, L))


def test_lstm_with_a_forget_bias_exports_like_the_model(ort, rng, tmp_path):
    # forget_bias only initialises bias_ih: the graph carries it in the weights
    from gruengine import onnx as gonnx
    cfg = dict(SHAPES["feature_regressor_lstm2_last"], forget_bias=1.0)
    model = _trained(cfg, rng, steps=0)
    H = model.config.hidden_size
    assert np.all(model.state_dict()["rnn.bias_ih_l0"][H:2 * H] > 1 - 1 / np.sqrt(H))
    path = str(tmp_path / "m.onnx")
    gonnx.export(model, path)
    x, L = _inputs(model, rng, 5, 7), _lengths(rng, 5, 7)
    got = _session(ort, path).run(None, {"features": x, "lengths": L})[0]
    np.testing.assert_allclose(got, model.forward(x, L), rtol=0, atol=1e-5)


def test_export_refuses_mingru_and_a_wrong_vocabulary(ort, tmp_path):
    from gruengine import onnx as gonnx
    from gruengine.data.text import Vocab
    m = SequenceModel(dict(cell="mingru", input="tokens", vocab_size=10, embed_dim=3,
                           hidden_size=4))
    with pytest.raises(ValueError, match=r"^model: cell 'mingru' has no ONNX operator; "
                                         r"export supports 'gru' and 'lstm'$"):
        gonnx.export(m, tmp_path / "m.onnx")
    m = SequenceModel(dict(input="tokens", vocab_size=10, embed_dim=3, hidden_size=4))
    with pytest.raises(ValueError, match=r"^vocab: expected a Vocab of 10 tokens .* got 4$"):
        gonnx.export(m, tmp_path / "m.onnx", vocab=Vocab.from_tokens(["a", "b"]))
    with pytest.raises(ValueError, match=r"^model: expected a gruengine.models.SequenceModel"):
        gonnx.export(gruengine.GRU(2, 3), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    from gruengine import onnx as gonnx
    monkeypatch.setitem(sys.modules, "onnx", None)          # import onnx -> ImportError
    m = SequenceModel(dict(input="features", num_features=2, hidden_size=3))
    with pytest.raises(gruengine.GruengineError) as e:
        gonnx.export(m, tmp_path / "m.onnx")
    assert str(e.value) == ("ONNX export and import needs the package 'onnx', which is not "
                            "installed: pip install 'gruengine[onnx]'")
    r = CliRunner().invoke(app, ["import", str(tmp_path / "m.onnx")])
    assert r.exit_code != 0 and "pip install 'gruengine[onnx]'" in str(r.exception)


# ---------------------------------------------------------------- a text model, end to end
def _text_run(tmp_path, truncate="tail", **options):
    from gruengine.train import train
    rng = np.random.default_rng(1)
    good, bad = ["great", "superb", "lovely"], ["awful", "boring", "dull"]
    filler = ["the", "film", "was", "and", "plot", "a", "<br />"]

    def rows(n):
        out = []
        for _ in range(n):
            lab = int(rng.integers(2))
            words = list(rng.choice(filler, int(rng.integers(1, 9)))) + \
                [rng.choice(good if lab else bad)]
            out.append(f"{'pos' if lab else 'neg'}\t{' '.join(words)}")
        return "\n".join(out) + "\n"
    (tmp_path / "train.tsv").write_text(rows(120))
    (tmp_path / "test.tsv").write_text(rows(30))
    train({"task": "text", "data": str(tmp_path), "hidden_size": 6, "embed_dim": 5,
           "epochs": 1, "batch_size": 16, "bidirectional": True, "pooling": "max",
           "max_len": 6, "truncate": truncate, **options}, tmp_path / "run", quiet=True)
    return tmp_path / "run" / "best.npz"


def _encode_with_spec(spec, texts):
    """The tokenizer recipe of the JSON file, in plain Python (what a server does)."""
    stoi = {t: i for i, t in enumerate(spec["tokens"])}
    rows = []
    for text in texts:
        text = re.sub(spec["break_pattern"], " ", text)
        toks = re.findall(spec["token_pattern"], text.lower() if spec["lowercase"] else text)
        if spec["max_len"] and len(toks) > spec["max_len"]:
            toks = toks[:spec["max_len"]] if spec["truncate"] == "head" else toks[-spec["max_len"]:]
        ids = []
        for k, t in enumerate(toks):
            ids.append(stoi.get(t, spec["unk_id"]))
            pair = " ".join(toks[k:k + 2])
            if spec["ngrams"] == 2 and k + 1 < len(toks) and pair in stoi:
                ids.append(stoi[pair])
        rows.append(ids or [spec["unk_id"]])
    L = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.full((len(rows), L.max()), spec["pad_id"], dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, L


@pytest.mark.parametrize("options", [{}, {"bigrams": 40, "embed_skip": True}],
                         ids=["words", "word_pairs_embed_skip"])
def test_text_model_cli_export_serve_import_predict(ort, tmp_path, options):
    from gruengine.inference import predict_texts
    ckpt = _text_run(tmp_path, **options)
    out = tmp_path / "text.onnx"
    r = CliRunner().invoke(app, ["export", str(ckpt), str(out)])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0] == (f"wrote {out}: ONNX opset 17, inputs ids (batch, time), lengths "
                        f"(batch,) -> probabilities (batch, 2)")
    assert lines[1].endswith(str(tmp_path / "text.tokenizer.json"))
    diff = float(re.search(r"max \|difference\| (\S+) on", lines[2]).group(1))
    assert diff <= 1e-5
    spec = json.loads((tmp_path / "text.tokenizer.json").read_text())
    assert spec["max_len"] == 6 and spec["truncate"] == "tail" and spec["classes"] == ["neg", "pos"]
    texts = ["A GREAT<br/>film, and a lovely plot!", "", "dull dull boring awful the film was a",
             "unknownword"]
    ids, L = _encode_with_spec(spec, texts)
    probs = _session(ort, str(out)).run(None, {"ids": ids, "lengths": L})[0]
    want = predict_texts(ckpt, texts)
    for p, w in zip(probs, want):
        np.testing.assert_allclose(p, [w["probs"]["neg"], w["probs"]["pos"]], rtol=0, atol=1e-5)
    back = tmp_path / "back.npz"
    r = CliRunner().invoke(app, ["import", str(out), "--out", str(back)])
    assert r.exit_code == 0
    assert r.output.strip() == f"{out}: a gruengine export -> checkpoint {back}"
    assert predict_texts(back, texts) == want                 # identical weights, same numbers
    r1 = CliRunner().invoke(app, ["evaluate", str(ckpt), "--json", "--quiet"])
    r2 = CliRunner().invoke(app, ["evaluate", str(back), "--json", "--quiet"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    assert json.loads(r1.output) == json.loads(r2.output)
    r = CliRunner().invoke(app, ["import", str(out), "--out", str(tmp_path / "x.onnx")])
    assert r.exit_code != 0 and "expected a path ending in .npz or .safetensors" in str(r.exception)


# ---------------------------------------------------------------- graphs of other producers
def _gru_or_lstm_graph(rng, cell="GRU", I=3, H=4, layers=1, direction="forward", lbr=1,
                       between="reshape", zero_h0=False, seq_lens=True, **attrs):
    """A stack written by hand with onnx.helper: X (T, B, I) [, L (B,) int32] -> Y, Y_h."""
    import onnx
    from onnx import helper as h, numpy_helper as nh, TensorProto as TP
    D, G = (2 if direction == "bidirectional" else 1), (3 if cell == "GRU" else 4)
    nodes, inits, x, in_size = [], [], "X", I
    for k in range(layers):
        W = (0.5 * rng.standard_normal((D, G * H, in_size))).astype(np.float32)
        R = (0.5 * rng.standard_normal((D, G * H, H))).astype(np.float32)
        B = (0.5 * rng.standard_normal((D, 2 * G * H))).astype(np.float32)
        inits += [nh.from_array(W, f"W{k}"), nh.from_array(R, f"R{k}"), nh.from_array(B, f"B{k}")]
        ins = [x, f"W{k}", f"R{k}", f"B{k}", "L" if seq_lens else ""]
        if zero_h0:
            nodes.append(h.make_node("ConstantOfShape", [f"h0shape{k}"], [f"h0_{k}"]))
            inits.append(nh.from_array(np.array([D, 2, H], np.int64), f"h0shape{k}"))
            ins.append(f"h0_{k}")
        a = dict(hidden_size=H, direction=direction, **attrs)
        if cell == "GRU":
            a["linear_before_reset"] = lbr
        nodes.append(h.make_node(cell, ins, [f"Y{k}", f"Y_h{k}"], name=f"rnn{k}", **a))
        if between == "reshape":
            nodes.append(h.make_node("Transpose", [f"Y{k}"], [f"Yt{k}"], perm=[0, 2, 1, 3]))
            nodes.append(h.make_node("Reshape", [f"Yt{k}", "tbf"], [f"X{k + 1}"]))
        else:                                            # a unidirectional torch-style chain
            nodes.append(h.make_node("Squeeze", [f"Y{k}", "axis1"], [f"X{k + 1}"]))
        x, in_size = f"X{k + 1}", D * H
    inits += [nh.from_array(np.array([0, 0, -1], np.int64), "tbf"),
              nh.from_array(np.array([1], np.int64), "axis1")]
    inputs = [h.make_tensor_value_info("X", TP.FLOAT, ["T", "B", I])]
    if seq_lens:
        inputs.append(h.make_tensor_value_info("L", TP.INT32, ["B"]))
    outputs = [h.make_tensor_value_info(x, TP.FLOAT, ["T", "B", D * H]),
               h.make_tensor_value_info(f"Y_h{layers - 1}", TP.FLOAT, [D, "B", H])]
    g = h.make_graph(nodes, "handmade", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 14)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


HANDMADE = {
    "bigru_reset_before": dict(cell="GRU", direction="bidirectional", lbr=0),
    "gru2_squeeze_chain": dict(cell="GRU", layers=2, between="squeeze", lbr=1, I=5, H=3),
    "bigru3_reset_after_zero_h0": dict(cell="GRU", layers=3, direction="bidirectional",
                                       zero_h0=True),
    "bilstm2": dict(cell="LSTM", layers=2, direction="bidirectional", I=2, H=5),
    "lstm_no_lengths": dict(cell="LSTM", seq_lens=False),
}


@pytest.mark.parametrize("case", sorted(HANDMADE))
def test_handmade_onnx_gru_lstm_import_matches_onnxruntime(case, ort, rng, tmp_path):
    from gruengine import onnx as gonnx
    kw = HANDMADE[case]
    m = _gru_or_lstm_graph(rng, **kw)
    path = str(tmp_path / "h.onnx")
    open(path, "wb").write(m.SerializeToString())
    T, B, I = 7, 2, kw.get("I", 3)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    L = np.array([T, 4]) if kw.get("seq_lens", True) else np.array([T, T])
    feed = {"X": x, "L": L.astype(np.int32)} if kw.get("seq_lens", True) else {"X": x}
    y_ort, hn_ort = _session(ort, path).run(None, feed)
    stacks = gonnx.read_recurrent(path)
    assert len(stacks) == 1, stacks
    s = stacks[0]
    layers = kw.get("layers", 1)
    assert (s["cell"], s["num_layers"], s["bidirectional"]) == \
        (kw["cell"].lower(), layers, kw.get("direction") == "bidirectional")
    assert s["nodes"] == [f"rnn{k}" for k in range(layers)]
    assert s["sequence_lens"] == ("L" if kw.get("seq_lens", True) else None)
    assert s["initial_state"] is None
    module = gonnx.recurrent_module(s)
    y, h_n = module.forward(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=L)
    if kw["cell"] == "LSTM":
        h_n = h_n[0]
    np.testing.assert_allclose(y, y_ort.transpose(1, 0, 2), rtol=0, atol=1e-5)
    D = 2 if s["bidirectional"] else 1
    np.testing.assert_allclose(h_n[-D:], hn_ort, rtol=0, atol=1e-5)


def test_import_cli_writes_state_dicts_of_foreign_stacks(ort, rng, tmp_path):
    import onnx
    from onnx import helper as h
    m = _gru_or_lstm_graph(rng, cell="GRU", layers=2, direction="bidirectional", lbr=0)
    # a second, independent LSTM reading the same input: two stacks
    other = _gru_or_lstm_graph(rng, cell="LSTM", I=3, H=2)
    for init in other.graph.initializer:
        if init.name in ("W0", "R0", "B0"):
            init.name = "lstm_" + init.name
            m.graph.initializer.append(init)
    m.graph.node.append(h.make_node("LSTM", ["X", "lstm_W0", "lstm_R0", "lstm_B0", "L"],
                                    ["lstm_Y", "lstm_Y_h"], name="lstm", hidden_size=2))
    m.graph.output.append(h.make_tensor_value_info("lstm_Y_h", onnx.TensorProto.FLOAT,
                                                    [1, "B", 2]))
    path = tmp_path / "two.onnx"
    path.write_bytes(m.SerializeToString())
    out = tmp_path / "two.safetensors"
    r = CliRunner().invoke(app, ["import", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0] == f"{path}: 2 recurrent stacks -> state_dict {out}"
    assert lines[1].startswith("  stack 0 (rnn0.): GRU reset_after=False, 2 layer(s), "
                               "bidirectional, input 3, hidden 4, float32, nodes rnn0, rnn1")
    assert lines[2].startswith("  stack 1 (rnn1.): LSTM, 1 layer(s), input 3, hidden 2")
    sd = gruengine.load_safetensors(out)
    gru = gruengine.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=False)
    gru.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("rnn0.")})
    lstm = gruengine.LSTM(3, 2)
    lstm.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("rnn1.")})
    meta = json.loads(gruengine.safetensors.safetensors_metadata(out)["gruengine"])
    assert meta["kind"] == "gruengine-state-dict" and len(meta["stacks"]) == 2
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    L = np.array([6, 3])
    y_gru, lstm_hn = _session(ort, str(path)).run(["X2", "lstm_Y_h"],
                                                 {"X": x, "L": L.astype(np.int32)})
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    np.testing.assert_allclose(gru.forward(xb, lengths=L)[0], y_gru.transpose(1, 0, 2),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(lstm.forward(xb, lengths=L)[1][0], lstm_hn, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_a_pytorch_export_imports_as_one_stack_with_its_function(cell, ort, rng, tmp_path):
    import warnings
    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity peer")
    from gruengine import onnx as gonnx
    torch.manual_seed(int(rng.integers(2**31)))
    net = getattr(torch.nn, cell)(3, 5, num_layers=2, bidirectional=True).eval()

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = net

        def forward(self, x):
            return self.rnn(x)[0]
    x = torch.from_numpy(rng.standard_normal((6, 2, 3)).astype(np.float32))
    path = str(tmp_path / "torch.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Outputs().eval(), (x,), path, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "T", 1: "B"}})
    stack, = gonnx.read_recurrent(path)
    assert (stack["cell"], stack["num_layers"], stack["bidirectional"]) == (cell.lower(), 2, True)
    for k, v in net.state_dict().items():           # the very weights torch holds
        assert np.array_equal(stack["state_dict"][k], v.numpy()), k
    x2 = rng.standard_normal((9, 4, 3)).astype(np.float32)      # another T and B
    y = gonnx.recurrent_module(stack).forward(np.ascontiguousarray(x2.transpose(1, 0, 2)))[0]
    y_ort = _session(ort, path).run(None, {"x": x2})[0]
    np.testing.assert_allclose(y, y_ort.transpose(1, 0, 2), rtol=0, atol=1e-5)


def test_batch_major_layout_stack_matches_the_onnx_reference_evaluator(ort, rng):
    # onnxruntime refuses layout=1; onnx's own reference implementation runs it
    from onnx import helper as h, numpy_helper as nh, TensorProto as TP
    from onnx.reference import ReferenceEvaluator
    from gruengine import onnx as gonnx
    I, H, nodes, inits, x, in_size = 3, 4, [], [], "X", 3
    for k in range(2):
        for name, shape in (("W", (1, 3 * H, in_size)), ("R", (1, 3 * H, H)), ("B", (1, 6 * H))):
            a = (0.5 * rng.standard_normal(shape)).astype(np.float32)
            inits.append(nh.from_array(a, f"{name}{k}"))
        nodes.append(h.make_node("GRU", [x, f"W{k}", f"R{k}", f"B{k}"], [f"Y{k}", f"Y_h{k}"],
                                 name=f"rnn{k}", hidden_size=H, layout=1, linear_before_reset=1))
        nodes.append(h.make_node("Reshape", [f"Y{k}", "btf"], [f"X{k + 1}"]))  # (B, T, 1, H) ->
        x, in_size = f"X{k + 1}", H
    inits.append(nh.from_array(np.array([0, 0, -1], np.int64), "btf"))
    g = h.make_graph(nodes, "batch_major", [h.make_tensor_value_info("X", TP.FLOAT, ["B", "T", I])],
                     [h.make_tensor_value_info(x, TP.FLOAT, ["B", "T", H])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 14)])
    xb = rng.standard_normal((2, 6, I)).astype(np.float32)
    want = ReferenceEvaluator(m).run(None, {"X": xb})[0]
    stack, = gonnx.read_recurrent(m)
    assert stack["nodes"] == ["rnn0", "rnn1"]
    y = gonnx.recurrent_module(stack).forward(xb)[0]
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5)


def _refused(rng, tmp_path, edit, **kw):
    from gruengine import onnx as gonnx
    m = _gru_or_lstm_graph(rng, **kw)
    edit(m)
    with pytest.raises(ValueError) as e:
        gonnx.read_recurrent(m)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model: node 'rnn0' (")
    return msg


def _set_attr(name, value):
    from onnx import helper as h

    def edit(m):
        node = [n for n in m.graph.node if n.name == "rnn0"][0]
        keep = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(keep + [h.make_attribute(name, value)])
    return edit


def _add_input(k, name, array):
    from onnx import numpy_helper as nh

    def edit(m):
        node = [n for n in m.graph.node if n.name == "rnn0"][0]
        while len(node.input) < k:
            node.input.append("")
        node.input.append(name)
        if array is not None:
            m.graph.initializer.append(nh.from_array(array, name))
    return edit


def test_import_refuses_what_gruengine_cannot_compute_exactly(ort, rng, tmp_path):
    from onnx import helper as h
    msg = _refused(rng, tmp_path, _set_attr("activations", ["Sigmoid", "Relu"]))
    assert "activations ['Sigmoid', 'Relu'] are not supported" in msg
    msg = _refused(rng, tmp_path, _set_attr("clip", 3.0))
    assert "attribute 'clip' is not supported" in msg
    msg = _refused(rng, tmp_path, _set_attr("direction", "reverse"))
    assert "direction 'reverse' is not supported" in msg
    msg = _refused(rng, tmp_path, _set_attr("activation_alpha", [0.5]))
    assert "attribute 'activation_alpha' is not supported" in msg
    msg = _refused(rng, tmp_path, _set_attr("input_forget", 1), cell="LSTM")
    assert "input_forget=1" in msg
    peep = np.full((1, 12), 0.1, np.float32)
    msg = _refused(rng, tmp_path, _add_input(7, "P", peep), cell="LSTM", H=4, seq_lens=True)
    assert "peephole weights P are not supported" in msg
    h0 = np.ones((1, 2, 4), np.float32)
    msg = _refused(rng, tmp_path, _add_input(5, "h0", h0))
    assert "a constant non-zero initial state ('h0') is not supported" in msg

    def computed_w(m):
        node = [n for n in m.graph.node if n.name == "rnn0"][0]
        m.graph.node.insert(0, h.make_node("Neg", ["W0"], ["W0neg"]))
        node.input[1] = "W0neg"
    msg = _refused(rng, tmp_path, computed_w)
    assert "W is computed by the graph, not a constant" in msg
    # zero peepholes and a zero initial state are the defaults: accepted
    from gruengine import onnx as gonnx
    m = _gru_or_lstm_graph(rng, cell="LSTM")
    _add_input(7, "P", np.zeros((1, 12), np.float32))(m)
    assert gonnx.read_recurrent(m)[0]["cell"] == "lstm"
    with pytest.raises(ValueError, match=r"no GRU or LSTM node in the graph$"):
        gonnx.read_recurrent(h.make_model(h.make_graph([], "empty", [], [])))
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match=r"junk.onnx: not a readable ONNX model"):
        gonnx.read_recurrent(tmp_path / "junk.onnx")
    m = _gru_or_lstm_graph(rng)
    with pytest.raises(ValueError, match=r"^model: not a gruengine export"):
        gonnx.load(m)


@pytest.mark.parametrize("cmd", ["export", "import"])
def test_cli_md_documents_every_option(cmd):
    from tests.test_docs import test_cli_md_lists_every_option
    test_cli_md_lists_every_option(cmd)


@pytest.mark.parametrize("options", [{}, {"bigrams": 40, "embed_skip": True}],
                         ids=["words", "word_pairs_embed_skip"])
def test_serving_md_serves_an_export_like_predict_texts(ort, tmp_path, monkeypatch, options):
    from gruengine import onnx as gonnx
    from gruengine.inference import predict_texts
    from tests.test_docs import python_blocks
    ckpt = _text_run(tmp_path, truncate="head", **options)   # the page keeps the first max_len
    gonnx.export_checkpoint(ckpt, tmp_path / "imdb.onnx")
    block = python_blocks("serving.md")[0]
    assert len([ln for ln in block.splitlines() if ln.strip()]) <= 12
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(block, "docs/serving.md block 0", "exec"), ns)
    texts = ["A moving, beautifully shot film.", "dull boring plot the film was a awful ok",
             "", "lovely<br />superb"]
    for text in texts:
        label, p = ns["classify"](text)
        want = predict_texts(ckpt, [text])[0]
        assert label == want["label"] and abs(p - want["probability"]) <= 1e-5
    spec = json.loads((tmp_path / "imdb.tokenizer.json").read_text())
    assert spec["ngrams"] == (2 if options else 1)
    if options:                                   # word pairs are in these texts' ids
        ids, _ = _encode_with_spec(spec, texts)
        assert (ids >= len([t for t in spec["tokens"] if " " not in t])).any()


def test_bench_serving_runs_and_agrees(ort, tmp_path):
    ckpt = _text_run(tmp_path)
    (tmp_path / "reviews.txt").write_text("a lovely film\nthe plot was dull\ngreat great\n"
                                          "awful\nthe film\nsuperb and boring\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "benchmarks/bench_serving.py", "--ckpt", str(ckpt),
                        "--texts", str(tmp_path / "reviews.txt"), "--n", "6", "--n-single", "3",
                        "--batch", "4", "--rounds", "1", "--json", str(tmp_path / "b.json")],
                       cwd=root, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {x["path"]: x for x in json.load(open(tmp_path / "b.json"))["rows"]}
    assert set(rows) == {"onnxruntime", "gruengine", "predict_texts"}
    assert all(x["max_abs_diff"] <= 1e-5 and x["median_ms"] > 0 for x in rows.values())
    assert r.stdout.count("\n| ") == 4            # header and three rows of the table
