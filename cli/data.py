"""``gruengine data``: fetch datasets and describe them. Printing only; the work is in gruengine.data."""
import click

from gruengine.data import (DEFAULT_TEST_FRACTION, NAMES, default_test_fraction, describe,
                            guess_name, load_dataset)
from gruengine.data import download as dl
from gruengine.data.download import data_dir, download_imdb
from gruengine.errors import DataError

from gruengine.limits import MAX_DATA_BYTES, MAX_TEXT_BYTES

from .main import ByteSize, app


@app.group()
def data():
    """Download datasets and inspect dataset files.

    \b
    Examples:
      gruengine data download imdb
      gruengine data info imdb --max-len 400
    """


@data.command()
@click.argument("name", type=click.Choice(["imdb"]))
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Folder to save into (default: $GRUENGINE_DATA or ~/.cache/gruengine).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def download(name, dest, quiet):
    """Download a dataset archive, resume a partial download, and verify its SHA-256.

    \b
    Example:
      gruengine data download imdb --dest ~/data    # ~/data/aclImdb_v1.tar.gz (84 MB)
    """
    folder = dest if dest is not None else data_dir()
    try:
        path = download_imdb(folder, progress=not quiet)
    except DataError as e:
        # what a user without this network can do instead
        raise DataError(f"{e}; or copy {dl.IMDB_FILE} (from {dl.IMDB_URL}) into {folder}, or "
                        f"give its path to train with --data PATH") from None
    click.echo(path)


@data.command()
@click.argument("path_or_name")
@click.option("--task", type=click.Choice(NAMES), default=None,
              help="Dataset kind (loader); guessed from the name or file extension when left out.")
@click.option("--max-len", type=click.IntRange(min=1), default=None, help="Token datasets: cut texts to this many tokens.")
@click.option("--truncate", type=click.Choice(["head", "tail"]), default="head",
              help="Keep the first (head) or last (tail) max-len tokens.")
@click.option("--vocab-size", type=click.IntRange(min=2), default=20000, show_default=True,
              help="Token datasets: vocabulary size, '<pad>' and '<unk>' included.")
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Token datasets: drop tokens seen fewer times in training.")
@click.option("--n-train", type=click.IntRange(min=1), default=None, help="Read at most this many training rows.")
@click.option("--n-test", type=click.IntRange(min=1), default=None, help="Read at most this many test rows.")
@click.option("--seq-len", type=click.IntRange(min=1), default=None, help="Synthetic tasks: sequence length T.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Share of a single text or .npz file held out as the test split "
              f"[default: {DEFAULT_TEST_FRACTION} for one file].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Synthetic tasks and the --test-fraction split: seed.")
@click.option("--max-text-bytes", type=ByteSize(), default=MAX_TEXT_BYTES,
              help="Refuse a review, text line or series line larger than this.  [default: 16M]")
@click.option("--max-data-bytes", type=ByteSize(), default=MAX_DATA_BYTES,
              help="Refuse data that would take more memory than this (text read, token ids, "
                   "padded arrays).  [default: 4G]")
def info(path_or_name, task, max_len, truncate, vocab_size, min_count, n_train, n_test, seq_len,
         test_fraction, seed, max_text_bytes, max_data_bytes):
    """Counts, classes, length statistics and vocabulary size of each split.

    PATH_OR_NAME is a dataset name (adding, copy, imdb) or a path: an IMDB .tar.gz or folder,
    one .tsv/.csv/.txt or .npz file (split by --test-fraction), 'train.npz,test.npz',
    'train.tsv,test.tsv', a UCR/UEA folder or <Name>_TRAIN.ts file. For a text file it also
    says which column was read as the label and whether a header row was skipped. The
    formats: gruengine train --help.

    \b
    Examples:
      gruengine data info adding --seq-len 200
      gruengine data info ~/ucr/ECG200 --task ucr
      gruengine data info reviews.tsv --max-len 256
      gruengine data info train.tsv,test.tsv --max-len 256
    """
    name = task or guess_name(path_or_name)
    path = None if path_or_name == name else path_or_name
    if test_fraction is None:
        test_fraction = default_test_fraction(name, path)
    opts = dict(seed=seed, n_train=n_train, n_test=n_test, test_fraction=test_fraction,
                max_text_bytes=max_text_bytes, max_data_bytes=max_data_bytes)
    if name in ("imdb", "text"):
        opts.update(max_len=max_len, truncate=truncate, vocab_size=vocab_size, min_count=min_count)
    if name in ("adding", "copy"):
        opts.update(seq_len=seq_len)
    splits = load_dataset(name, path, **opts)
    click.echo(f"dataset: {name}" + (f" ({path})" if path else "")
               + (f", test split: {test_fraction:g} of the file (seed {seed})"
                  if test_fraction else ""))
    if name == "text":
        for line in _layout_lines(path):
            click.echo(line)
    for split, ds in splits.items():
        d = describe(ds)
        click.echo(f"{split}: {d['rows']} rows, task {d['task']}, T={d['steps']}, input {d['input']}, "
                   f"target shape {tuple(d['target_shape'])}")
        click.echo(f"  lengths: min {d['length_min']}, mean {d['length_mean']:.1f}, "
                   f"median {d['length_median']:.0f}, max {d['length_max']}")
        if "class_counts" in d:
            counts = ", ".join(f"{k}: {v}" for k, v in d["class_counts"].items())
            click.echo(f"  classes ({d['num_classes']}): {counts}")
        if "vocab_size" in d:
            click.echo(f"  vocabulary: {d['vocab_size']} tokens")


def _layout_lines(path):
    """'columns of FILE: ...' for each text file of ``path`` (one file, a pair or a folder)."""
    from gruengine.data.dataset import resolve_pair
    from gruengine.data.text import text_layout
    files = [p for p in resolve_pair(path, (".tsv", ".csv", ".txt"), "text") if p is not None]
    out = []
    for p in files:
        lay = text_layout(p)
        col = lay["label_column"]
        head = lay["header"]
        out.append(f"columns of {p}: label = {'first' if col == 1 else 'last'} field"
                   + (f" ({head[0] if col == 1 else head[-1]!r})" if head else "")
                   + f", {lay['sep']}-separated, "
                   + (f"header row {head} skipped" if head else "no header row"))
    return out
