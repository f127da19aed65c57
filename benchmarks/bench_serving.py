"""Serving latency per review: an exported model in onnxruntime vs gruengine's own predict path.

    python benchmarks/bench_serving.py --ckpt runs/imdb/best.npz --data aclImdb_labeled.tar.gz

Three ways to classify a review, each timed in a process of its own (two libraries' thread
pools in one process disturb each other), the processes alternated ``--rounds`` times, medians
kept:

    onnxruntime      the graph of ``gruengine export`` in an InferenceSession made once; the
                     text is tokenized with the tokenizer JSON in plain Python (docs/serving.md)
    gruengine        ``load_model`` once, then what ``predict_texts`` does per call: encode,
                     forward, softmax
    predict_texts    ``gruengine.inference.predict_texts(ckpt, texts)``, the library path of
                     ``gruengine predict``: it loads the checkpoint on every call

Columns: the one-off load, the latency of one review at a time (median and 90th percentile
over ``--n`` test reviews, tokenization included) and the cost per review in batches of
``--batch`` (reviews sorted by length, as predict_texts batches them). Warm-up calls come
first (Numba's JIT and onnxruntime's first run are not timed). The first round also checks
that every path gives the same probabilities (max |difference| column). Prints a markdown
table; ``--json FILE`` keeps the numbers.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gruengine  # noqa: E402,F401  (before NumPy, as `gruengine predict` imports it)
import numpy as np  # noqa: E402

PATHS = ("onnxruntime", "gruengine", "predict_texts")


def read_reviews(a):
    if a.texts:
        with open(a.texts, encoding="utf-8") as f:
            texts = [ln.rstrip("\n") for ln in f if ln.strip()]
        return texts[:a.n]
    from gruengine.data.imdb import read_imdb
    texts, _ = read_imdb(a.data, n_train=2, n_test=a.n)["test"]
    rng = np.random.default_rng(0)                  # neg and pos mixed, not sorted by class
    return [texts[i] for i in rng.permutation(len(texts))]


def encode(spec, stoi, texts):
    """The tokenizer JSON applied in plain Python: what a server without gruengine runs."""
    rows = []
    for text in texts:
        toks = re.findall(spec["token_pattern"], re.sub(spec["break_pattern"], " ", text).lower())
        ids = [stoi.get(t, spec["unk_id"]) for t in toks]
        if spec["max_len"] and len(ids) > spec["max_len"]:
            ids = ids[:spec["max_len"]] if spec["truncate"] == "head" else ids[-spec["max_len"]:]
        rows.append(ids or [spec["unk_id"]])
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.zeros((len(rows), lengths.max()), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, lengths


def make_predictor(path, a):
    """(load seconds, predict(texts) -> probabilities (n, C)) for one path."""
    t0 = time.perf_counter()
    if path == "onnxruntime":
        import onnxruntime as ort
        with open(gruengine_tokenizer(a.onnx), encoding="utf-8") as f:
            spec = json.load(f)
        stoi = {t: i for i, t in enumerate(spec["tokens"])}
        sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])

        def predict(texts):
            ids, lengths = encode(spec, stoi, texts)
            return sess.run(None, {"ids": ids, "lengths": lengths})[0]
    elif path == "gruengine":
        from gruengine.data.text import encode_texts
        from gruengine.inference import load_model, vocab_from_meta
        model, meta = load_model(a.ckpt, device="cpu")
        vocab, tc = vocab_from_meta(meta), meta.get("train_config", {})

        def predict(texts):
            ids, lengths = encode_texts(texts, vocab, tc.get("max_len"), tc.get("truncate", "head"))
            return model.predict_proba(model.forward(ids, lengths))
    else:
        from gruengine.inference import predict_texts

        def predict(texts):
            res = predict_texts(a.ckpt, texts, batch_size=a.batch, device="cpu")
            return np.array([list(r["probs"].values()) for r in res])
    return time.perf_counter() - t0, predict


def gruengine_tokenizer(onnx_path):
    from gruengine.onnx import tokenizer_path
    return tokenizer_path(onnx_path)


def worker(a):
    texts = read_reviews(a)
    load_s, predict = make_predictor(a.worker, a)
    for t in texts[:3]:
        predict([t])                                 # warm-up: JIT, first-run allocations
    one = []
    probs = np.zeros((len(texts), 0))
    single = texts[:a.n_single] if a.worker == "predict_texts" else texts
    for k, t in enumerate(single):
        t0 = time.perf_counter()
        p = predict([t])
        one.append(time.perf_counter() - t0)
        if k == 0:
            probs = np.zeros((len(texts), p.shape[1]))
        probs[k] = p[0]
    lengths = np.array([len(t) for t in texts])
    order = np.argsort(-lengths, kind="stable")       # long first, as predict_texts batches
    t0 = time.perf_counter()
    for s in range(0, len(texts), a.batch):
        idx = order[s:s + a.batch]
        predict([texts[i] for i in idx])
    batch_s = time.perf_counter() - t0
    print(json.dumps({"path": a.worker, "load_s": load_s, "one_ms": [1e3 * x for x in one],
                      "batch_ms_per_review": 1e3 * batch_s / len(texts),
                      "probs": probs[:len(single)].tolist(), "n": len(texts)}))


def run_worker(path, a):
    args = [sys.executable, os.path.abspath(__file__), "--worker", path, "--ckpt", a.ckpt,
            "--onnx", a.onnx, "--n", str(a.n), "--batch", str(a.batch),
            "--n-single", str(a.n_single)]
    args += ["--texts", a.texts] if a.texts else ["--data", a.data]
    r = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"worker {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True,
                   help="a text checkpoint (.npz), e.g. runs/imdb/best.npz")
    p.add_argument("--onnx", help="its export [default: exported into a temporary folder]")
    p.add_argument("--data", help="the IMDB archive or folder (test reviews are used)")
    p.add_argument("--texts", help="instead of --data: a file with one review per line")
    p.add_argument("--n", type=int, default=200, help="reviews timed one at a time and in batches")
    p.add_argument("--n-single", type=int, default=40,
                   help="predict_texts reloads the checkpoint per call: time it on this many")
    p.add_argument("--batch", type=int, default=256, help="reviews per batch in the batch column")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the three processes")
    p.add_argument("--json", help="write the numbers to this file")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if not a.data and not a.texts:
        p.error("give --data (the IMDB archive) or --texts FILE")
    if a.worker:
        return worker(a)
    tmp = None
    if not a.onnx:
        from gruengine.onnx import export_checkpoint
        tmp = tempfile.mkdtemp(prefix="bench_serving.")
        a.onnx = os.path.join(tmp, "model.onnx")
        export_checkpoint(a.ckpt, a.onnx)
    runs = {k: [] for k in PATHS}
    for r in range(a.rounds):
        for path in (PATHS if r % 2 == 0 else PATHS[::-1]):
            runs[path].append(run_worker(path, a))
    first = {k: np.array(v[0]["probs"]) for k, v in runs.items()}
    m = min(len(v) for v in first.values())
    ref = first["gruengine"][:m]
    rows = []
    for path in PATHS:
        one = [np.array(x["one_ms"]) for x in runs[path]]
        rows.append({"path": path,
                     "load_s": float(np.median([x["load_s"] for x in runs[path]])),
                     "median_ms": float(np.median([np.median(o) for o in one])),
                     "p90_ms": float(np.median([np.percentile(o, 90) for o in one])),
                     "batch_ms_per_review": float(np.median([x["batch_ms_per_review"]
                                                             for x in runs[path]])),
                     "max_abs_diff": float(np.abs(first[path][:m] - ref).max()),
                     "timed_one_at_a_time": len(one[0])})
    print(table(rows, a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "machine": machine(), "args": vars(a)}, f, indent=1)


def machine():
    import onnxruntime
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "numba_threads": os.environ.get("NUMBA_NUM_THREADS", "default"),
            "onnxruntime": onnxruntime.__version__, "gruengine": gruengine.__version__}


def table(rows, a):
    names = {"onnxruntime": "onnxruntime (session made once)",
             "gruengine": "gruengine, model loaded once",
             "predict_texts": "gruengine predict_texts (loads per call)"}
    m = machine()
    out = [f"{a.n} reviews, batches of {a.batch}, {a.rounds} rounds; {m['cpus']} CPUs, "
           f"NUMBA_NUM_THREADS={m['numba_threads']}, onnxruntime {m['onnxruntime']}",
           "",
           "| path | load (s) | one review: median (ms) | p90 (ms) | "
           f"in batches of {a.batch} (ms/review) | max abs diff of p |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        load = "in every call" if r["path"] == "predict_texts" else f"{r['load_s']:.2f}"
        out.append(f"| {names[r['path']]} | {load} | {r['median_ms']:.2f} | "
                   f"{r['p90_ms']:.2f} | {r['batch_ms_per_review']:.3f} | "
                   f"{r['max_abs_diff']:.1e} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
