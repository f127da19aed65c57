"""Where a trained model and 1-nearest-neighbour DTW disagree on a UCR/UEA set, and whether
the test series that DTW gets right have a near twin in the training split.

    python benchmarks/ucr_twins.py --data DATA_DIR/PLAID --run runs/bench_ucr/runs/default/PLAID-s0
    python benchmarks/ucr_twins.py --data DIR/PLAID --run RUN1 --run RUN2 --twin 0.005

A test series' *twin distance* is its smallest full-window DTW distance to a training series,
relative to the test series' own energy (sum of its squared values): below ``--twin`` (0.5 %
by default) the training split holds an almost identical recording, up to time warping,
which 1-NN reads off directly. For each run (its best.npz: one model or an ensemble) the
script prints how many test series the model and DTW get right, where their errors overlap,
and the accuracy of both on the series with and without a twin.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ucr import dtw_distances  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a UCR/UEA folder (<Name>_TRAIN.ts, ...)")
    ap.add_argument("--run", action="append", required=True, help="a run folder or checkpoint")
    ap.add_argument("--twin", type=float, default=0.005,
                    help="relative DTW distance below which a training series is a twin")
    a = ap.parse_args(argv)

    from gruengine.data import load_dataset
    from gruengine.inference import predict_data
    d = load_dataset("ucr", a.data)
    tr, te = d["train"], d["test"]
    y = te.targets
    D = dtw_distances(tr, te)
    nn = D.argmin(axis=1)
    dtw_ok = tr.targets[nn] == y
    valid = np.arange(te.inputs.shape[1])[None, :] < te.lengths[:, None]
    energy = (np.where(valid[..., None], te.inputs, 0).astype(np.float64) ** 2).sum(axis=(1, 2))
    twin = D[np.arange(len(y)), nn] / np.maximum(energy, np.finfo(np.float64).tiny) < a.twin
    n = len(y)
    print(f"{os.path.basename(os.path.normpath(a.data))}: {n} test series, "
          f"{int(twin.sum())} ({twin.mean():.0%}) with a training twin (relative DTW distance "
          f"< {a.twin:g}); 1NN-DTW {int(dtw_ok.sum())} correct ({dtw_ok.mean():.3f}): "
          f"{_acc(dtw_ok, twin)} with a twin, {_acc(dtw_ok, ~twin)} without")
    print("| run | correct | both wrong | only the model wrong (with a twin) "
          "| only DTW wrong (with a twin) | model with a twin | model without |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in a.run:
        out = predict_data(run, a.data)
        names = list(te.classes)
        pred = np.array([names.index(o["label"]) for o in out])
        ok = pred == y
        only_model, only_dtw = ~ok & dtw_ok, ok & ~dtw_ok
        print(f"| {run} | {int(ok.sum())} ({ok.mean():.3f}) | {int((~ok & ~dtw_ok).sum())} "
              f"| {int(only_model.sum())} ({int((only_model & twin).sum())}) "
              f"| {int(only_dtw.sum())} ({int((only_dtw & twin).sum())}) "
              f"| {_acc(ok, twin)} | {_acc(ok, ~twin)} |")


def _acc(ok, where):
    return f"{ok[where].mean():.3f}" if where.any() else "-"


if __name__ == "__main__":
    main()
