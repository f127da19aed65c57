"""The run configuration: layered defaults, the resume override rule, and the model config a
dataset implies."""
import numpy as np
import pytest

from gruengine.config import model_config, resolve_config, resume_config
from gruengine.data.dataset import Dataset


def test_resolve_config_layers_defaults():
    c = resolve_config({"task": "adding", "hidden_size": 5})
    assert c["hidden_size"] == 5 and c["seq_len"] == 50 and c["target"] == 0.01
    c = resolve_config({"task": "imdb"})
    assert c["seq_len"] is None and c["target"] is None


def test_resume_config_changes_only_the_allowed_keys():
    saved = resolve_config({"task": "adding", "epochs": 3})
    before = dict(saved)
    c = resume_config(saved, {"epochs": 7, "patience": 0, "device": "cpu",
                              "eval_batch_size": 32, "hidden_size": saved["hidden_size"]})
    assert saved == before                                # the saved dict is left alone
    assert (c["epochs"], c["patience"], c["eval_batch_size"]) == (7, 0, 32)
    assert {k: v for k, v in c.items() if k not in ("epochs", "patience", "eval_batch_size")} \
        == {k: v for k, v in saved.items() if k not in ("epochs", "patience", "eval_batch_size")}
    assert resume_config(saved, None) == saved
    with pytest.raises(ValueError, match=r"resume: lr cannot change when resuming a run "
                                         r"\(saved 0.005, given 0.1\); only \['device', "
                                         r"'epochs', 'eval_batch_size', 'patience'\] may"):
        resume_config(saved, {"lr": 0.1})


def test_model_config_fits_the_dataset():
    rng = np.random.default_rng(2)
    c = resolve_config({"task": "copy", "hidden_size": 7, "embed_dim": 5})
    x = rng.integers(0, 6, size=(10, 4)).astype(np.int64)
    test_x = rng.integers(0, 9, size=(3, 4)).astype(np.int64)
    test_x[0, 0] = 8
    y = rng.integers(0, 4, size=(10, 4)).astype(np.int64)
    L = np.full(10, 4, np.int64)
    train = Dataset(x, L, y, "tag", num_classes=4)
    test = Dataset(test_x, L[:3], y[:3], "tag", num_classes=4)
    m = model_config(c, train, test)
    # synthetic token ids: every id is a symbol, the largest seen in either split sets the size
    assert (m["input"], m["vocab_size"], m["padding_idx"]) == ("tokens", 9, None)
    assert (m["task"], m["num_outputs"], m["hidden_size"], m["embed_dim"]) == ("tag", 4, 7, 5)
    feats = Dataset(rng.standard_normal((10, 4, 3)).astype(np.float32), L,
                    rng.standard_normal((10, 2)).astype(np.float32), "regress")
    m = model_config(dict(c, input_proj=6), feats)
    assert (m["input"], m["num_features"], m["input_proj"], m["num_outputs"]) == \
        ("features", 3, 6, 2)
    assert all(m[k] == c[k] for k in ("cell", "num_layers", "bidirectional", "pooling", "dtype",
                                      "device", "seed", "reset_after"))


def test_task_and_test_fraction_follow_from_the_data(tmp_path):
    (tmp_path / "reviews.tsv").write_text("pos\tfine\n")
    (tmp_path / "x.npz").write_bytes(b"")
    c = resolve_config({"data": str(tmp_path / "reviews.tsv")})
    assert (c["task"], c["test_fraction"]) == ("text", 0.2)
    c = resolve_config({"data": str(tmp_path / "x.npz"), "test_fraction": 0.3})
    assert (c["task"], c["test_fraction"]) == ("npz", 0.3)
    c = resolve_config({"data": "a.tsv,b.tsv"})
    assert (c["task"], c["test_fraction"]) == ("text", None)
    c = resolve_config({"task": "adding"})
    assert c["test_fraction"] is None and c["seq_len"] == 50
    with pytest.raises(ValueError, match=r"test_fraction: expected a value < 1, got 1\.0"):
        resolve_config({"data": "a.tsv", "test_fraction": 1.0})
