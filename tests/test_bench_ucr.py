"""benchmarks/bench_ucr.py end to end on a tiny generated UCR set (a short step budget), and
its 1NN-DTW against a plain Python DTW; benchmarks/ucr_twins.py and ucr_neighbours.py on the
run it made."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.test_train_plan import _write_ts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dtw(a, b):
    D = [[float("inf")] * (len(b) + 1) for _ in range(len(a) + 1)]
    D[0][0] = 0.0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            c = float(((a[i - 1] - b[j - 1]) ** 2).sum())
            D[i][j] = c + min(D[i - 1][j], D[i][j - 1], D[i - 1][j - 1])
    return D[-1][-1]


def test_bench_ucr_runs_the_defaults_and_measures_dtw(tmp_path):
    rng = np.random.default_rng(11)
    data = tmp_path / "data" / "Toy"
    data.mkdir(parents=True)
    _write_ts(data / "Toy_TRAIN.ts", rng, 12)
    _write_ts(data / "Toy_TEST.ts", rng, 8)
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "benchmarks/bench_ucr.py", "--root", str(tmp_path / "data"),
                        "--sets", "Toy", "--seeds", "0", "--measure-dtw", "--out",
                        str(tmp_path / "out"), "--", "--steps", "3"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert len(rows) == 1 and rows[0]["set"] == "Toy" and 0 <= rows[0]["acc"] <= 1
    assert rows[0]["plan"].startswith("plan: 12 training sequences")
    assert rows[0]["extra"] == ["--steps", "3"] and rows[0]["wall_s"] > 0
    # the DTW column: 1-NN under a plain DTW of the same series
    from gruengine.data import load_dataset
    d = load_dataset("ucr", str(data))
    tr, te = d["train"], d["test"]
    nn = [min(range(len(tr)), key=lambda k: _dtw(tr.inputs[k, :tr.lengths[k]].astype(float),
                                                  te.inputs[q, :te.lengths[q]].astype(float)))
          for q in range(len(te))]
    want = float(np.mean(tr.targets[nn] == te.targets))
    assert f"Toy: 1NN-DTW {want:.3f} (measured here)" in r.stdout
    assert "| Toy | " in r.stdout and " ± 0.000 | 1 |" in r.stdout

    # ucr_twins.py on that run: twin distances and DTW's hits from the plain DTW, the model's
    # hits from its predictions
    dist = np.array([[_dtw(tr.inputs[k, :tr.lengths[k]].astype(float),
                           te.inputs[q, :te.lengths[q]].astype(float)) for k in range(len(tr))]
                     for q in range(len(te))])
    energy = np.array([(te.inputs[q, :te.lengths[q]].astype(float) ** 2).sum()
                       for q in range(len(te))])
    rel = dist.min(axis=1) / energy
    thr = float(np.sort(rel)[len(rel) // 2])          # about half the series are twins
    twins = int((rel < thr).sum())
    assert 0 < twins < len(te)
    run = tmp_path / "out" / "runs" / "default" / "Toy-s0"
    r = subprocess.run([sys.executable, "benchmarks/ucr_twins.py", "--data", str(data),
                        "--run", str(run), "--twin", repr(thr)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    dtw_ok = tr.targets[nn] == te.targets
    assert (f"Toy: {len(te)} test series, {twins} ({twins / len(te):.0%}) with a training twin"
            in r.stdout)
    assert f"1NN-DTW {int(dtw_ok.sum())} correct ({dtw_ok.mean():.3f})" in r.stdout
    from gruengine.inference import predict_data
    pred = np.array([list(te.classes).index(o["label"]) for o in predict_data(str(run), str(data))])
    ok = pred == te.targets
    assert (f"| {run} | {int(ok.sum())} ({ok.mean():.3f}) | {int((~ok & ~dtw_ok).sum())} | "
            f"{int((~ok & dtw_ok).sum())} (") in r.stdout

    # ucr_neighbours.py on that run (trained with the plan's neighbours): each member's own
    # probabilities and its nearest-neighbour votes, the votes against a loop over features
    # computed series by series; the engine's predictions are their half-and-half mix
    r = subprocess.run([sys.executable, "benchmarks/ucr_neighbours.py", "--data", str(data),
                        "--run", str(run)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from gruengine.inference import load_model, scale_dataset
    ens, meta = load_model(str(run))
    members = getattr(ens, "members", [ens])
    assert all(m.neighbours is not None for m in members)
    C = len(te.classes)
    probs = np.array([[o["probs"][c] for c in te.classes]
                      for o in predict_data(str(run), str(data))])
    votes = np.zeros((len(te), C))
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import ucr_neighbours
    finally:
        sys.path.pop(0)
    p_sum = 0
    for model in members:
        model.eval()

        def feats(ds):
            ds = scale_dataset(meta, ds)
            out = []
            for i in range(len(ds.inputs)):
                L = ds.lengths[i:i + 1]
                f = model.features(ds.inputs[i:i + 1, :L[0]].astype(model.dtype), L)[0]
                out.append(f / np.linalg.norm(f))
            return out

        f_tr, f_te = feats(tr), feats(te)
        mine = np.zeros((len(te), C))
        for q in range(len(te)):
            sims = [float(f_te[q] @ f_tr[k]) for k in range(len(tr))]
            mine[q, tr.targets[int(np.argmax(sims))]] = 1
        p_m, v_m = ucr_neighbours.member_scores(model, meta, tr, te)
        np.testing.assert_array_equal(v_m, mine)
        p_sum = p_sum + p_m
        votes += mine / len(members)
    own = p_sum / len(members)
    np.testing.assert_allclose((own + votes) / 2, probs, rtol=1e-5, atol=1e-6)
    y = te.targets
    acc = [np.mean(own.argmax(1) == y), np.mean((votes + 1e-6 * own).argmax(1) == y),
           np.mean(((own + votes) / 2).argmax(1) == y)]
    assert acc[2] == ok.mean()
    assert f"| {run} | {acc[0]:.3f} | {acc[1]:.3f} | {acc[2]:.3f} |" in r.stdout, r.stdout
