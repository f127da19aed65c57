"""Tables and plots of benchmarks/study_cells.py's results (kept apart from the runner).

Run names: ``sweep-<cell>-lr<lr>``, ``adding-T<T>-<cell>-s<seed>``, ``imdb-<cell>``.
"""
import glob
import json
import math
import os
import statistics

ORDER = ("gru", "gru-h37", "lstm", "lstm-fb1", "mingru")
LABEL = {"gru": "GRU", "gru-h37": "GRU H=37", "lstm": "LSTM", "lstm-fb1": "LSTM fb=1",
         "mingru": "minGRU"}
COLOR = {"gru": "C0", "gru-h37": "C4", "lstm": "C1", "lstm-fb1": "C3", "mingru": "C2"}


def collect(out):
    """Every finished run under OUT/runs, sorted by name."""
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "runs", "*", "result.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def _cell(r):
    """The study's cell name of a run (its name's middle part)."""
    name = r["name"]
    if name.startswith("sweep-"):
        return name[len("sweep-"):name.rindex("-lr")]
    if name.startswith("adding-"):
        return name.split("-", 2)[2].rsplit("-s", 1)[0]
    return name[len("imdb-"):name.rindex("-lr")]


def solved_step(r, below):
    """The first step at which the run's validation MSE was below ``below``, or None."""
    return next((s for s, v, _ in r["curve"] if v is not None and v < below), None)


def adding_table(results, below):
    """{cell: {T: {'n', 'solved', 'mse': [..], 'steps': [..], 'params', 'wall': [..]}}}"""
    t = {}
    for r in results:
        if not r["name"].startswith("adding-") or "error" in r:
            continue
        e = t.setdefault(_cell(r), {}).setdefault(r["config"]["seq_len"], {
            "n": 0, "solved": 0, "mse": [], "steps": [], "params": r["params"], "wall": [],
            "base": []})
        e["n"] += 1
        e["mse"].append(r["test"])
        e["base"].append(r["baseline"])
        e["wall"].append(r["wall_s"])
        if r["test"] < below:
            e["solved"] += 1
            e["steps"].append(solved_step(r, below) or r["steps"])
    return t


def best_imdb(results):
    """Per cell, the IMDB run with the best validation accuracy, in ORDER."""
    best = {}
    for r in results:
        if r["name"].startswith("imdb-") and "error" not in r:
            c = _cell(r)
            if c not in best or r["best_val"] > best[c]["best_val"]:
                best[c] = r
    return [best[c] for c in ORDER if c in best]


