"""``gruengine train``, ``gruengine evaluate`` and ``gruengine predict``: parse and print only.

Everything numeric happens in ``gruengine.train`` and ``gruengine.inference``. Under an MPI
launcher (``mpiexec -n N gruengine ...``) the commands run on ``gruengine.distributed``'s
world: every rank computes, rank 0 prints (docs/distributed.md).
"""
import json
import os
import sys
import time

import click
from click.core import ParameterSource

from gruengine.data import guess_name

from .main import ByteSize, app
from .plot import require_matplotlib

# named task configs: data/configs/ of a source checkout (editable install), else the copy a
# regular install puts under <prefix>/share/gruengine/configs (setup.cfg data_files)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "data", "configs")
if not os.path.isdir(CONFIG_DIR):
    CONFIG_DIR = os.path.join(sys.prefix, "share", "gruengine", "configs")


def _default(key):
    from gruengine.config import DEFAULTS, TASK_DEFAULTS
    from gruengine.data import DEFAULT_TEST_FRACTION
    if key == "test_fraction":
        return f"[default: {DEFAULT_TEST_FRACTION} when --data is one file]"
    if key == "task":
        return "[default: guessed from --data, else adding]"
    if key == "data":
        return "[default: none; imdb: the download cache]"
    from gruengine.limits import fmt_bytes
    from gruengine.policy import AUTO_KEYS
    d = DEFAULTS[key]
    if key in AUTO_KEYS and d is None:
        return "[default: decided from the data, see the plan line]"
    extra = [f"{t}: {v[key]}" for t, v in TASK_DEFAULTS.items() if key in v and v[key] != d]
    text = "the loader's" if d is None else fmt_bytes(d) if key.endswith("_bytes") else str(d)
    return f"[default: {text}" + (f"; {', '.join(extra)}" if extra else "") + "]"


