"""GRU vs LSTM vs minGRU at a matched hidden size and a matched training budget.

Each cell is trained with the library's trainer (``gruengine.train.train``) on the adding
problem at several lengths T and on IMDB sentiment, one run per subprocess so that the peak
memory of a run is its own. Recorded per run: the test metric (MSE or accuracy), training
wall time, training throughput (tokens/s), parameter count, peak resident memory (maxrss of
the run's process) and the peak of NumPy/Python allocations during training (tracemalloc).

    python benchmarks/study_cells.py --quick                      # ~1 minute: proves it works
    NUMBA_NUM_THREADS=2 python benchmarks/study_cells.py           # the full study, ~10-15 min
    python benchmarks/study_cells.py --imdb-train 2000 --adding-T 50,100 --out runs/study_small

Writes OUT/results.json (every run and the machine), OUT/results.md (a markdown table) and
OUT/study_cells.png (needs matplotlib). A finished run (OUT/runs/<name>/result.json with the
same configuration) is reused when the study is run again; --force retrains everything.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

CELLS = ("gru", "lstm", "mingru")
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IMDB = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data",
                                             "aclImdb_labeled.tar.gz"))

# the full study: an estimated ~10 minutes on 2 idle cores (docs/study.md explains the estimate)
FULL = {"adding_T": [50, 100, 200], "adding_train": 6000, "adding_test": 1000, "adding_epochs": 8,
        "imdb_train": 5000, "imdb_test": 5000, "imdb_epochs": 2, "max_len": 200, "hidden": 64,
        "embed": 64}
QUICK = {"adding_T": [25], "adding_train": 1000, "adding_test": 200, "adding_epochs": 3,
         "imdb_train": 400, "imdb_test": 400, "imdb_epochs": 1, "max_len": 40, "hidden": 16,
         "embed": 16}


def _warmup(n_train, epochs, batch=64, val_fraction=0.1):
    # 50 warm-up steps, or a tenth of a short run
    steps = -(-int(n_train * (1 - val_fraction)) // batch) * epochs
    return min(50, steps // 10)


def run_configs(p, imdb_dir=None):
    """(name, train config) for every run of the study, cells innermost. ``imdb_dir``: the
    IMDB subset as a folder of train.tsv / test.tsv (see ``imdb_subset``)."""
    out = []
    common = {"hidden_size": p["hidden"], "num_layers": 1, "seed": p["seed"], "patience": 0,
              "dtype": "float32", "device": "cpu", "batch_size": 64, "pooling": "last",
              "val_fraction": 0.1}
    for T in p["adding_T"]:
        for cell in p["cells"]:
            out.append((f"adding-T{T}-{cell}", dict(
                common, task="adding", cell=cell, seq_len=T, n_train=p["adding_train"],
                n_test=p["adding_test"], epochs=p["adding_epochs"], lr=3e-3, batch_size=32,
                warmup=_warmup(p["adding_train"], p["adding_epochs"]))))
    if imdb_dir:
        for cell in p["cells"]:
            out.append((f"imdb-{cell}", dict(
                common, task="text", data=imdb_dir, cell=cell, epochs=p["imdb_epochs"],
                max_len=p["max_len"], truncate="tail", vocab_size=20000, min_count=2,
                embed_dim=p["embed"], lr=3e-3, warmup=_warmup(p["imdb_train"], p["imdb_epochs"]))))
    return out


def imdb_subset(path, n_train, n_test, out):
    """Read ``n_train`` / ``n_test`` IMDB reviews once (half per class) and write them as
    OUT/data/imdb-<n_train>-<n_test>/{train,test}.tsv, so that each run reads a small file
    instead of streaming the archive again. Returns the folder."""
    folder = os.path.join(out, "data", f"imdb-{n_train}-{n_test}")
    if all(os.path.exists(os.path.join(folder, f"{s}.tsv")) for s in ("train", "test")):
        return folder
    from gruengine.data.imdb import read_imdb, CLASSES
    splits = read_imdb(path, n_train=n_train, n_test=n_test)
    os.makedirs(folder, exist_ok=True)
    for split, (texts, labels) in splits.items():
        tmp = os.path.join(folder, f".{split}.tsv.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for text, label in zip(texts, labels.tolist()):
                f.write(CLASSES[label] + "\t" + " ".join(text.split()) + "\n")
        os.replace(tmp, os.path.join(folder, f"{split}.tsv"))
    return folder


# ---------------------------------------------------------------------------------- one run
def child(config_json, run_dir):
    """Train one configuration in this process and print one JSON line of measurements."""
    import tracemalloc
    from gruengine.rundir import read_metrics
    from gruengine.train import train
    config = json.loads(config_json)
    tracemalloc.start()
    t0 = time.perf_counter()
    summary = train(config, run_dir, quiet=True)
    wall = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    epochs = [r for r in read_metrics(run_dir) if r.get("event") == "epoch"]
    tok_s = [r["tokens_per_s"] for r in epochs if r.get("tokens_per_s")]
    # the first epoch also loads/compiles the kernels: report the later epochs when there are
    steady = tok_s[1:] or tok_s
    from gruengine.inference import load_model
    model, _ = load_model(os.path.join(run_dir, "best.npz"))
    n_params = int(model.params.size)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss       # KiB on Linux
    res = {"metric": summary["metric"], "test": summary["test"][summary["metric"]],
           "test_loss": summary["test"]["loss"], "baseline": summary["baseline"],
           "epochs": summary["epochs"], "steps": summary["steps"], "wall_s": wall,
           "train_elapsed_s": summary["elapsed"], "tokens_per_s": sorted(steady)[len(steady) // 2],
           "params": n_params, "peak_rss_mb": rss / 1024, "peak_traced_mb": traced_peak / 2**20}
    print("RESULT " + json.dumps(res), flush=True)


def run_one(name, config, out, force):
    run_dir = os.path.join(out, "runs", name)
    done = os.path.join(run_dir, "result.json")
    if not force and os.path.exists(done):
        with open(done) as f:
            prev = json.load(f)
        if prev.get("config") == config:
            print(f"{name}: reused {done}", flush=True)
            return prev
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child",
                           json.dumps(config), run_dir], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"{name}: FAILED ({tail[0]})", flush=True)
        return {"name": name, "config": config, "error": tail[0]}
    res = dict(json.loads(lines[-1][len("RESULT "):]), name=name, config=config,
               process_s=time.perf_counter() - t0)
    with open(done, "w") as f:
        json.dump(res, f, indent=1)
    print(f"{name}: test {res['metric']} {res['test']:.4g}, train {res['wall_s']:.0f} s, "
          f"{res['tokens_per_s']:.0f} tok/s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    return res


# ---------------------------------------------------------------------------------- reports
def markdown(results, meta):
    head = ("| task | T / max_len | cell | params | test metric | predict-mean / majority "
            "| run time (s) | train tokens/s | peak RSS (MB) | peak traced (MB) |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for r in results:
        c = r["config"]
        length = c.get("seq_len") or c.get("max_len")
        task = "imdb" if c["task"] == "text" else c["task"]
        if "error" in r:
            rows.append(f"| {task} | {length} | {c['cell']} | | failed: {r['error']} "
                        f"| | | | | |")
            continue
        base = r["baseline"].get(r["metric"])
        rows.append(f"| {task} | {length} | {c['cell']} | {r['params']} "
                    f"| {r['metric']} {r['test']:.4f} | {base:.4f} | {r['wall_s']:.1f} "
                    f"| {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} "
                    f"| {r['peak_traced_mb']:.1f} |")
    note = (f"\n{meta['mode']} run, {meta['date']}, {meta['machine']}, "
            f"NUMBA_NUM_THREADS={meta['numba_threads']}, hidden size {meta['params']['hidden']}; "
            f"command: `{meta['command']}`\n")
    return head + "\n".join(rows) + "\n" + note


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no plot (pip install 'gruengine[plot]')")
        return None
    ok = [r for r in results if "error" not in r]
    adding = [r for r in ok if r["config"]["task"] == "adding"]
    imdb = [r for r in ok if r["config"]["task"] == "text"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for cell in CELLS:
        rs = sorted((r for r in adding if r["config"]["cell"] == cell),
                    key=lambda r: r["config"]["seq_len"])
        if rs:
            Ts = [r["config"]["seq_len"] for r in rs]
            axes[0].plot(Ts, [r["test"] for r in rs], "-o", label=cell)
            axes[1].plot(Ts, [r["tokens_per_s"] for r in rs], "-o", label=cell)
    if adding:
        axes[0].axhline(adding[0]["baseline"]["mse"], color="gray", ls="--", label="predict mean")
    axes[0].set(xlabel="T", ylabel="test MSE", title="adding problem", yscale="log")
    axes[1].set(xlabel="T", ylabel="training tokens/s", title="adding: throughput")
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if imdb:
        names = [r["config"]["cell"] for r in imdb]
        bars = axes[2].bar(names, [r["test"] for r in imdb], color=["C0", "C1", "C2"][:len(imdb)])
        for b, r in zip(bars, imdb):
            axes[2].text(b.get_x() + b.get_width() / 2, b.get_height(),
                         f"{r['test']:.3f}\n{r['wall_s']:.0f} s", ha="center", va="bottom",
                         fontsize=8)
        axes[2].set(ylabel="test accuracy", title="IMDB", ylim=(0.4, 1.0))
        axes[2].axhline(imdb[0]["baseline"]["acc"], color="gray", ls="--")
    else:
        axes[2].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: about one minute")
    ap.add_argument("--out", default=None, help="output folder [runs/study_cells(_quick)]")
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells")
    ap.add_argument("--adding-T", default=None, help="comma-separated lengths [50,100,200]")
    ap.add_argument("--adding-train", type=int, default=None, help="adding training examples")
    ap.add_argument("--adding-epochs", type=int, default=None)
    ap.add_argument("--imdb", default=DEFAULT_IMDB,
                    help="IMDB archive or folder; 'none' skips IMDB [%(default)s]")
    ap.add_argument("--imdb-train", type=int, default=None, help="training reviews [5000]")
    ap.add_argument("--imdb-test", type=int, default=None, help="test reviews [5000]")
    ap.add_argument("--imdb-epochs", type=int, default=None)
    ap.add_argument("--max-len", type=int, default=None, help="IMDB tokens kept (the last ones)")
    ap.add_argument("--hidden", type=int, default=None, help="hidden size of every cell [64]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="retrain runs that are already done")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        return child(*a._child)
    p = dict(QUICK if a.quick else FULL)
    p["cells"] = [c.strip() for c in a.cells.split(",") if c.strip()]
    bad = sorted(set(p["cells"]) - set(CELLS))
    if bad or not p["cells"]:
        ap.error(f"--cells: expected some of {','.join(CELLS)}, got {a.cells!r}")
    if a.adding_T is not None:
        try:
            p["adding_T"] = [int(t) for t in a.adding_T.split(",") if t.strip()]
        except ValueError:
            ap.error(f"--adding-T: expected comma-separated integers, got {a.adding_T!r}")
    for key in ("adding_train", "adding_epochs", "imdb_train", "imdb_test", "imdb_epochs",
                "max_len", "hidden"):
        v = getattr(a, key)
        if v is not None:
            if v < 1:
                ap.error(f"--{key.replace('_', '-')}: expected an integer >= 1, got {v}")
            p[key] = v
    p["seed"] = a.seed
    p["imdb"] = None if a.imdb.lower() == "none" else a.imdb
    if p["imdb"] and not os.path.exists(p["imdb"]):
        print(f"IMDB not found at {p['imdb']}: skipping it (pass --imdb PATH)", flush=True)
        p["imdb"] = None
    out = a.out or os.path.join("runs", "study_cells_quick" if a.quick else "study_cells")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    imdb_dir = None
    if p["imdb"]:
        print(f"reading {p['imdb_train']} + {p['imdb_test']} IMDB reviews from {p['imdb']} ...",
              flush=True)
        imdb_dir = imdb_subset(p["imdb"], p["imdb_train"], p["imdb_test"], out)
    results = [run_one(name, cfg, out, a.force) for name, cfg in run_configs(p, imdb_dir)]
    meta = {"mode": "quick" if a.quick else "full", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                          time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"Python {platform.python_version()}",
            "numba_threads": os.environ.get("NUMBA_NUM_THREADS", "default"),
            "params": {k: v for k, v in p.items() if k != "imdb"}, "imdb": p["imdb"],
            "command": " ".join(["python", "benchmarks/study_cells.py"] + sys.argv[1:]),
            "total_s": time.perf_counter() - t0}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(results, meta))
    png = plot(results, os.path.join(out, "study_cells.png"))
    print(f"done in {meta['total_s']:.0f} s: {out}/results.json, {out}/results.md"
          + (f", {png}" if png else ""))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
