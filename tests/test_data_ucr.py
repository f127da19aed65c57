"""UCR/UEA archives: .ts (multichannel, variable length), .tsv (NaN padding), old .txt; malformed files."""
import numpy as np
import pytest

from gruengine.data import load_dataset
from gruengine.data.ucr import read_ts
from gruengine.errors import DataError


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def _cases(rng, n, channels, labels, lo=3, hi=9):
    # the first len(labels) cases cover every label, so a test split never meets an unseen one
    return [(rng.standard_normal((int(rng.integers(lo, hi + 1)), channels)),
             labels[i] if i < len(labels) else labels[int(rng.integers(0, len(labels)))]) for i in range(n)]


def _write_ts(path, cases, labels, channels, extra_header=""):
    lines = ["# fake UEA file written by the test", "@problemName Fake", "@timeStamps false",
             "@missing false", f"@univariate {'true' if channels == 1 else 'false'}",
             f"@dimensions {channels}", "@equalLength false", f"@classLabel true {' '.join(labels)}"]
    lines += [extra_header] if extra_header else []
    lines.append("@data")
    for x, lab in cases:
        lines.append(":".join(",".join(repr(float(v)) for v in x[:, c]) for c in range(channels)) + ":" + lab)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _check(ds, cases, classes):
    assert len(ds) == len(cases) and ds.classes == classes and ds.num_classes == len(classes)
    for i, (x, lab) in enumerate(cases):
        n = x.shape[0]
        assert ds.lengths[i] == n
        np.testing.assert_array_equal(ds.inputs[i, :n], x.astype(np.float32))
        assert (ds.inputs[i, n:] == 0).all()
        assert ds.classes[ds.targets[i]] == lab


def test_ts_multichannel_variable_length(tmp_path, rng):
    labels = ["walk", "run", "jump"]
    train, test = _cases(rng, 12, 3, labels), _cases(rng, 5, 3, labels)
    _write_ts(tmp_path / "Fake_TRAIN.ts", train, labels, 3)
    _write_ts(tmp_path / "Fake_TEST.ts", test, labels, 3)
    for path in (str(tmp_path), str(tmp_path / "Fake_TRAIN.ts"), str(tmp_path / "Fake_TEST.ts"),
                 f"{tmp_path / 'Fake_TRAIN.ts'},{tmp_path / 'Fake_TEST.ts'}"):
        s = load_dataset("ucr", path)
        _check(s["train"], train, labels)  # classes in the order the header declares them
        _check(s["test"], test, labels)
        assert s["train"].inputs.shape == (12, max(x.shape[0] for x, _ in train), 3)


def test_ts_regression_targets(tmp_path, rng):
    cases = _cases(rng, 6, 2, ["0"])
    targets = rng.standard_normal(6)
    lines = ["@problemName Reg", "@timeStamps false", "@dimensions 2", "@targetLabel true", "@data"]
    lines += [":".join(",".join(repr(float(v)) for v in x[:, c]) for c in range(2)) + f":{float(t)!r}"
              for (x, _), t in zip(cases, targets)]
    for name in ("Reg_TRAIN.ts", "Reg_TEST.ts"):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = load_dataset("ucr", str(tmp_path))["train"]
    assert ds.task == "regress" and ds.num_classes is None
    np.testing.assert_allclose(ds.targets[:, 0], targets, rtol=1e-6)


def _write_table(path, cases, sep, label_fmt=str):
    T = max(x.shape[0] for x, _ in cases)
    with open(path, "w", encoding="utf-8") as f:
        for x, lab in cases:
            vals = [repr(float(v)) for v in x[:, 0]] + ["NaN"] * (T - x.shape[0])
            f.write(sep.join([label_fmt(lab)] + vals) + "\n")


@pytest.mark.parametrize("ext,sep,fmt", [(".tsv", "\t", str), (".txt", "  ", lambda s: f"{float(s):.7e}"),
                                         (".txt", ",", str)])