# (flag, config key, click type, help) -- every option defaults to None so that a config file
# or the library fills what the command line leaves out; ParameterSource tells what was given.
_OPTIONS = [
    ("--task", "task", click.Choice(["adding", "copy", "imdb", "npz", "text", "ucr"]),
     "dataset: synthetic adding/copy, IMDB reviews, or your own npz/text/ucr files"),
    ("--data", "data", click.Path(), "your data: one file, 'TRAIN,TEST', or a folder "
     "(formats above)"),
    ("--test-fraction", "test_fraction", click.FloatRange(0, 1, min_open=True, max_open=True),
     "share of a single --data file held out for testing (seeded, stratified by class)"),
    ("--seq-len", "seq_len", click.IntRange(1), "sequence length of the synthetic tasks"),
    ("--n-train", "n_train", click.IntRange(1), "number of training examples to use"),
    ("--n-test", "n_test", click.IntRange(1), "number of test examples to use"),
    ("--cell", "cell", click.Choice(["gru", "lstm", "mingru"]), "recurrent cell"),
    ("--hidden-size", "hidden_size", int, "hidden units per direction"),
    ("--num-layers", "num_layers", int, "stacked recurrent layers"),
    ("--dropout", "dropout", float, "dropout on the cell input, between layers and before the head"),
    ("--forget-bias", "forget_bias", float,
     "LSTM: added to the forget gate's bias at initialisation (1: Jozefowicz et al. 2015)"),
    ("--pooling", "pooling", click.Choice(["last", "mean", "max"]), "how a sequence becomes one vector"),
    ("--embed-dim", "embed_dim", int, "token embedding size (text tasks)"),
    ("--vocab-size", "vocab_size", int, "vocabulary size, '<pad>' and '<unk>' included (text tasks)"),
    ("--max-len", "max_len", int, "truncate texts to this many tokens"),
    ("--bigrams", "bigrams", click.IntRange(0),
     "text tasks: add this many word pairs to the vocabulary, those most lopsided across the "
     "classes, each read after its first word (0 = words only)"),
    ("--conv-channels", "conv_channels", click.IntRange(0),
     "convolutional front end before the recurrent stack: channels per block (0 = none)"),
    ("--conv-stride", "conv_stride", click.IntRange(1), "stride of the front end's first block"),
    ("--steps", "steps", click.IntRange(1),
     "budget of optimizer steps (rounded up to whole epochs); or give --epochs"),
    ("--time-budget", "time_budget", click.FloatRange(0),
     "wall-clock minutes at most: the run is shortened to fit after its second epoch "
     "(0 = no limit)"),
    ("--epochs", "epochs", int, "passes over the training data"),
    ("--batch-size", "batch_size", int, "sequences per step"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--weight-decay", "weight_decay", float, "weight decay (decoupled for adamw)"),
    ("--optimizer", "optimizer", click.Choice(["adam", "adamw", "sgd"]), "optimizer"),
    ("--clip", "clip", float, "clip the global gradient norm to this (0 = off)"),
    ("--schedule", "schedule", click.Choice(["cosine", "plateau", "none"]),
     "learning-rate schedule after the warm-up"),
    ("--warmup", "warmup", int, "linear warm-up steps"),
    ("--patience", "patience", int, "stop after this many epochs without validation gain (0 = off)"),
    ("--val-fraction", "val_fraction", float, "share of the training data held out for validation"),
    ("--seed", "seed", int, "seed of initialisation, shuffling and dropout"),
    ("--ensemble", "ensemble", click.IntRange(1, 64),
     "train this many models with different seeds and average their probabilities "
     "(1 = one model)"),
    ("--device", "device", click.Choice(["cpu", "cuda", "auto"]), "where the kernels run"),
    ("--dtype", "dtype", click.Choice(["float32", "float64"]), "floating-point type"),
    ("--max-text-bytes", "max_text_bytes", ByteSize(),
     "refuse a review, text line or series line larger than this (16M, 1G, ...)"),
    ("--max-data-bytes", "max_data_bytes", ByteSize(),
     "refuse data that would take more memory than this: text read, token ids, padded arrays"),
]


def _add_options(f):
    for flag, key, typ, text in reversed(_OPTIONS):
        f = click.option(flag, key, type=typ, default=None, help=f"{text} {_default(key)}")(f)
    return f


def load_config_file(name):
    """Read a run configuration: a TOML file, a run's config.json (or its folder), or the
    name of a TOML file in data/configs.

    Keys are the config keys (``hidden_size`` or ``hidden-size``), at the top level or in
    [data] / [model] / [train] tables.
    """
    import tomllib
    path = name
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        path = os.path.join(path, "config.json")          # a run folder: its configuration
    if not os.path.isfile(path):                           # a folder 'imdb' is not --config imdb
        named = os.path.join(CONFIG_DIR, name if name.endswith(".toml") else name + ".toml")
        if os.path.exists(named):
            path = named
        else:
            names = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".toml")) \
                if os.path.isdir(CONFIG_DIR) else []
            raise click.BadParameter(f"{name}: no such file, nor a named config "
                                     f"(named configs: {', '.join(names) or 'none'})",
                                     param_hint="--config")
    with open(path, "rb") as f:
        blob = f.read()
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.lower().endswith(".json") or text.lstrip()[:1] == "{":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); a config is TOML, or the "
                             f"config.json of a run") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object of config keys, got "
                             f"{type(raw).__name__}")
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e}); see data/configs/imdb.toml "
                             f"for the form") from None
    flat = {}
    for k, v in raw.items():
        if isinstance(v, dict) and k in ("data", "model", "train"):
            for k2, v2 in v.items():
                flat[k2.replace("-", "_")] = v2
        else:
            flat[k.replace("-", "_")] = v
    return flat


@app.command("train")
@_add_options
@click.option("--bidirectional/--unidirectional", "bidirectional", default=None,
              help=f"read each sequence in both directions {_default('bidirectional')}")
@click.option("--embed-skip/--no-embed-skip", "embed_skip", default=None,
              help=f"text tasks: the head also reads the mean of the token embeddings "
                   f"{_default('embed_skip')}")
@click.option("--conv-skip/--no-conv-skip", "conv_skip", default=None,
              help=f"the head also reads the front end, mean over time {_default('conv_skip')}")
@click.option("--series-norm/--no-series-norm", "series_norm", default=None,
              help=f"z-normalise each numeric series (its level and scale kept as channels) "
                   f"{_default('series_norm')}")
