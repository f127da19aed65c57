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
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GruengineError("plotting needs matplotlib: pip install 'gruengine[plot]'") from None
    records = [r for r in read_metrics(run_dir) if r.get("event") == "epoch"]
    if not records:
        raise ValueError(f"run_dir: {run_dir}/metrics.jsonl holds no finished epoch yet")
    test = [r for r in read_metrics(run_dir) if r.get("event") == "test"]
    metric = "mse" if any("train_mse" in r for r in records) else "acc"
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "loss"),
                           (axes[1], metric, "MSE" if metric == "mse" else "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}_{key}") for r in records]
            if any(y is not None for y in ys):
                ax.plot(epochs, [float("nan") if y is None else y for y in ys], style,
                        label=split, markersize=3)
        if test and f"test_{key}" in test[-1]:
            ax.axhline(test[-1][f"test_{key}"], color="gray", linestyle="--", label="test")
        if key in ("loss", "mse"):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


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
