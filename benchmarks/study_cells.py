"""GRU vs LSTM vs minGRU on the adding problem (and IMDB), each cell at its own learning rate.

The protocol (docs/study.md):

1. **sweep**: every cell at six half-decade learning rates (1e-3 ... 0.3) on the adding
   problem at T = ``sweep_T`` with the budget of the main runs; the lr that first reaches
   validation MSE < ``SOLVED`` (ties: the lowest validation MSE) is that cell's lr for
   everything after.
2. **adding**: every cell at its lr, T in ``--adding-T``, seeds ``--seeds``, one budget of
   ``--steps`` optimizer steps for all; a run stops early once its validation MSE is below
   ``SOLVED`` (checked at the end of each epoch, the same rule for every cell).
3. **long**: T in ``--long-T`` for the cells ``--long-cells`` (the same budget and rule).
4. **imdb**: the cells on a small IMDB subset, each at its lr from the adding sweep and at the
   lrs of ``imdb_lrs``; the best validation accuracy picks a cell's IMDB result.

Cells: ``gru``, ``lstm`` (PyTorch's initialisation), ``lstm-fb1`` (forget-gate bias 1,
Jozefowicz et al. 2015), ``mingru``. Each run is one subprocess (its own memory and
threads); ``--jobs`` runs that many at once. A finished run (OUT/runs/<name>/result.json with
the same configuration) is reused, so the study can be stopped and started again.

    python benchmarks/study_cells.py --quick                   # about a minute: proves it works
    python benchmarks/study_cells.py --jobs 2 --phases sweep,adding
    python benchmarks/study_cells.py --jobs 2 --phases long,imdb --long-T 1000
    python benchmarks/study_cells.py --phases report --img docs/img   # tables and plots only

Writes OUT/results.json (every run and the machine), OUT/results.md and the plots.
"""
import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import study_report  # noqa: E402  (tables and plots)

# the compared models: configuration keys over the common ones
CELLS = {"gru": {"cell": "gru"}, "lstm": {"cell": "lstm"},
         "lstm-fb1": {"cell": "lstm", "forget_bias": 1.0}, "mingru": {"cell": "mingru"},
         "gru-h37": {"cell": "gru", "hidden_size": 37}}
# a model trained at another one's lr instead of sweeping its own: the GRU with the LSTM's
# parameter count (H=37 against the LSTM's H=32 on the adding problem's 2 inputs: 4,589 vs 4,641)
LR_FROM = {"gru-h37": "gru"}
SOLVED = 0.01           # test / validation MSE below which the adding problem counts as solved
# minGRU's forward scan: the same recurrence as the default "log", ~7x cheaper per element on
# one core, equal to float32 rounding (gruengine/kernels/cpu/mingru.py)
MINGRU_SCAN = "linear"
DEFAULT_IMDB = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data",
                                             "aclImdb_labeled.tar.gz"))
FULL = {"hidden": 32, "batch": 32, "lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
        "sweep_T": 100,
        "sweep_steps": 3000, "steps": 3000, "adding_T": [100, 200, 400], "long_T": [1000],
        "long_cells": list(CELLS), "seeds": [0, 1, 2], "fit": 6400, "val": 800,
        "test": 1000, "imdb_train": 5000, "imdb_test": 5000, "imdb_epochs": 2, "max_len": 200,
        "imdb_lrs": [3e-3, 1e-2, 3e-2, 1e-1],
        "embed": 64}
QUICK = dict(FULL, hidden=8, lrs=[3e-3, 1e-2], sweep_T=20, sweep_steps=60, steps=120,
             adding_T=[20, 40], long_T=[60], long_cells=["gru", "lstm-fb1"], seeds=[0], fit=640,
             val=160, test=200, imdb_train=300, imdb_test=300, imdb_epochs=1, max_len=40, embed=16,
             imdb_lrs=[1e-2])