@click.option("--channel-norm/--no-channel-norm", "channel_norm", default=None,
              help=f"standardise each numeric channel with training statistics "
                   f"{_default('channel_norm')}")
@click.option("--augment/--no-augment", "augment", default=None,
              help=f"jitter, scale and slice numeric training series {_default('augment')}")
@click.option("--neighbours/--no-neighbours", "neighbours", default=None,
              help=f"classifiers: mix each prediction half and half with the label of the "
                   f"nearest training sequence in the model's feature space "
                   f"{_default('neighbours')}")
@click.option("--config", "config_file", metavar="FILE",
              help="TOML configuration (a path, or a name in data/configs such as "
                   "adding_t200 or imdb), or a run's config.json (or the run folder); "
                   "options given on the command line override it")
@click.option("--out", "out", type=click.Path(), help="run folder [default: runs/<task>-<time>]")
@click.option("--resume", "resume", type=click.Path(), metavar="RUN_DIR",
              help="continue the run in RUN_DIR from its last.npz (--epochs may extend it)")
@click.option("--overwrite", is_flag=True,
              help="replace the run in --out (its config, metrics and checkpoints are deleted "
                   "first); without it a folder holding a run is refused")
@click.option("--quiet", is_flag=True, help="no progress bars or per-epoch lines")
@click.option("--plot", "plot", is_flag=True, help="write learning curves (curves.png) at the end")
@click.pass_context
def train_cmd(ctx, config_file, out, resume, overwrite, quiet, plot, **flags):
    """Train a sequence model; writes config.json, metrics.jsonl, last.npz and best.npz
    (an ensemble, --ensemble K: best.npz of all K beside member-1/ ... member-K/).

    With no options it trains on the embedded adding problem (T=50, no download) and states
    whether it reached test MSE < 0.01 (predicting the mean scores about 0.167).

    Your own data: --data FILE (a share is held out for testing, --test-fraction),
    --data TRAIN,TEST, or a folder with train.* and test.*; --task follows from the file
    name (.tsv/.csv/.txt: text, .npz: npz, <Name>_TRAIN.ts: ucr).

    \b
    text: one example per line, a label and a text separated by a tab (.tsv)
    or a comma (.csv), in either order; a header row is detected:
      label<TAB>text
      pos<TAB>A moving, beautifully shot film.
      neg<TAB>Two hours I will never get back.
    npz: arrays X (N, T, F) or (N, T), y (N,) class ids, (N, K) floats or
    (N, T) per-step ids, optional lengths (N,) and classes (C,) names:
      X = rng.standard_normal((500, 40, 3)).astype("float32")
      y = (X[:, :, 0].sum(axis=1) > 0).astype("int64")
      np.savez("mine.npz", X=X, y=y)
    ucr: a UCR/UEA folder with <Name>_TRAIN.ts and <Name>_TEST.ts (.tsv, .txt):
      @problemName Mini
      @data
      0.1,0.5,0.9,0.4:up

    \b
    Examples:
      gruengine train
      gruengine train --config adding_t200 --out runs/adding200
      gruengine train --data reviews.tsv --max-len 256 --epochs 5
      gruengine train --data aclImdb_v1.tar.gz --config imdb --out runs/imdb
      gruengine train --config runs/imdb/config.json --lr 0.001 --out runs/imdb2
      gruengine train --resume runs/adding200 --epochs 20
    """
    from gruengine.train import make_trainer, resume_trainer
    world = _world()
    given = {k: v for k, v in flags.items()
             if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE,
                                                ParameterSource.ENVIRONMENT)}
    config = None
    with world.agreed():
        if plot:   # before any work: a missing extra should not cost a whole training
            require_matplotlib("--plot")
        if given.get("steps") is not None and given.get("epochs") is not None:
            raise click.UsageError("--steps and --epochs are both budgets; give one")
        if resume:
            if config_file:
                raise click.UsageError("--config and --resume exclude each other: a resumed "
                                       "run keeps its saved configuration")
            if out and os.path.abspath(out) != os.path.abspath(resume):
                raise click.UsageError("--out and --resume name different folders; a resumed "
                                       "run stays in its folder")
            if overwrite:
                raise click.UsageError("--overwrite and --resume exclude each other: a resumed "
                                       "run continues its folder")
        else:
            config = load_config_file(config_file) if config_file else {}
            config.update(given)
            if out is None:
                task = config.get("task") or (guess_name(config["data"]) if config.get("data")
                                              else "adding")
                out = os.path.join("runs", f"{task}-{time.strftime('%Y%m%d-%H%M%S')}")
    if resume:
        trainer = resume_trainer(resume, overrides=given, quiet=quiet, world=world)
    else:
        trainer = make_trainer(config, world.bcast(out), quiet=quiet, overwrite=overwrite,
                               world=world)
    if not quiet and world.rank == 0:
        c = trainer.config
        n = trainer.model.params.size
        k = c.get("ensemble") or 1
        ranks = (f", {world.size} ranks x {world.threads} thread"
                 f"{'s' if world.threads != 1 else ''}" if world.size > 1 else "")
        click.echo(f"run folder {trainer.out_dir}: task {c['task']}, {len(trainer.train_ds)} "
                   f"train / {0 if trainer.val_ds is None else len(trainer.val_ds)} val / "
                   f"{len(trainer.test_ds)} test, {c['cell']} {c['num_layers']}x"
                   f"{c['hidden_size']}{' bidirectional' if c['bidirectional'] else ''}, "
                   f"{f'an ensemble of {k} x ' if k > 1 else ''}{n:,} parameters, device "
                   f"{trainer.model.config.device}{ranks}", err=True)
        from gruengine.threads import busy_note
        note = busy_note()
        if note:
            click.echo(f"note: {note}", err=True)
    elif trainer.plan and trainer.step == 0 and world.rank == 0:
        click.echo(trainer.plan, err=True)      # the plan line, even when quiet
    try:
        summary = trainer.fit()
    except KeyboardInterrupt as e:
        if world.rank != 0 and getattr(e, "all_ranks", False):
            sys.exit(128 + e.signum)              # a stop every rank made: rank 0 says it
        # the trainer's own notice is not shown
        run = getattr(trainer, "member_run", trainer.run)  # an ensemble: the member's run
        if quiet and run.holds_run() and os.path.exists(run.last):
            click.echo(f"interrupted: resumable checkpoint in {run.last}; continue "
                       f"with: gruengine train --resume {trainer.out_dir}", err=True)
        raise
    if world.rank != 0:
        return
    _print_summary(summary)
    if plot:
        from .plot import write_plot
        click.echo(f"learning curves: {write_plot(summary['run_dir'])}")


