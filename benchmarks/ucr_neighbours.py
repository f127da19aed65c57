"""Classification by a trained model's nearest training neighbour, computed afterwards from a
run's checkpoint: does the label of the closest training series in the model's own feature
space add to its probabilities?

    python benchmarks/ucr_neighbours.py --data DATA_DIR/PLAID --run RUN_DIR [--run RUN_DIR ...]

For every model (each member of an ensemble), in eval mode: the features its head reads
(``SequenceModel.features``) for the training and the test split, both scaled as the
checkpoint says; each test series' nearest training series by cosine similarity; then three
test accuracies, averaged over the members as an ensemble averages probabilities:

* ``model``: the probabilities alone (what ``gruengine evaluate`` reports for a run
  trained with ``--no-neighbours``);
* ``neighbour``: the nearest training series' label (ties broken by the probabilities);
* ``mixed``: half the probabilities plus half a one-hot vote for the neighbour's label
  (what a run trained with ``--neighbours``, the default for small series sets, reports).

The training split is the whole training file (with a validation split, the model has not
been fitted on all of it; the engine stores the fitted part only).
"""
import argparse
import os

import numpy as np


def member_scores(model, meta, train, test):
    """(probabilities (n_test, C), one-hot votes of the nearest training neighbour (n_test, C))
    of one SequenceModel: the engine's own ``fit_neighbours`` and ``Neighbours.nearest`` on
    the whole training split, the model's probabilities without the mix."""
    from gruengine.batching import make_batch, sorted_batches
    from gruengine.inference import scale_dataset
    from gruengine.neighbours import fit_neighbours
    model.neighbours = None          # the model's own probabilities (a default run stores some)
    nb = fit_neighbours(model, scale_dataset(meta, train))
    test = scale_dataset(meta, test)
    p = np.zeros((len(test.lengths), model.config.num_outputs))
    votes = np.zeros_like(p)
    for idx in sorted_batches(test.lengths, 64):
        x, L, _ = make_batch(test, idx, model.dtype)
        p[idx] = model.predict_proba(model.forward(x, L).astype(np.float64))
        votes[idx, nb.labels[nb.nearest(model.features(x, L))]] = 1
    return p, votes


def run_scores(path, train, test):
    """{'model', 'neighbour', 'mixed'}: test accuracies of a run folder or checkpoint."""
    from gruengine.ensemble import EnsembleModel
    from gruengine.inference import load_model
    model, meta = load_model(path)
    members = model.members if isinstance(model, EnsembleModel) else [model]
    scores = [member_scores(m, meta, train, test) for m in members]
    p = np.mean([s[0] for s in scores], axis=0)
    v = np.mean([s[1] for s in scores], axis=0)
    y = test.targets
    return {"model": float((p.argmax(1) == y).mean()),
            "neighbour": float(((v + 1e-6 * p).argmax(1) == y).mean()),
            "mixed": float((((p + v) / 2).argmax(1) == y).mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a UCR/UEA folder (<Name>_TRAIN.ts, ...)")
    ap.add_argument("--run", action="append", required=True, help="a run folder or checkpoint")
    a = ap.parse_args(argv)
    from gruengine.data import load_dataset
    d = load_dataset("ucr", a.data)
    print(f"{os.path.basename(os.path.normpath(a.data))}:")
    print("| run | model | neighbour | mixed |")
    print("| --- | ---: | ---: | ---: |")
    for run in a.run:
        s = run_scores(run, d["train"], d["test"])
        print(f"| {run} | {s['model']:.3f} | {s['neighbour']:.3f} | {s['mixed']:.3f} |")


if __name__ == "__main__":
    main()