def adding_config(p, cell, T, lr, seed, steps):
    """One adding-problem run: ``fit`` training and ``val`` validation sequences, so that an
    epoch is fit / batch steps; ``steps`` is rounded up to whole epochs."""
    per_epoch = -(-p["fit"] // p["batch"])
    c = dict(task="adding", seq_len=T, n_train=p["fit"] + p["val"], n_test=p["test"],
             val_fraction=p["val"] / (p["fit"] + p["val"]), hidden_size=p["hidden"],
             num_layers=1, batch_size=p["batch"], lr=lr, epochs=-(-steps // per_epoch),
             warmup=min(100, steps // 10), patience=0, seed=seed, dtype="float32",
             device="cpu", pooling="last", bucket=50)
    return dict(c, **CELLS[cell])


def imdb_config(p, cell, lr, data):
    c = dict(task="text", data=data, hidden_size=p["hidden"], num_layers=1,
             epochs=p["imdb_epochs"], max_len=p["max_len"], truncate="tail",
             vocab_size=20000, min_count=2, embed_dim=p["embed"], lr=lr, batch_size=64,
             val_fraction=0.1, patience=0, warmup=50, seed=0, dtype="float32",
             device="cpu", pooling="last")
    return dict(c, **CELLS[cell])


def imdb_subset(path, n_train, n_test, out):
    """Read ``n_train`` / ``n_test`` IMDB reviews once (half per class) into
    OUT/data/imdb-<n_train>-<n_test>/{train,test}.tsv; returns the folder."""
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
def child(config_json, run_dir, stop_below):
    """Train one configuration in this process; print one JSON line of measurements."""
    from gruengine.inference import load_model
    from gruengine.kernels.cpu import mingru
    from gruengine.rundir import read_metrics
    from gruengine.train import train
    mingru.SCAN = MINGRU_SCAN
    config = json.loads(config_json)
    stop_below = float(stop_below)

    def solved(trainer, record):
        # the budget check of the trainer's loop: epochs == epoch ends the run after this epoch
        if record.get("val_mse", float("inf")) < stop_below:
            trainer.config["epochs"] = trainer.epoch

    t0 = time.perf_counter()
    summary = train(config, run_dir, quiet=True,
                    hooks={"epoch": solved} if stop_below > 0 else None)
    wall = time.perf_counter() - t0
    records = read_metrics(run_dir)
    epochs = [r for r in records if r.get("event") == "epoch"]
    tok_s = sorted(r["tokens_per_s"] for r in epochs[1:] or epochs if r.get("tokens_per_s"))
    metric = summary["metric"]
    curve = [[r["step"], r.get(f"val_{metric}"), r.get("train_loss")] for r in epochs]
    model, _ = load_model(os.path.join(run_dir, "best.npz"))
    res = {"metric": metric, "test": summary["test"][metric], "test_loss": summary["test"]["loss"],
           "baseline": summary["baseline"][metric], "best_val": summary["best_val"],
           "epochs": summary["epochs"], "steps": summary["steps"], "wall_s": wall,
           "tokens_per_s": tok_s[len(tok_s) // 2] if tok_s else None,
           "params": int(model.params.size), "curve": curve,
           "load_avg": os.getloadavg()[0], "mingru_scan": mingru.SCAN}
    print("RESULT " + json.dumps(res), flush=True)


def run_one(name, config, out, force, threads, stop_below=0.0, jobs=1):
    run_dir = os.path.join(out, "runs", name)
    done = os.path.join(run_dir, "result.json")
    if not force and os.path.exists(done):
        with open(done) as f:
            prev = json.load(f)
        if prev.get("config") == config:
            return prev
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child",
                           json.dumps(config), run_dir, str(stop_below)],
                          capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"{name}: FAILED ({tail[0]})", flush=True)
        return {"name": name, "config": config, "error": tail[0]}
    res = dict(json.loads(lines[-1][len("RESULT "):]), name=name, config=config,
               process_s=time.perf_counter() - t0, load_avg_start=load0, threads=threads,
               jobs=jobs)
    with open(done, "w") as f:
        json.dump(res, f, indent=1)
    print(f"{time.strftime('%H:%M:%S')} {name}: test {res['metric']} {res['test']:.4g} after "
          f"{res['steps']} steps, {res['wall_s']:.0f} s, load {load0:.1f}", flush=True)
    return res


def run_all(jobs, out, a, threads, stop_below=0.0):
    """[(name, config)] -> results in the same order, ``a.jobs`` at a time."""
    with cf.ThreadPoolExecutor(max_workers=a.jobs) as ex:
        futs = [ex.submit(run_one, n, c, out, a.force, threads, stop_below, a.jobs)
                for n, c in jobs]
        return [f.result() for f in futs]


def phase_runs(p, phase, lrs=None, imdb_dir=None):
    """[(name, train config)] of one phase: 'sweep' (every swept cell at every lr), 'adding'
    and 'long' (every cell at its lr in ``lrs``, every seed and T), 'imdb' (the swept cells
    on the subset folder ``imdb_dir``, at their adding lr and every lr of ``imdb_lrs``)."""
    swept = [c for c in p["cells"] if c not in LR_FROM]
    if phase == "sweep":
        return [(f"sweep-{cell}-lr{lr:g}", adding_config(p, cell, p["sweep_T"], lr, 0,
                                                         p["sweep_steps"]))
                for lr in p["lrs"] for cell in swept]
    if phase in ("adding", "long"):
        Ts, cells = ((p["adding_T"], p["cells"]) if phase == "adding"
                     else (p["long_T"], [c for c in p["long_cells"] if c in p["cells"]]))
        return [(f"adding-T{T}-{cell}-s{seed}", adding_config(p, cell, T, lrs[cell], seed,
                                                             p["steps"]))
                for seed in p["seeds"] for T in Ts for cell in cells]
    if phase == "imdb":
        return [(f"imdb-{cell}-lr{lr:g}", imdb_config(p, cell, lr, imdb_dir)) for cell in swept
                for lr in sorted(set(p["imdb_lrs"]) | {lrs[cell]})]
    raise ValueError(f"phase: expected sweep, adding, long or imdb, got {phase!r}")


def best_lrs(p, out):
    """{cell: lr} from the sweep's result files: the lr whose run first reached validation MSE
    below ``SOLVED`` (fewest steps), ties and runs that never did by the lowest validation
    MSE. A cell of ``LR_FROM`` gets the lr of the cell it names."""
    best = {}
    for cell in (c for c in p["cells"] if c not in LR_FROM):
        found = []
        for lr in p["lrs"]:
            path = os.path.join(out, "runs", f"sweep-{cell}-lr{lr:g}", "result.json")
            if os.path.exists(path):
                with open(path) as f:
                    r = json.load(f)
                first = next((s for s, v, _ in r["curve"] if v is not None and v < SOLVED),
                             float("inf"))
                found.append((first, r["best_val"], lr))
        if found:
            best[cell] = min(found)[2]
    for cell, other in LR_FROM.items():
        if other in best:
            best[cell] = best[other]
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: about a minute")
    ap.add_argument("--out", default=None, help="output folder [runs/study_cells(_quick)]")
    ap.add_argument("--phases", default="sweep,adding,long,imdb,report",
                    help="comma-separated: sweep, adding, long, imdb, report [all]")
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells [all]")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds [0,1,2]")
    ap.add_argument("--lrs", default=None,
                    help="comma-separated learning rates of the sweep [0.001,...,0.3]")
    ap.add_argument("--adding-T", default=None, help="comma-separated lengths [100,200,400]")
    ap.add_argument("--long-T", default=None, help="comma-separated lengths [1000]")
    ap.add_argument("--long-cells", default=None, help="cells of the long phase [gru,lstm-fb1]")
    ap.add_argument("--steps", type=int, default=None, help="budget of every adding run [2000]")
    ap.add_argument("--sweep-steps", type=int, default=None, help="budget of a sweep run [800]")
    ap.add_argument("--hidden", type=int, default=None, help="hidden size of every cell [32]")
    ap.add_argument("--imdb", default=DEFAULT_IMDB,
                    help="IMDB archive or folder; 'none' skips IMDB [%(default)s]")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once [1]")
    ap.add_argument("--threads", type=int, default=None,
                    help="Numba threads per run [cores / jobs]")
    ap.add_argument("--img", default=None, help="also write the plots into this folder")
    ap.add_argument("--force", action="store_true", help="retrain runs that are already done")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        return child(*a._child)
    p = dict(QUICK if a.quick else FULL)

    def csv(text, conv, flag):
        try:
            return [conv(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError:
            ap.error(f"{flag}: expected comma-separated values, got {text!r}")

    p["cells"] = csv(a.cells, str, "--cells")
    if a.long_cells is not None:
        p["long_cells"] = csv(a.long_cells, str, "--long-cells")
    for cells, flag in ((p["cells"], "--cells"), (p["long_cells"], "--long-cells")):
        bad = sorted(set(cells) - set(CELLS))
        if bad:
            ap.error(f"{flag}: expected some of {','.join(CELLS)}, got {','.join(bad)}")
    for key, flag, conv in (("seeds", "--seeds", int), ("adding_T", "--adding-T", int),
                            ("long_T", "--long-T", int), ("lrs", "--lrs", float)):
        v = getattr(a, key)
        if v is not None:
            p[key] = csv(v, conv, flag)
    for key in ("steps", "sweep_steps", "hidden"):
        v = getattr(a, key)
        if v is not None:
            if v < 1:
                ap.error(f"--{key.replace('_', '-')}: expected an integer >= 1, got {v}")
            p[key] = v
    phases = csv(a.phases, str, "--phases")
    bad = sorted(set(phases) - {"sweep", "adding", "long", "imdb", "report"})
    if bad:
        ap.error(f"--phases: expected some of sweep,adding,long,imdb,report, got {','.join(bad)}")
    if a.jobs < 1:
        ap.error(f"--jobs: expected an integer >= 1, got {a.jobs}")
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    out = a.out or os.path.join("runs", "study_cells_quick" if a.quick else "study_cells")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()

    lrs = best_lrs(p, out) if "sweep" not in phases else {}
    for phase in ("sweep", "adding", "long", "imdb"):
        if phase not in phases:
            continue
        if phase == "sweep":
            run_all(phase_runs(p, phase), out, a, threads)
            lrs = best_lrs(p, out)
            print("lr per cell: " + ", ".join(f"{c} {lr:g}" for c, lr in lrs.items()), flush=True)
            continue
        missing = [c for c in p["cells"] if c not in lrs]
        if missing:
            sys.exit(f"{phase}: no sweep result for {missing}; run the sweep phase first")
        data = None
        if phase == "imdb":
            path = None if a.imdb.lower() == "none" else a.imdb
            if not (path and os.path.exists(path)):
                print(f"IMDB not found at {path}: skipped (pass --imdb PATH)", flush=True)
                continue
            data = imdb_subset(path, p["imdb_train"], p["imdb_test"], out)
        run_all(phase_runs(p, phase, lrs, data), out, a, threads,
                SOLVED if phase in ("adding", "long") else 0.0)

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"Python {platform.python_version()}",
            "jobs": a.jobs, "threads_per_run": threads, "params": p, "lrs": lrs,
            "solved_below": SOLVED, "phases": phases,
            "command": " ".join(["python", "benchmarks/study_cells.py"] + sys.argv[1:]),
            "this_invocation_s": time.perf_counter() - t0}
    results = study_report.collect(out)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)
    if "report" in phases:
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(study_report.markdown(results, meta))
        for folder in filter(None, (out, a.img)):
            study_report.plots(results, meta, folder)
    print(f"done in {time.perf_counter() - t0:.0f} s: {out}/results.json", flush=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