def _world():
    # the MPI ranks under a launcher, else this process alone (mpi4py is not imported then)
    from gruengine.distributed import world
    return world()


def _print_summary(s):
    res, metric = s["test"], s["metric"]
    name = "MSE" if metric == "mse" else "accuracy"
    line = f"test {name} {res[metric]:.4g} (loss {res['loss']:.4g}, n={res['n']})"
    base = s["baseline"][metric]
    ref = ("predicting the training mean gives" if metric == "mse"
           else "the most frequent class gives")
    if "target" in s:
        op = "<" if metric == "mse" else ">="
        if not s["passed"]:
            op = ">=" if metric == "mse" else "<"
        line = (f"test {name} {res[metric]:.4g} {op} {s['target']:g} target: "
                f"{'PASS' if s['passed'] else 'FAIL'}")
    click.echo(f"{line} ({ref} {base:.4g})")
    if s.get("members"):
        each = [m[f"test_{metric}"] for m in s["members"]]
        click.echo(f"ensemble of {len(each)}: its members alone "
                   + ", ".join(f"{v:.4g}" for v in each)
                   + f"; {s['steps']} steps in all, {s['elapsed']:.1f} s; weights of all in "
                   f"{os.path.join(s['run_dir'], 'best.npz')}")
        return
    click.echo(f"{s['epochs']} epochs, {s['steps']} steps, {s['elapsed']:.1f} s; best epoch "
               f"{s['best_epoch']}; weights in {os.path.join(s['run_dir'], 'best.npz')}")


