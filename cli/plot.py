"""``gruengine plot RUN_DIR``: learning curves from metrics.jsonl as a PNG (needs matplotlib)."""
import os

import click

from gruengine.errors import GruengineError

from .main import app


def require_matplotlib(what="plotting"):
    """Raise a one-line error saying how to get matplotlib unless it is importable."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        raise GruengineError(f"{what} needs matplotlib: pip install 'gruengine[plot]' "
                             f"(pip install -e \".[plot]\" in a source checkout)")


def write_plot(run_dir, out=None):
    """Draw loss and accuracy/MSE per epoch (train and validation) into ``out`` (a PNG;
    default RUN_DIR/curves.png) and return its path."""
    from gruengine.rundir import read_metrics
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = read_metrics(run_dir)
    members = []              # an ensemble's folder: its members' curves, side by side
    while os.path.isdir(os.path.join(run_dir, f"member-{len(members) + 1}")):
        k = len(members) + 1
        members.append((f"member {k}", read_metrics(os.path.join(run_dir, f"member-{k}"))))
    if not any(r.get("event") == "epoch" for _, rs in members or [("", records)] for r in rs):
        raise ValueError(f"run_dir: {run_dir}/metrics.jsonl holds no finished epoch yet")
    fig = draw_curves(plt, records, os.path.basename(os.path.normpath(run_dir)), members)
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def panels(records):
    """(key, title) of each panel: loss and accuracy; for a regression run, whose loss is
    the MSE, one panel."""
    epochs = [r for r in records if r.get("event") == "epoch"]
    if any("train_mse" in r for r in epochs):
        same = all(r.get(f"{s}_loss") == r.get(f"{s}_mse") for r in epochs for s in ("train", "val"))
        return [("loss", "loss (MSE)")] if same else [("loss", "loss"), ("mse", "MSE")]
    return [("loss", "loss"), ("acc", "accuracy")]


def draw_curves(plt, records, title, members=()):
    """The learning-curve figure of a run's metrics records (not saved). ``members``:
    [(name, records)] of an ensemble's members, drawn in a colour each (the test line is
    the ensemble's, from ``records``)."""
    from matplotlib.ticker import MaxNLocator
    runs = list(members) or [("", records)]
    test = [r for r in records if r.get("event") == "test"]
    epochs = [r["epoch"] for _, rs in runs for r in rs if r.get("event") == "epoch"]
    keys = panels([r for _, rs in runs for r in rs])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, (key, name) in zip(axes[0], keys):
        for j, (who, rs) in enumerate(runs):
            epoch_records = [r for r in rs if r.get("event") == "epoch"]
            for split, style in (("train", "-o"), ("val", "-s")):
                ys = [r.get(f"{split}_{key}") for r in epoch_records]
                if any(y is not None for y in ys):
                    ax.plot([r["epoch"] for r in epoch_records],
                            [float("nan") if y is None else y for y in ys], style,
                            label=f"{who} {split}".strip(), markersize=4,
                            **({"color": f"C{j}", "alpha": 0.5 if split == "train" else 1.0}
                               if members else {}))
        if test and f"test_{key}" in test[-1]:
            ax.axhline(test[-1][f"test_{key}"], color="gray", linestyle="--",
                       label="ensemble test" if members else "test")
        if key in ("loss", "mse"):
            ax.set_yscale("log")
        if len(epochs) <= 12:                      # epochs are whole numbers: tick each one
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@app.command("plot")
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(), help="PNG to write [default: RUN_DIR/curves.png]")
def plot_cmd(run_dir, out):
    """Plot the learning curves of a run (train/validation loss and accuracy or MSE).

    \b
    Example:
      gruengine plot runs/adding200        # writes runs/adding200/curves.png
    """
    click.echo(write_plot(run_dir, out))
