"""Gate inspection: record_gates vs an independent NumPy GRU, retention curves vs direct
products, and the ``gruengine inspect`` command on a checkpoint trained here."""
import os

import numpy as np
import pytest

import gruengine
from gruengine import gates as gi
from gruengine import gates_plot
from gruengine.models import SequenceModel


# ---------------------------------------------------------------------------------- references
def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def numpy_gru_gates(x, lengths, sd, layer=0, reverse=False):
    """A plain per-step GRU (reset_after=True, PyTorch gate order r, z, n) in float64.
    x (B, T, I) -> dict of r, z, n, h (B, T, H), zero past each length."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    W_ih, W_hh = sd["weight_ih" + sfx].astype(np.float64), sd["weight_hh" + sfx].astype(np.float64)
    b_ih, b_hh = sd["bias_ih" + sfx].astype(np.float64), sd["bias_hh" + sfx].astype(np.float64)
    B, T, _ = x.shape
    H = W_hh.shape[1]
    out = {k: np.zeros((B, T, H)) for k in "rznh"}
    for b in range(B):                       # reference: one sequence at a time, step by step
        h = np.zeros(H)
        steps = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in steps:
            gx = W_ih @ x[b, t] + b_ih
            gh = W_hh @ h + b_hh
            r = _sig(gx[:H] + gh[:H])
            z = _sig(gx[H:2 * H] + gh[H:2 * H])
            n = np.tanh(gx[2 * H:] + r * gh[2 * H:])
            h = (1 - z) * n + z * h
            for k, v in zip("rznh", (r, z, n, h)):
                out[k][b, t] = v
    return out


def _tiny_token_model(rng, bidirectional=False, num_layers=1):
    return SequenceModel({"input": "tokens", "vocab_size": 30, "embed_dim": 5, "hidden_size": 6,
                          "num_layers": num_layers, "bidirectional": bidirectional,
                          "task": "classify", "num_outputs": 2, "dtype": "float64",
                          "seed": int(rng.integers(1 << 30)), "dropout": 0.2})


# ---------------------------------------------------------------------------------- library
def test_record_gates_matches_numpy_gru_from_state_dict():
    rng = np.random.default_rng(11)
    model = _tiny_token_model(rng, bidirectional=True, num_layers=2)
    B, T = 3, 9
    ids = rng.integers(1, 30, size=(B, T)).astype(np.int64)
    lengths = np.array([9, 4, 7])
    model.train()
    gates = gi.record_gates(model, ids, lengths)
    assert model.training                           # mode restored
    sd = model.state_dict()
    x = sd["embedding.weight"][ids]                 # (B, T, E), independent of the Embedding
    rnn = {k[len("rnn."):]: v for k, v in sd.items() if k.startswith("rnn.")}
    ref_f = numpy_gru_gates(x, lengths, rnn, 0)
    ref_r = numpy_gru_gates(x, lengths, rnn, 0, reverse=True)
    for key, ref in (("l0", ref_f), ("l0_reverse", ref_r)):
        for g in "rznh":
            np.testing.assert_allclose(gates[key][g], ref[g], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{key} {g}")
    # layer 1 reads both directions of layer 0, no dropout (eval mode)
    x1 = np.concatenate([ref_f["h"], ref_r["h"]], axis=2)
    ref1 = numpy_gru_gates(x1, lengths, rnn, 1)
    for g in "rznh":
        np.testing.assert_allclose(gates["l1"][g], ref1[g], rtol=1e-9, atol=1e-12)


def test_record_gates_bare_layers():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 3))
    lengths = np.array([6, 3])
    gru = gruengine.GRU(3, 4, dtype=np.float64, seed=1)
    g = gi.record_gates(gru, x, lengths)
    ref = numpy_gru_gates(x, lengths, gru.state_dict())
    np.testing.assert_allclose(g["l0"]["z"], ref["z"], rtol=1e-9, atol=1e-12)
    lstm = gruengine.LSTM(3, 4, dtype=np.float64, seed=2)
    gl = gi.record_gates(lstm, x, lengths)["l0"]
    assert gi.cell_of(gl) == "lstm"
    # the LSTM cell update c_t = f c_{t-1} + i g holds on the recorded values
    c_prev = np.concatenate([np.zeros((2, 1, 4)), gl["c"][:, :-1]], axis=1)
    np.testing.assert_allclose(gl["c"][0], (gl["f"] * c_prev + gl["i"] * gl["g"])[0], atol=1e-12)
    np.testing.assert_array_equal(gi.keep_gate(gl), gl["f"])
    mg = gruengine.MinGRU(3, 4, dtype=np.float64, seed=3)
    gm = gi.record_gates(mg, x, lengths)["l0"]
    np.testing.assert_allclose(gi.keep_gate(gm), 1 - gm["z"])
    with pytest.raises(ValueError, match="inputs: expected shape"):
        gi.record_gates(gru, rng.standard_normal((2, 6, 5)), lengths)


def test_retention_curve_direct_products():
    rng = np.random.default_rng(3)
    T, H = 7, 5
    z = rng.uniform(0.05, 1.0, (T, H))
    R = gi.retention_curve(z)
    Rr = gi.retention_curve(z, reverse=True)
    for t in range(T):
        np.testing.assert_allclose(R[t], np.prod(z[t + 1:], axis=0), rtol=1e-13)
        np.testing.assert_allclose(Rr[t], np.prod(z[:t], axis=0), rtol=1e-13)
    # batched with lengths: each row equals the 2-D curve of its valid part, zero after
    zb = rng.uniform(0.05, 1.0, (3, T, H)).astype(np.float32)
    L = np.array([7, 2, 5])
    Rb = gi.retention_curve(zb, L)
    for b in range(3):
        np.testing.assert_allclose(Rb[b, :L[b]], gi.retention_curve(zb[b, :L[b]]), rtol=1e-12)
        assert not Rb[b, L[b]:].any()
    # horizon: trailing steps whose retention stays >= 0.5, counted directly
    Rm = R.mean(axis=1)
    direct = 0
    while direct < T and Rm[T - 1 - direct] >= 0.5:
        direct += 1
    assert gi.retention_horizon(Rm) == direct
    with pytest.raises(ValueError, match="z: expected gate values in"):
        gi.retention_curve(z + 1.5)
    with pytest.raises(ValueError, match="z: expected a 2-D"):
        gi.retention_curve(z[0])


def test_summarize_drops_and_order():
    rng = np.random.default_rng(8)
    T, H = 12, 4
    z = rng.uniform(0.9, 1.0, (T, H))
    where = int(rng.integers(2, T - 1))
    z[where] = rng.uniform(0.0, 0.1, H)             # the gate opens everywhere at one step
    g = {"r": z, "z": z, "n": z, "h": z}
    s = gi.summarize(g)
    assert s["drops"][0][0] == where
    assert s["horizon"] <= T - where                # the state before the write is gone
    totals = s["retention"].sum(axis=0)
    assert np.all(np.diff(totals[s["order"]]) <= 0)


# ---------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def adding_ckpt(tmp_path_factory):
    from gruengine.train import train
    out = tmp_path_factory.mktemp("run")
    train({"task": "adding", "seq_len": 16, "n_train": 64, "n_test": 16, "hidden_size": 8,
           "epochs": 1, "batch_size": 32, "val_fraction": 0.25}, str(out), quiet=True)
    return os.path.join(out, "best.npz")


def _run(argv, capsys):
    from gruengine_cli.main import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_cli_inspect_adding_writes_npz_and_png(adding_ckpt, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "insp"
    code, stdout, err = _run(["inspect", adding_ckpt, "adding:4", "--out", str(out)], capsys)
    assert code == 0, err
    png = out / "gates.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000
    with np.load(out / "gates.npz", allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    from gruengine.data.synthetic import adding_problem
    from gruengine.inference import load_model
    X, _ = adding_problem(1, 16, seed=4)
    assert d["marks"].tolist() == np.nonzero(X[0, :, 1])[0].tolist()
    np.testing.assert_array_equal(d["inputs"], X[0])
    # the saved gates are those of the model on that input, and the curve their products
    model, _ = load_model(adding_ckpt)
    g = gi.record_gates(model, X, None)["l0"]
    for k in "rznh":
        np.testing.assert_array_equal(d[k], g[k][0])
    np.testing.assert_allclose(d["retention"], gi.retention_curve(g["z"][0]), rtol=1e-12)
    assert "marked steps " + ", ".join(map(str, d["marks"])) in stdout
    assert f"retention horizon: the state of the last {gi.retention_horizon(d['retention'].mean(1))}" in stdout


def test_cli_inspect_npz_row_and_errors(adding_ckpt, tmp_path, capsys):
    rng = np.random.default_rng(2)
    X = rng.random((3, 10, 2)).astype(np.float32)
    np.savez(tmp_path / "rows.npz", X=X, y=rng.random((3, 1)).astype(np.float32),
             lengths=np.array([10, 6, 8]))
    code, stdout, err = _run(["inspect", adding_ckpt, f"{tmp_path}/rows.npz:1", "--no-plot",
                              "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    with np.load(tmp_path / "o" / "gates.npz") as z:
        assert z["z"].shape == (6, 8)
        np.testing.assert_array_equal(z["inputs"], X[1, :6])
    assert not (tmp_path / "o" / "gates.png").exists()
    cases = [
        (["inspect", str(tmp_path / "nope.npz"), "adding:1"], "no such file"),
        (["inspect", adding_ckpt, "adding:x"], "INPUT: expected a seed"),
        (["inspect", adding_ckpt, "a lovely film"], "INPUT: expected 'adding:SEED'"),
        (["inspect", adding_ckpt, f"{tmp_path}/rows.npz:7"], "INPUT: expected a row index in [0, 3)"),
        (["inspect", adding_ckpt, "adding:1", "--layer", "1"], "layer: expected an integer in [0, 0]"),
        (["inspect", adding_ckpt, "adding:1", "--layer", "-1"], "layer: expected an integer in [0, 0]"),
        (["inspect", adding_ckpt, "adding:1", "--reverse"], "reverse: the model is not bidirectional"),
    ]
    for argv, msg in cases:
        code, stdout, err = _run(argv + ["--no-plot", "--out", str(tmp_path / "e")], capsys)
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, (argv, err)


def test_cli_inspect_without_matplotlib(adding_ckpt, tmp_path, capsys, monkeypatch):
    import sys
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib -> ImportError
    code, _, err = _run(["inspect", adding_ckpt, "adding:1", "--out", str(tmp_path)], capsys)
    assert code == 2 and "plotting needs matplotlib" in err and err.count("\n") == 1
    assert not (tmp_path / "gates.npz").exists()


def test_cli_inspect_text_model(tmp_path, capsys):
    from gruengine.data import tokenize
    from gruengine.train import train
    words = ["good", "great", "bad", "awful", "film", "plot", "the", "was"]
    rng = np.random.default_rng(4)
    for split, n in (("train", 40), ("test", 10)):
        with open(tmp_path / f"{split}.tsv", "w") as f:
            for _ in range(n):
                f.write(f"{rng.choice(['pos', 'neg'])}\t{' '.join(rng.choice(words, 6))}\n")
    run = tmp_path / "run"
    train({"task": "text", "data": str(tmp_path), "epochs": 1, "hidden_size": 6, "embed_dim": 4,
           "batch_size": 16, "cell": "lstm"}, str(run), quiet=True)
    review = tmp_path / "review.txt"
    review.write_text("The plot was great, the film awful.")
    code, stdout, err = _run(["inspect", str(run / "best.npz"), f"@{review}", "--no-plot",
                              "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    with np.load(tmp_path / "o" / "gates.npz") as z:
        seen = [w if w in words else "<unk>" for w in tokenize(review.read_text())]
        assert z["tokens"].tolist() == seen
        assert str(z["cell"]) == "lstm"
        np.testing.assert_allclose(z["retention"], gi.retention_curve(z["f"]), rtol=1e-12)
    assert "prediction: " in stdout and "(p = " in stdout
    code, _, err = _run(["inspect", str(run / "best.npz"), "<br />", "--no-plot",
                         "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "holds no words" in err


def test_retention_curve_reverse_batched():
    rng = np.random.default_rng(9)
    z = rng.uniform(0.05, 1.0, (2, 6, 3))
    L = np.array([4, 6])
    R = gi.retention_curve(z, L, reverse=True)
    for b in range(2):
        for t in range(L[b]):
            np.testing.assert_allclose(R[b, t], np.prod(z[b, :t], axis=0), rtol=1e-13)
        assert not R[b, L[b]:].any()
    # reverse horizon: leading steps whose retention stays >= 0.5
    Rm = R[0, :L[0]].mean(axis=1)
    direct = 0
    while direct < L[0] and Rm[direct] >= 0.5:
        direct += 1
    assert gi.retention_horizon(Rm, reverse=True) == direct


@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_plot_gates_other_cells(cell, tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    layer = (gruengine.LSTM if cell == "lstm" else gruengine.MinGRU)(2, 5, dtype=np.float64, seed=0)
    x = rng.standard_normal((1, 12, 2))
    g = {k: v[0] for k, v in gi.record_gates(layer, x)["l0"].items()}
    path = gates_plot.plot_gates(g, str(tmp_path / "g.png"), marks=[3], units=3,
                         labels=[f"w{t}" for t in range(12)], inputs=x[0])
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(k for k, _ in gates_plot.PANELS[cell]) <= set(g)


def test_cli_inspect_copy_task_reverse_direction(tmp_path, capsys):
    # a checkpoint built and saved here (no training): bidirectional minGRU on the copy task
    from gruengine import checkpoint as ck
    from gruengine.data.synthetic import copy_memory, load_copy
    vocab = load_copy(n_train=1, n_test=1, seq_len=5)["train"].vocab
    cfg = {"input": "tokens", "vocab_size": len(vocab), "embed_dim": 4, "padding_idx": None,
           "hidden_size": 5, "cell": "mingru", "bidirectional": True, "task": "tag",
           "num_outputs": 9, "seed": 3}
    model = SequenceModel(cfg)
    meta = {"model_config": model.config.to_dict(), "vocab": vocab.to_json(),
            "data_config": {"name": "copy", "seq_len": 5}, "classes": None}
    path = str(tmp_path / "copy.npz")
    ck.save_checkpoint(path, ck.join_arrays(model=model.state_dict()), meta)
    code, stdout, err = _run(["inspect", path, "copy:2", "--reverse", "--no-plot",
                              "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    X, _ = copy_memory(1, 5, seed=2)
    ref = gi.record_gates(model, X + 2, None)["l0_reverse"]
    with np.load(tmp_path / "o" / "gates.npz") as z:
        np.testing.assert_array_equal(z["z"], ref["z"][0])
        np.testing.assert_allclose(z["retention"],
                                   gi.retention_curve(1 - ref["z"][0], reverse=True), rtol=1e-12)
        assert bool(z["reverse"]) and z["tokens"].tolist() == vocab.decode(X[0] + 2)
    assert "reverse direction" in stdout


# ---------------------------------------------------------------------------------- from Python
def _direct_retention(z):
    """R[t] = prod_{s>t} z[s], one product per step, in float64."""
    z = z.astype(np.float64)
    return np.array([np.prod(z[t + 1:], axis=0) for t in range(len(z))])


def _npz_arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_inspect_checkpoint_builders_match_a_numpy_gru(adding_ckpt, tmp_path, capsys, rng):
    from gruengine.data.synthetic import adding_problem
    from gruengine.inspection import adding_input, inspect_checkpoint, npz_input
    from gruengine.inference import load_model
    model, _ = load_model(adding_ckpt)
    rnn = {k[len("rnn."):]: v for k, v in model.state_dict().items() if k.startswith("rnn.")}
    seed, T = int(rng.integers(1000)), int(rng.integers(2, 30))
    s = inspect_checkpoint(adding_ckpt, adding_input(seed, T), str(tmp_path / "lib"), plot=False)
    X, y = adding_problem(1, T, seed=seed)
    ref = numpy_gru_gates(X.astype(np.float64), [T], rnn)
    d = _npz_arrays(tmp_path / "lib" / "gates.npz")
    for k in "rznh":                               # float32 model: test_ops.py's float32 bounds
        np.testing.assert_allclose(d[k], ref[k][0], rtol=2e-5, atol=2e-6, err_msg=k)
    np.testing.assert_allclose(d["retention"], _direct_retention(d["z"]), rtol=1e-12)
    assert s["input"] == {"source": f"adding:{seed}:{T}", "labels": None,
                          "marks": np.nonzero(X[0, :, 1])[0].tolist(), "target": y[0].tolist()}
    assert s["png"] is None and not (tmp_path / "lib" / "gates.png").exists()
    # the command on the same input writes the same file
    code, _, err = _run(["inspect", adding_ckpt, f"adding:{seed}:{T}", "--no-plot",
                         "--out", str(tmp_path / "cli")], capsys)
    assert code == 0, err
    dc = _npz_arrays(tmp_path / "cli" / "gates.npz")
    assert sorted(dc) == sorted(d)
    for k in d:
        np.testing.assert_array_equal(dc[k], d[k], err_msg=k)
    # a row of an .npz file: fresh rows, one picked at random
    N = 4
    lengths = rng.integers(2, 12, N)
    rows = rng.random((N, 12, 2)).astype(np.float32)
    np.savez(tmp_path / "rows.npz", X=rows, y=rng.random((N, 1)).astype(np.float32),
             lengths=lengths)
    i = int(rng.integers(N))
    s = inspect_checkpoint(adding_ckpt, npz_input(tmp_path / "rows.npz", i), str(tmp_path / "n"),
                           plot=False)
    ref = numpy_gru_gates(rows[i:i + 1].astype(np.float64), lengths[i:i + 1], rnn)
    d = _npz_arrays(tmp_path / "n" / "gates.npz")
    np.testing.assert_allclose(d["z"], ref["z"][0, :lengths[i]], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(s["retention"], _direct_retention(d["z"]), rtol=1e-12)
    assert s["input"]["source"] == f"{tmp_path / 'rows.npz'}:{i}" and s["length"] == lengths[i]


def test_input_builders_check_arguments_and_model(adding_ckpt, tmp_path, rng):
    from gruengine.inspection import (adding_input, copy_input, inspect_checkpoint, npz_input,
                                      text_input)
    from gruengine.inference import load_model
    model, meta = load_model(adding_ckpt)
    cases = [
        (lambda: adding_input(-1), "seed: expected an integer >= 0, got -1"),
        (lambda: adding_input(1, T=2.5), "T: expected an integer >= 0, got 2.5"),
        (lambda: copy_input(True), "seed: expected an integer >= 0, got True"),
        (lambda: text_input(b"bytes"), "text: expected a string, got bytes"),
        (lambda: npz_input(3, 0), "path: expected a file path, got int"),
        (lambda: adding_input(1, 1)(model, meta), "INPUT: the adding problem needs T >= 2, got 1"),
        (lambda: text_input("a good film")(model, meta),
         "INPUT: a text needs a model that reads tokens, the model reads 2 features per step"),
        (lambda: copy_input(0)(model, meta), "INPUT: a copy-task instance needs a model that"),
        (lambda: inspect_checkpoint(adding_ckpt, 42, str(tmp_path)),
         "input_spec: expected a text or an input builder"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith(msg) and "\n" not in str(e.value), str(e.value)
    # a token model refuses feature inputs
    tok = _tiny_token_model(rng)
    for builder in (adding_input(1), npz_input(tmp_path / "x.npz", 0)):
        with pytest.raises(ValueError, match="is a feature input, the model reads tokens"):
            builder(tok, {"vocab": None})


def test_cli_input_on_a_token_model_is_text(tmp_path, rng):
    # 'adding:3' or 'x.npz:1' mean text to a token model; '-' reads the given stream
    import io
    from gruengine.data.text import Vocab, encode_texts, tokenize
    from gruengine_cli.inspect import parse_input
    model = _tiny_token_model(rng)
    vocab = Vocab.build([["adding", "good", "film", "npz"]])
    meta = {"vocab": vocab.to_json(), "data_config": {"name": "text"}}
    for spec, stdin in (("adding:3", None), ("rows.npz:1", None), ("copy:2", None),
                        ("-", io.StringIO("a good film, good")), ("@" + str(tmp_path / "r.txt"), None)):
        text = stdin.getvalue() if stdin else spec
        if spec.startswith("@"):
            text = "film film adding"
            (tmp_path / "r.txt").write_text(text)
        ids, lengths, info = parse_input(spec, stdin)(model, meta)
        ref_ids, ref_len = encode_texts([text], vocab)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(lengths, ref_len)
        assert info["source"] == spec
        assert info["labels"] == [w if w in vocab.stoi else "<unk>" for w in tokenize(text)]


def test_gate_maths_loads_no_plotting(tmp_path):
    import subprocess
    import sys
    code = ("import sys, gruengine.gates, gruengine.inspection; "
            "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'gruengine.gates_plot'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------- the study script
def _study():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "study_cells.py")
    spec = importlib.util.spec_from_file_location("study_cells", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_study_configs_are_valid_and_matched(tmp_path):
    from gruengine.config import resolve_config
    study = _study()
    for p in (study.FULL, study.QUICK):
        p = dict(p, cells=list(study.CELLS))
        sweep = study.phase_runs(p, "sweep")
        swept = [c for c in study.CELLS if c not in study.LR_FROM]
        assert len(sweep) == len(swept) * len(p["lrs"])
        lrs = {c: p["lrs"][k % len(p["lrs"])] for k, c in enumerate(study.CELLS)}
        runs = sweep + study.phase_runs(p, "adding", lrs) + study.phase_runs(p, "long", lrs) \
            + study.phase_runs(p, "imdb", lrs, str(tmp_path))
        assert len({name for name, _ in runs}) == len(runs)
        assert len(runs) == len(sweep) + len(p["seeds"]) * (
            len(p["adding_T"]) * len(study.CELLS) + len(p["long_T"]) * len(p["long_cells"])) \
            + sum(len(set(p["imdb_lrs"]) | {lrs[c]}) for c in swept)
        for name, cfg in runs:
            resolve_config(cfg)                        # the trainer accepts every run
        # per phase, task, length and seed the models differ only in their own keys and lr:
        # the same data, budget, batch and schedule for every cell
        groups = {}
        for name, cfg in runs:
            own = set(study.CELLS[name.split("-lr")[0][len("sweep-"):]] if name.startswith(
                "sweep-") else cfg) & set().union(*study.CELLS.values())
            key = (name.split("-")[0], cfg["task"], cfg.get("seq_len"), cfg["seed"])
            groups.setdefault(key, []).append(
                {k: v for k, v in cfg.items() if k not in own | {"lr"}})
        for key, cfgs in groups.items():
            assert all(c == cfgs[0] for c in cfgs), key
        # every adding run has the same budget in steps, rounded up to whole epochs
        per_epoch = -(-p["fit"] // p["batch"])
        for name, cfg in runs:
            if cfg["task"] == "adding":
                steps = p["sweep_steps"] if name.startswith("sweep-") else p["steps"]
                assert cfg["epochs"] * per_epoch >= steps > (cfg["epochs"] - 1) * per_epoch
                assert cfg["n_train"] * (1 - cfg["val_fraction"]) == pytest.approx(p["fit"])


def test_study_lr_choice_and_solved_step(tmp_path):
    import json
    study = _study()
    import study_report                                  # next to study_cells.py
    p = dict(study.QUICK, cells=["gru", "lstm", "gru-h37"], lrs=[1e-3, 1e-2, 1e-1])
    rng = np.random.default_rng()
    # gru: two lrs solve, the later-solving one with the lower final MSE; lstm: none solves
    first = {("gru", 1e-3): None, ("gru", 1e-2): 400, ("gru", 1e-1): 200,
             ("lstm", 1e-3): None, ("lstm", 1e-2): None, ("lstm", 1e-1): None}
    vals = {}
    for (c, lr), step in first.items():
        v = float(rng.uniform(1e-5, 1e-3)) if step else float(rng.uniform(0.02, 0.2))
        curve = [[s, v if step is None or s >= step else 0.5, 0.0] for s in (200, 400, 600)]
        vals[(c, lr)] = v
        d = tmp_path / "runs" / f"sweep-{c}-lr{lr:g}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"best_val": min(x for _, x, _ in curve),
                                                   "curve": curve}))
    got = study.best_lrs(p, str(tmp_path))
    assert got["gru"] == 1e-1                            # fewest steps to solve wins
    assert got["lstm"] == min(p["lrs"], key=lambda lr: vals[("lstm", lr)])
    assert got["gru-h37"] == got["gru"]                  # trained at the GRU's lr
    curve = [[200, 0.2, 0.3], [400, 0.009, 0.1], [600, 0.002, 0.01]]
    assert study_report.solved_step({"curve": curve}, 0.01) == 400
    assert study_report.solved_step({"curve": curve}, 0.001) is None


def test_study_imdb_subset_round_trip(tmp_path):
    import io
    import tarfile
    from gruengine.data.imdb import read_imdb
    from gruengine.data.text import read_labelled_text
    rng = np.random.default_rng(6)
    words = ["fine", "dull", "superb", "awful", "plot", "cast"]
    archive = tmp_path / "imdb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("neg", "pos"):
                for i in range(3):
                    text = " ".join(rng.choice(words, 5)) + "\t<br /><br />" + str(i) + "\n!"
                    data = text.encode()
                    info = tarfile.TarInfo(f"aclImdb/{split}/{cls}/{i}_{7 if cls == 'pos' else 2}.txt")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    study = _study()
    folder = study.imdb_subset(str(archive), 4, 2, str(tmp_path / "out"))
    ref = read_imdb(str(archive), n_train=4, n_test=2)
    from gruengine.data import tokenize
    for split in ("train", "test"):
        labels, texts, _ = read_labelled_text(os.path.join(folder, f"{split}.tsv"))
        texts_ref, labels_ref = ref[split]
        assert labels == [["neg", "pos"][k] for k in labels_ref.tolist()]
        assert [tokenize(t) for t in texts] == [tokenize(t) for t in texts_ref]


def test_gate_panels_share_one_time_axis(rng):
    # heatmaps (with colourbars) and line panels span the same width, so step t is at the
    # same x in every panel
    pytest.importorskip("matplotlib")
    from gruengine import gates_plot
    L, H = int(rng.integers(5, 30)), int(rng.integers(2, 9))
    g = {k: rng.random((L, H)) for k in ("z", "r", "n")}
    g["h"] = rng.standard_normal((L, H))
    plt = gates_plot.pyplot()
    fig = gates_plot.draw_gates(plt, g, marks=[1], inputs=rng.random((L, 2)))
    fig.canvas.draw()
    main = [a for a in fig.axes if a.get_subplotspec().colspan.start == 0]
    assert len(main) == 1 + 3 + 1                        # inputs, z, r, h, retention
    x0 = {round(a.get_position().x0, 4) for a in main}
    x1 = {round(a.get_position().x1, 4) for a in main}
    assert len(x0) == 1 and len(x1) == 1, (x0, x1)
    assert all(a.get_xlim() == main[0].get_xlim() for a in main)
    plt.close(fig)
