"""Gate pictures: heatmaps of one sequence's gates and state, and its retention curves.

    from gruengine.gates_plot import plot_gates
    plot_gates(gates_of_one_sequence, "gates.png", marks=[22, 36])

Needs matplotlib (the optional ``gruengine[plot]`` extra); nothing else in gruengine imports
this module until a picture is asked for, so the maths in ``gruengine.gates`` runs without it.
"""
import math

import numpy as np

from .errors import GruengineError
from .gates import summarize

__all__ = ["plot_gates", "draw_gates", "pyplot", "PANELS"]

# gates drawn as heatmaps per cell, (key, title); the keep gate first
PANELS = {
    "gru": (("z", "update gate z (1 = keep h)"), ("r", "reset gate r"), ("h", "hidden state h")),
    "lstm": (("f", "forget gate f (1 = keep c)"), ("i", "input gate i"), ("c", "cell state c"),
             ("h", "hidden state h")),
    "mingru": (("z", "update gate z (0 = keep h)"), ("h_tilde", "candidate h~"),
               ("h", "hidden state h")),
}


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a one-line ``GruengineError`` without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GruengineError("plotting needs matplotlib: pip install 'gruengine[plot]' "
                             "(or pass --no-plot)") from None
    return plt


def plot_gates(layer_gates, path, *, marks=(), labels=None, units=None, reverse=False,
               inputs=None, title=None, top=5):
    """Draw heatmaps (time x units) of the gates and the state, and the retention curve.

    layer_gates : {gate: (L, H)} one sequence of one layer/direction (trimmed to its length)
    path        : the PNG to write; returns it
    marks       : time steps to mark with vertical lines (e.g. the adding problem's markers)
    labels      : L strings (tokens) for the time axis: all when L <= 60, else every k-th
    units       : draw only this many units, the most retentive ones (default all)
    inputs      : (L, F) feature inputs drawn above the heatmaps (F <= 4), or None
    Units are ordered most retentive first (top row). Needs matplotlib.
    """
    plt = pyplot()
    fig = draw_gates(plt, layer_gates, marks=marks, labels=labels, units=units, reverse=reverse,
                     inputs=inputs, title=title, top=top)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def draw_gates(plt, layer_gates, *, marks=(), labels=None, units=None, reverse=False,
               inputs=None, title=None, top=5):
    """The figure of ``plot_gates`` (arguments alike), not saved: one column of panels over
    the same time axis, every colourbar in a narrow column of its own so that the heatmaps
    are as wide as the line panels and a time step lines up across all of them."""
    s = summarize(layer_gates, reverse=reverse, top=top)
    L, H, cell = s["length"], s["units"], s["cell"]
    order = s["order"][:units] if units else s["order"]
    panels = PANELS[cell]
    n_in = 1 if inputs is not None and inputs.ndim == 2 and inputs.shape[1] <= 4 else 0
    heights = [1.0] * n_in + [2.2] * len(panels) + [1.6]
    fig = plt.figure(figsize=(11, 1.5 * sum(heights) + 0.6), constrained_layout=True)
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[60, 1],
                            wspace=0.02)
    axes = [fig.add_subplot(grid[0, 0])]
    axes += [fig.add_subplot(grid[k, 0], sharex=axes[0]) for k in range(1, len(heights))]
    caxes = [fig.add_subplot(grid[k, 1]) for k in range(len(heights))]
    for a in axes[:-1]:
        a.tick_params(labelbottom=False)
    for k, cax in enumerate(caxes):
        if not n_in <= k < n_in + len(panels):
            cax.axis("off")
    if n_in:
        ax = axes[0]
        for f in range(inputs.shape[1]):
            ax.plot(np.arange(L), inputs[:, f], lw=1, label=f"input {f}")
        ax.legend(loc="upper right", fontsize=7, ncol=inputs.shape[1])
        ax.set_ylabel("input", fontsize=8)
    for ax, cax, (key, name) in zip(axes[n_in:], caxes[n_in:], panels):
        a = np.asarray(layer_gates[key], dtype=np.float64)[:, order].T  # (units, L)
        state = key in ("h", "c", "h_tilde")
        lim = max(float(np.abs(a).max()), 1e-6) if state else 1.0
        im = ax.imshow(a, aspect="auto", origin="upper", interpolation="nearest",
                       cmap="RdBu_r" if state else "viridis",
                       vmin=-lim if state else 0.0, vmax=lim,
                       extent=(-0.5, L - 0.5, len(order) - 0.5, -0.5))
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel("unit (rank)", fontsize=8)
        fig.colorbar(im, cax=cax)
    ax = axes[-1]
    R = s["retention"]
    for u in s["order"][:top]:
        ax.plot(np.arange(L), R[:, u], lw=0.8, alpha=0.7)
    ax.plot(np.arange(L), s["retention_mean"], color="k", lw=2, label="mean over units")
    ax.plot(np.arange(L), s["retaining"], color="k", lw=1.2, ls="--",
            label=f"share of units >= {s['threshold']:g}")
    ax.axhline(s["threshold"], color="gray", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    end = "first" if reverse else "last"
    ax.set_title(f"retention to the {end} step: product of later {s['keep_name']} "
                 f"(thin: the {top} most retentive units); horizon {s['horizon']} steps",
                 fontsize=9, loc="left")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_ylabel("retention", fontsize=8)
    for a in axes:
        for m in marks:
            a.axvline(m, color="red", lw=0.8, ls="--", alpha=0.7)
    if labels is not None:
        k = max(1, math.ceil(L / 60))
        ticks = np.arange(0, L, k)
        ax.set_xticks(ticks)
        ax.set_xticklabels([labels[t] for t in ticks], rotation=90, fontsize=7)
    else:
        ax.set_xlabel("time step t")
    ax.set_xlim(-0.5, L - 0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