def test_univariate_tables(tmp_path, rng, ext, sep, fmt):
    labels = ["1", "2", "10"]
    train, test = _cases(rng, 10, 1, labels), _cases(rng, 4, 1, labels)
    _write_table(tmp_path / f"Uni_TRAIN{ext}", train, sep, fmt)
    _write_table(tmp_path / f"Uni_TEST{ext}", test, sep, fmt)
    s = load_dataset("ucr", str(tmp_path))
    classes = sorted({lab for _, lab in train}, key=int)  # numeric labels sort numerically
    _check(s["train"], train, classes)
    _check(s["test"], test, classes)
    assert s["train"].inputs.shape[2] == 1


@pytest.mark.parametrize("body,match", [
    ("1.0,2.0:a\n1.0,x:b\n", r":8: malformed value 'x'"),
    ("1.0,2.0:a\n1.0,2.0:3.0:b\n", r":8: 2 channel\(s\), earlier lines have 1"),
    ("1.0:2.0:a\n", r":7: 2 channel\(s\), the header declares 1"),
    ("1.0,?,2.0:a\n", r":7: missing or non-finite values"),
    ("1.0,2.0\n", r":7: malformed line: expected channels and a label"),
    ("", r"empty dataset"),
])
def test_ts_malformed(tmp_path, body, match):
    header = "@problemName Bad\n@timeStamps false\n@dimensions 1\n@univariate true\n@classLabel true a b\n@data\n"
    (tmp_path / "Bad_TRAIN.ts").write_text(header + body, encoding="utf-8")
    with pytest.raises(DataError, match=match) as e:
        read_ts(str(tmp_path / "Bad_TRAIN.ts"))
    assert "Bad_TRAIN.ts" in str(e.value) and "\n" not in str(e.value)


def test_ts_layout_errors(tmp_path, rng):
    (tmp_path / "A_TRAIN.ts").write_text("@problemName A\n@classLabel true a\n1,2:a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"A_TRAIN\.ts:3: malformed header line"):
        read_ts(str(tmp_path / "A_TRAIN.ts"))
    (tmp_path / "B_TRAIN.ts").write_text("@problemName B\n@classLabel false\n@data\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"B_TRAIN\.ts: no labels"):
        read_ts(str(tmp_path / "B_TRAIN.ts"))
    (tmp_path / "C_TRAIN.ts").write_text("@problemName C\n@timeStamps true\n@classLabel true a\n@data\n",
                                         encoding="utf-8")
    with pytest.raises(DataError, match=r"C_TRAIN\.ts:4: '@timeStamps true' files are not supported"):
        read_ts(str(tmp_path / "C_TRAIN.ts"))
    with pytest.raises(DataError, match=r"D_TRAIN\.ts: no such file"):
        load_dataset("ucr", str(tmp_path / "D_TRAIN.ts"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no <Name>_TRAIN/<Name>_TEST pair"):
        load_dataset("ucr", str(tmp_path / "empty"))


def test_unknown_test_label_and_inner_nan(tmp_path, rng):
    labels = ["a", "b"]
    train = _cases(rng, 5, 2, labels)
    _write_ts(tmp_path / "L_TRAIN.ts", train, labels, 2)
    _write_ts(tmp_path / "L_TEST.ts", train[:2] + [(train[0][0], "zzz")], labels + ["zzz"], 2)
    with pytest.raises(DataError, match=r"L_TEST\.ts:12: label 'zzz' is not one of the known classes"):
        load_dataset("ucr", str(tmp_path / "L_TRAIN.ts"))
    (tmp_path / "N_TRAIN.tsv").write_text("1\t0.5\tNaN\t0.7\n", encoding="utf-8")
    (tmp_path / "N_TEST.tsv").write_text("1\t0.5\t0.7\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"N_TRAIN\.tsv:1: NaN or Inf inside the series"):
        load_dataset("ucr", str(tmp_path / "N_TRAIN.tsv"))
