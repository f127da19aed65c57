"""safetensors state dicts and checkpoints: round trips, torch interchange, the checkpoint
commands, one-line errors."""
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import gruengine
from gruengine_cli.main import app, _register

_register()
REASON = "needs the [onnx] extra: pip install 'gruengine[onnx]'"


@pytest.fixture
def st():
    return pytest.importorskip("safetensors.numpy", reason=REASON)


def test_state_dict_round_trip_keeps_names_dtypes_values_and_metadata(st, rng, tmp_path):
    d = {"weight_ih_l0": rng.standard_normal((6, 3)).astype(np.float32),
         "bias_hh_l0_reverse": rng.standard_normal(6),                         # float64
         "steps": rng.integers(0, 2**40, size=(2, 3)),                         # int64
         "rng/state": rng.integers(0, 2**63, size=6, dtype=np.uint64),
         "mask": rng.random(4) > 0.5,
         "strided": rng.standard_normal((4, 6)).astype(np.float32)[:, ::2]}   # not contiguous
    path = gruengine.save_safetensors(d, tmp_path / "a.safetensors", {"note": "hi"})
    back = gruengine.load_safetensors(path)
    assert set(back) == set(d)
    for k, v in d.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert np.array_equal(back[k], v), k
    assert gruengine.safetensors.safetensors_metadata(path) == {"note": "hi"}
    # the bytes are the reference implementation's: it reads what we wrote, we read what it wrote
    ref = st.load_file(str(path))
    assert all(np.array_equal(ref[k], d[k]) for k in d)
    st.save_file({k: np.ascontiguousarray(v) for k, v in d.items()},
                 str(tmp_path / "r.safetensors"))
    back = gruengine.load_safetensors(tmp_path / "r.safetensors")
    assert all(np.array_equal(back[k], d[k]) for k in d)


def test_bad_input_is_one_line(st, tmp_path):
    save, load = gruengine.save_safetensors, gruengine.load_safetensors
    with pytest.raises(ValueError, match=r"^state_dict: expected a dict of name -> numpy.ndarray, "
                                         r"got list$"):
        save([np.zeros(2)], tmp_path / "a.safetensors")
    with pytest.raises(ValueError,
                       match=r"^state_dict\['w'\]: expected a numpy.ndarray, got list$"):
        save({"w": [1.0]}, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"^state_dict\['w'\]: expected a bool, integer or float "
                                         r"array, got dtype <U1$"):
        save({"w": np.array(["a"])}, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"^metadata: expected a dict of str -> str"):
        save({"w": np.zeros(2)}, tmp_path / "a.safetensors", {"n": 3})
    assert not (tmp_path / "a.safetensors").exists()
    with pytest.raises(ValueError, match=r"nope.safetensors: no such file$"):
        load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ValueError, match=r"junk.safetensors: not a readable safetensors file \("):
        load(tmp_path / "junk.safetensors")


def test_missing_package_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(gruengine.GruengineError) as e:
        gruengine.save_safetensors({"w": np.zeros(2)}, tmp_path / "a.safetensors")
    assert str(e.value) == ("writing safetensors needs the package 'safetensors', which is not "
                            "installed: pip install 'gruengine[onnx]'")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_modules_move_both_ways_without_surgery(cell, st, rng, tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is the optional parity peer")
    storch = pytest.importorskip("safetensors.torch", reason=REASON)
    I, H, B, T = 3, 5, 4, 9
    Torch = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
    Ours = gruengine.GRU if cell == "gru" else gruengine.LSTM
    torch.manual_seed(int(rng.integers(2**31)))
    tm = Torch(I, H, num_layers=2, bidirectional=True, batch_first=True)
    storch.save_file(tm.state_dict(), str(tmp_path / "t.safetensors"))
    ours = Ours(I, H, num_layers=2, bidirectional=True, seed=int(rng.integers(2**31)))
    ours.load_state_dict(gruengine.load_safetensors(tmp_path / "t.safetensors"))   # torch -> us
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(ours.forward(x)[0], want, rtol=0, atol=1e-5)
    # us -> torch: fresh weights written here drive a fresh torch module to the same outputs
    ours = Ours(I, H, num_layers=2, bidirectional=True, seed=int(rng.integers(2**31)))
    gruengine.save_safetensors(ours.state_dict(), tmp_path / "o.safetensors")
    tm2 = Torch(I, H, num_layers=2, bidirectional=True, batch_first=True)
    tm2.load_state_dict(storch.load_file(str(tmp_path / "o.safetensors")))
    with torch.no_grad():
        want = tm2(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(ours.forward(x)[0], want, rtol=0, atol=1e-5)


def test_checkpoint_as_safetensors_is_accepted_by_the_checkpoint_commands(st, tmp_path):
    from gruengine.checkpoint import load_checkpoint
    from gruengine.errors import CheckpointError
    from gruengine.train import train
    from gruengine.inference import load_model
    train({"task": "adding", "seq_len": 8, "n_train": 64, "n_test": 16, "hidden_size": 4,
           "epochs": 1}, tmp_path / "run", quiet=True)
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(app, ["export", str(tmp_path / "run"), str(out)])   # folder: best.npz
    assert r.exit_code == 0 and r.output.startswith(f"wrote {out}: model weights"), r.output
    a, meta = load_checkpoint(tmp_path / "run" / "best.npz")
    b, meta_b = load_checkpoint(out)
    assert sorted(b) == sorted(k for k in a if k.startswith("model/"))
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in b)
    assert meta_b["model_config"] == meta["model_config"] and "optimizer" not in meta_b
    assert meta_b["data_config"] == meta["data_config"]
    # the weights under the model's own names, as a plain state_dict too
    m, _ = load_model(out)
    assert sorted(gruengine.load_safetensors(out)) == sorted(m.state_dict())
    r1 = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run" / "best.npz"), "--json",
                                  "--quiet"])
    r2 = CliRunner().invoke(app, ["evaluate", str(out), "--json", "--quiet"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    assert json.loads(r1.output) == json.loads(r2.output)
    # a bare state_dict is not a checkpoint: one line saying what it is
    gruengine.save_safetensors(m.state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match=r"bare.safetensors: no 'gruengine' metadata; a "
                                              r"bare state_dict \(load it with "
                                              r"gruengine.load_safetensors\)$"):
        load_checkpoint(tmp_path / "bare.safetensors")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "run"), str(tmp_path / "w.pt")])
    assert r.exit_code != 0 and "expected a name ending in .onnx or .safetensors" in r.output