def _mean_std(v):
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def markdown(results, meta):
    below = meta["solved_below"]
    p = meta["params"]
    lines = [f"**Learning-rate sweep** (adding problem, T = {p['sweep_T']}, {p['sweep_steps']} "
             "steps, seed 0, no early exit): best validation MSE and, in brackets, the step at "
             f"which validation MSE first fell below {below}; bold: the lr chosen (the first to "
             "solve; ties: the lowest MSE).\n"]
    sweep = {}
    for r in results:
        if r["name"].startswith("sweep-") and "error" not in r:
            sweep.setdefault(_cell(r), {})[r["config"]["lr"]] = r
    lrs = sorted({lr for d in sweep.values() for lr in d})
    lines.append("| cell | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
    lines.append("|---|" + "---:|" * len(lrs))
    for cell in (c for c in ORDER if c in sweep):
        row = []
        for lr in lrs:
            r = sweep[cell].get(lr)
            if r is None:
                row.append("")
                continue
            step = solved_step(r, below)
            txt = f"{r['best_val']:.1e}" + (f" ({step})" if step else "")
            row.append(f"**{txt}**" if lr == meta["lrs"].get(cell) else txt)
        lines.append(f"| {LABEL[cell]} | " + " | ".join(row) + " |")
    t = adding_table(results, below)
    Ts = sorted({T for d in t.values() for T in d})
    lines.append(f"\n**Adding problem**: solved runs / runs (test MSE < {below}), test MSE "
                 "(mean ± std over the seeds), and the mean step at which the solved runs "
                 f"first reached validation MSE < {below}; budget {p['steps']} steps.\n")
    lines.append("| cell | lr | params | " + " | ".join(f"T = {T}" for T in Ts) + " |")
    lines.append("|---|---:|---:|" + "---|" * len(Ts))
    for cell in (c for c in ORDER if c in t):
        params = next(iter(t[cell].values()))["params"]
        cells = []
        for T in Ts:
            e = t[cell].get(T)
            if e is None:
                cells.append("not run")
                continue
            m, s = _mean_std(e["mse"])
            txt = f"{e['solved']}/{e['n']}, {m:.4f}" + (f" ± {s:.4f}" if e["n"] > 1 else "")
            if e["steps"]:
                txt += f", step {sum(e['steps']) / len(e['steps']):.0f}"
            cells.append(txt)
        lines.append(f"| {LABEL[cell]} | {meta['lrs'].get(cell, float('nan')):g} | {params} | "
                     + " | ".join(cells) + " |")
    base = [b for d in t.values() for e in d.values() for b in e["base"]]
    if base:
        lines.append(f"\nPredicting the training mean scores test MSE "
                     f"{min(base):.3f}–{max(base):.3f}.")
    speed = {}
    for r in results:
        # runs of 3 epochs or more: the first epoch also loads the compiled kernels
        if r["name"].startswith(("adding-", "sweep-")) and "error" not in r \
                and r.get("tokens_per_s") and r["epochs"] >= 3:
            speed.setdefault(_cell(r), {}).setdefault(r["config"]["seq_len"], []).append(
                r["tokens_per_s"])
    if speed:
        lines.append("\n**Training throughput** (tokens/s, median over the runs of 3 epochs or "
                     "more, the sweep's included, epochs after the first; one Numba thread per "
                     "run on a shared, busy machine, so a rough ratio between cells only):\n")
        lines.append("| cell | " + " | ".join(f"T = {T}" for T in Ts) + " |")
        lines.append("|---|" + "---:|" * len(Ts))
        for cell in (c for c in ORDER if c in speed):
            lines.append(f"| {LABEL[cell]} | " + " | ".join(
                f"{sorted(speed[cell][T])[len(speed[cell][T]) // 2]:,.0f}"
                if T in speed[cell] else "" for T in Ts) + " |")
    imdb = best_imdb(results)
    if imdb:
        lines.append(f"\n**IMDB** ({p['imdb_train']} training / {p['imdb_test']} test reviews, "
                     f"last {p['max_len']} tokens, {p['imdb_epochs']} epochs, H = {p['hidden']}, "
                     f"embeddings {p['embed']}): test accuracy at each lr; bold: the lr with the "
                     "best validation accuracy, the cell's result; * the lr of its adding sweep.\n")
        grid = {}
        for r in results:
            if r["name"].startswith("imdb-") and "error" not in r:
                grid.setdefault(_cell(r), {})[r["config"]["lr"]] = r
        ilrs = sorted({lr for d in grid.values() for lr in d})
        lines.append("| cell | params | " + " | ".join(f"lr {lr:g}" for lr in ilrs)
                     + " | run time (s) | train tokens/s |")
        lines.append("|---|---:|" + "---:|" * len(ilrs) + "---:|---:|")
        for r in imdb:
            cell = _cell(r)
            row = []
            for lr in ilrs:
                q = grid[cell].get(lr)
                txt = "" if q is None else f"{q['test']:.4f}"
                txt = f"**{txt}**" if q is r else txt
                row.append(txt + ("*" if q is not None and lr == meta["lrs"].get(cell) else ""))
            lines.append(f"| {LABEL[cell]} | {r['params']} | " + " | ".join(row)
                         + f" | {r['wall_s']:.0f} | {r['tokens_per_s']:.0f} |")
    loads = [r.get("load_avg_start") for r in results if r.get("load_avg_start") is not None]
    if loads:
        par = sorted({(r.get("jobs", 1), r.get("threads")) for r in results})
        lines.append(f"\nLoad average (1 min) at the start of the runs: {min(loads):.1f}–"
                     f"{max(loads):.1f} on {meta['machine']}; "
                     + ", ".join(f"{j} run(s) at once with {n} Numba thread(s) each"
                                 for j, n in par) + ".")
    return "\n".join(lines) + "\n"


def plots(results, meta, folder):
    """study_sweep.png, study_adding.png, study_curves.png (and study_imdb.png) in ``folder``;
    returns the paths written (none without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is missing: no plots (pip install 'gruengine[plot]')")
        return []
    os.makedirs(folder, exist_ok=True)
    below, p, written = meta["solved_below"], meta["params"], []

    # the sweep: best validation MSE against lr
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for cell in ORDER:
        rs = sorted((r for r in results if r["name"].startswith("sweep-") and "error" not in r
                     and _cell(r) == cell), key=lambda r: r["config"]["lr"])
        if rs:
            ax.plot([r["config"]["lr"] for r in rs], [r["best_val"] for r in rs], "-o",
                    color=COLOR[cell], label=LABEL[cell])
    ax.axhline(below, color="gray", ls=":", label=f"solved ({below})")
    ax.set(xscale="log", yscale="log", xlabel="peak learning rate",
           ylabel="best validation MSE",
           title=f"lr sweep: T = {p['sweep_T']}, {p['sweep_steps']} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, folder, "study_sweep.png", plt))

    # adding: test MSE against T, and the solved map
    t = adding_table(results, below)
    cells = [c for c in ORDER if c in t]
    Ts = sorted({T for d in t.values() for T in d})
    if cells:
        fig, (ax, mp) = plt.subplots(1, 2, figsize=(13.5, 4.2),
                                     gridspec_kw={"width_ratios": [1, 1.1]})
        for k, cell in enumerate(cells):
            xs = [T for T in Ts if T in t[cell]]
            shift = 1 + 0.03 * (k - 2)          # side by side, so that points do not overlap
            ax.plot([x * shift for x in xs], [statistics.median(t[cell][T]["mse"]) for T in xs],
                    "-", color=COLOR[cell], label=LABEL[cell] + " (median)")
            for T in xs:
                ax.plot([T * shift] * len(t[cell][T]["mse"]), t[cell][T]["mse"], "o", ms=4,
                        color=COLOR[cell], alpha=0.7)
        base = [b for d in t.values() for e in d.values() for b in e["base"]]
        ax.axhline(sum(base) / len(base), color="gray", ls="--", label="predict the mean")
        ax.axhline(below, color="gray", ls=":", label=f"solved ({below})")
        ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="test MSE",
               title=f"adding problem: test MSE of each run (dots)")
        ax.set_xticks(Ts)
        ax.set_xticklabels([str(T) for T in Ts])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        grid = [[(t[c][T]["solved"] / t[c][T]["n"]) if T in t[c] else float("nan") for T in Ts]
                for c in cells]
        mp.imshow(grid, cmap="RdYlGn", vmin=-0.4, vmax=1.4, aspect="auto")   # pale: text readable
        for i, c in enumerate(cells):
            for j, T in enumerate(Ts):
                e = t[c].get(T)
                txt = "not run" if e is None else f"{e['solved']}/{e['n']} solved" + (
                    f"\nstep {sum(e['steps']) / len(e['steps']):.0f}" if e["steps"] else
                    f"\nMSE {sum(e['mse']) / len(e['mse']):.3f}")
                mp.text(j, i, txt, ha="center", va="center", fontsize=8)
        mp.set_xticks(range(len(Ts)))
        mp.set_xticklabels([f"T={T}" for T in Ts])
        mp.set_yticks(range(len(cells)))
        mp.set_yticklabels([f"{LABEL[c]} (lr {meta['lrs'].get(c, float('nan')):g})"
                            for c in cells])
        mp.set_title(f"solved (test MSE < {below}) within {p['steps']} steps")
        fig.tight_layout()
        written.append(_save(fig, folder, "study_adding.png", plt))

        # learning curves: validation MSE against step, one panel per T
        fig, axes = plt.subplots(1, len(Ts), figsize=(3.4 * len(Ts), 3.4), sharey=True,
                                 squeeze=False)
        for j, T in enumerate(Ts):
            a = axes[0][j]
            for r in results:
                if r["name"].startswith(f"adding-T{T}-") and "error" not in r:
                    cell = _cell(r)
                    seed = r["config"]["seed"]
                    pts = [(s, v) for s, v, _ in r["curve"] if v is not None]
                    a.plot([0] + [s for s, _ in pts], [r["baseline"]] + [v for _, v in pts],
                           color=COLOR[cell], ls=("-", "--", ":", "-.")[seed % 4], lw=1.2,
                           label=LABEL[cell] if seed == 0 else None)
            a.axhline(below, color="gray", ls=":")
            a.set(yscale="log", xlabel="optimizer step", title=f"T = {T}")
            a.grid(alpha=0.3)
        axes[0][0].set_ylabel("validation MSE")
        axes[0][0].legend(fontsize=7)
        fig.suptitle("validation MSE at the end of every epoch, one line per run (line style: "
                     "seed); a run ends once solved",
                     fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, folder, "study_curves.png", plt))

    imdb = best_imdb(results)
    if imdb:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        bars = ax.bar([LABEL[_cell(r)] for r in imdb], [r["test"] for r in imdb],
                      color=[COLOR[_cell(r)] for r in imdb])
        for b, r in zip(bars, imdb):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(),
                    f"{r['test']:.3f}\nlr {r['config']['lr']:g}", ha="center", va="bottom",
                    fontsize=8)
        ax.axhline(imdb[0]["baseline"], color="gray", ls="--")
        ax.set(ylabel="test accuracy", ylim=(0.4, 1.0),
               title=f"IMDB, {p['imdb_train']} reviews, {p['imdb_epochs']} epochs")
        fig.tight_layout()
        written.append(_save(fig, folder, "study_imdb.png", plt))
    return written


def _save(fig, folder, name, plt):
    path = os.path.join(folder, name)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