@app.command("evaluate")
@click.argument("checkpoint", type=click.Path(), metavar="CKPT")
@click.option("--data", type=click.Path(), help="data to test on [default: the run's own]")
@click.option("--task", type=click.Choice(["adding", "copy", "imdb", "npz", "text", "ucr"]),
              help="dataset kind of --data [default: the run's own]")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default=None,
              help="run on this device [default: the checkpoint's, cpu when no GPU]")
def evaluate_cmd(checkpoint, data, task, batch_size, as_json, quiet, device):
    """Evaluate a checkpoint (a .npz, or a run folder: its best.npz) on the test split of
    a dataset: the run's own unless --data / --task say otherwise.

    \b
    Examples:
      gruengine evaluate runs/adding200/best.npz
      gruengine evaluate runs/imdb/best.npz --data aclImdb_labeled.tar.gz
    """
    from gruengine.inference import evaluate_checkpoint
    world = _world()
    res = evaluate_checkpoint(checkpoint, data=data, task=task, batch_size=batch_size,
                              quiet=quiet, device=device, world=world)
    if world.rank != 0:
        return
    if as_json:
        click.echo(json.dumps(res))
        return
    name = "MSE" if res["metric"] == "mse" else "accuracy"
    click.echo(f"test {name} {res[res['metric']]:.4g} (loss {res['loss']:.4g}, n={res['n']})")


@app.command("predict")
@click.argument("checkpoint", type=click.Path(), metavar="CKPT")
@click.argument("texts", nargs=-1)
@click.option("--file", "file", type=click.Path(), help="one input text per line")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per input")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default=None,
              help="run on this device [default: the checkpoint's, cpu when no GPU]")
@click.option("--data", "data", type=click.Path(),
              help="numeric models: predict every series of this data's test split")
def predict_cmd(checkpoint, texts, file, as_json, device, data):
    """Classify texts with a checkpoint trained on text; prints label and probability.

    TEXT arguments, lines of --file, or lines of standard input when TEXT is '-'.
    A checkpoint trained on numeric series (ucr, npz) predicts the series of --data
    instead, one line per series (its index, label, probability), scaled as in training.

    \b
    Examples:
      gruengine predict runs/imdb/best.npz "A moving, beautifully shot film."
      gruengine predict runs/imdb/best.npz --file reviews.txt --json
      cat reviews.txt | gruengine predict runs/imdb/best.npz -
      gruengine predict runs/ucr/best.npz --data MySeries_TEST.ts
    """
    from gruengine.inference import predict_data, predict_texts
    world = _world()
    if data is not None:
        with world.agreed():
            if texts or file:
                raise click.UsageError("--data predicts numeric series; give it without TEXT "
                                       "or --file")
        results = predict_data(checkpoint, data, device=device, world=world)
        if world.rank != 0:
            return
        for i, r in enumerate(results):
            if as_json:
                click.echo(json.dumps({"index": i, **r}))
            elif "value" in r:
                click.echo(f"{i}\t" + "\t".join(f"{v:.6g}" for v in r["value"]))
            else:
                click.echo(f"{i}\t{r['label']}\t{r['probability']:.4f}")
        return
    inputs = None
    with world.agreed():
        if world.rank == 0:     # under MPI rank 0 reads the inputs (and has standard input)
            inputs = _read_inputs(texts, file)
    results = predict_texts(checkpoint, inputs, device=device, world=world)
    if world.rank != 0:
        return
    for text, r in zip(inputs, results):
        if as_json:
            click.echo(json.dumps({"text": text, **r}))
        elif "value" in r:
            click.echo("\t".join(f"{v:.6g}" for v in r["value"]) + f"\t{_clip(text)}")
        else:
            click.echo(f"{r['label']}\t{r['probability']:.4f}\t{_clip(text)}")


def _read_inputs(texts, file):
    inputs = []
    for t in texts:
        if t == "-":
            inputs.extend(line.rstrip("\n") for line in sys.stdin if line.strip())
        else:
            inputs.append(t)
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                inputs.extend(line.rstrip("\n") for line in f if line.strip())
        except UnicodeDecodeError as e:
            raise ValueError(f"--file {file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not inputs:
        raise click.UsageError("give at least one TEXT, --file F, or '-' to read standard input")
    return inputs


def _clip(text, k=60):
    text = " ".join(text.split())
    return text if len(text) <= k else text[:k - 3] + "..."
