"""``gruengine inspect CKPT INPUT``: gates, states and memory retention on one input.

Parsing and printing only; the numbers come from ``gruengine.inspection.inspect_checkpoint``.
"""
import functools
import sys

import click

from .main import app


def parse_input(spec, stdin=None):
    """The INPUT argument as an input builder for ``inspect_checkpoint``.

    What a string means depends on what the checkpoint's model reads, so the builder decides
    once the checkpoint is loaded. Token models: the text itself, '@FILE' (a text file) or
    '-' (``stdin``, default sys.stdin); a copy-task model also takes 'copy:SEED'. Feature
    models: 'adding:SEED' or 'adding:SEED:T' (one adding-problem instance at the checkpoint's
    T, or at T), or 'FILE.npz:INDEX' (row INDEX of an .npz).
    """
    return functools.partial(_build, spec=spec, stdin=stdin)


def _seed(text, spec):
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise ValueError(f"INPUT: expected a seed (an integer >= 0) in {spec!r}, got {text!r}")
    return v


def _build(model, meta, *, spec, stdin):
    from gruengine.inspection import adding_input, copy_input, npz_input, text_input
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"INPUT: expected a non-empty string, got {spec!r}")
    head, _, rest = spec.partition(":")
    if model.config.input == "tokens":
        if head == "copy" and (meta.get("data_config") or {}).get("name") == "copy":
            return copy_input(_seed(rest, spec), source=spec)(model, meta)
        text = spec                                   # anything else is a text, even 'adding:3'
        if spec == "-":
            text = (stdin or sys.stdin).read()
        elif spec.startswith("@"):
            with open(spec[1:], encoding="utf-8") as f:
                text = f.read()
        return text_input(text, source=spec)(model, meta)
    if head == "adding":
        parts = rest.split(":")
        if len(parts) not in (1, 2):
            raise ValueError(f"INPUT: expected 'adding:SEED' or 'adding:SEED:T', got {spec!r}")
        seed = _seed(parts[0], spec)
        T = _seed(parts[1], spec) if len(parts) == 2 else None
        return adding_input(seed, T, source=spec)(model, meta)
    path, _, index = spec.rpartition(":")
    if path.lower().endswith(".npz"):
        try:
            index = int(index)
        except ValueError:
            pass                                      # the builder reports it with the row count
        return npz_input(path, index, source=spec)(model, meta)
    raise ValueError(f"INPUT: expected 'adding:SEED', 'adding:SEED:T' or 'FILE.npz:INDEX' for this "
                     f"model of {model.config.num_features} features per step, got {spec[:60]!r}")


def summary_lines(s):
    """The text summary ``gruengine inspect`` prints, one string per line."""
    info, L = s["input"], s["length"]
    where = "reverse direction, " if s["reverse"] else ""
    lines = [f"{s['cell']} layer {s['layer']} ({where}{s['units']} units), input "
             f"{info['source'][:60]!r}: {L} steps"
             + (f", marked steps {', '.join(map(str, info['marks']))}" if info["marks"] else "")]
    pred = s["prediction"]
    if isinstance(pred, dict):
        lines.append(f"prediction: {pred['label']} (p = {pred['probability']:.3f})")
    elif pred and isinstance(pred[0], float):
        tgt = info["target"]
        lines.append("prediction: " + ", ".join(f"{v:.4g}" for v in pred)
                     + (f" (target {', '.join(f'{v:.4g}' for v in tgt)})" if tgt else ""))
    h, hu = s["horizon"], s["horizon_units"]
    end = "first" if s["reverse"] else "last"
    lines.append(f"retention horizon: the state of the last {h} of {L} steps keeps >= "
                 f"{s['threshold']:g} on average (product of {s['keep_name']}) at the {end} step; "
                 f"per unit median {int(sorted(hu)[len(hu) // 2])}, max {int(hu.max())}")
    if info["marks"]:
        lines.append("at the marked steps: " + ", ".join(
            f"t={t}: retention {s['retention_mean'][t]:.2f} (mean), "
            f"{s['retaining'][t]:.0%} of units >= {s['threshold']:g}" for t in info["marks"]))
    if s["drops"]:
        tok = info["labels"]
        lines.append(f"largest drops of the mean {s['keep_name']} (where the cell writes): "
                     + ", ".join(f"t={t}" + (f" {tok[t]!r}" if tok else "") + f" ({d:+.2f})"
                                 for t, d in s["drops"]))
    lines.append(f"wrote {s['npz']}" + (f" and {s['png']}" if s["png"] else ""))
    return lines


@app.command("inspect")
@click.argument("ckpt", type=click.Path())
@click.argument("input_spec", metavar="INPUT")
@click.option("--out", "out", type=click.Path(), default=".", show_default=True,
              help="folder for gates.npz and gates.png")
@click.option("--layer", type=int, default=None,
              help="recurrent layer to show, 0-based [default: the top layer]")
@click.option("--units", type=int, default=None,
              help="show only the N most retentive units in the heatmaps [default: all]")
@click.option("--reverse", is_flag=True, help="the reverse direction of a bidirectional model")
@click.option("--no-plot", "no_plot", is_flag=True, help="write gates.npz only (no matplotlib)")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default=None,
              help="run on this device [default: the checkpoint's, cpu when no GPU]")
def inspect_cmd(ckpt, input_spec, out, layer, units, reverse, no_plot, device):
    """Record the gates of a trained model on one INPUT; write gates.npz and gates.png.

    INPUT is, for a text model, the review text itself, @FILE or - (stdin); for the adding
    problem adding:SEED (one instance at the checkpoint's T) or adding:SEED:T; for any
    feature model FILE.npz:INDEX (a row of an .npz file).

    The picture shows heatmaps over time x units of the update gate (z; LSTM: forget gate),
    the reset gate (LSTM: input gate) and the state, units sorted most retentive first, and
    the retention curve: the product of the later update gates, i.e. how much of the state
    at step t survives to the last step. Needs matplotlib (pip install 'gruengine[plot]').

    \b
    Examples:
      gruengine inspect runs/adding/best.npz adding:3 --out insp
      gruengine inspect runs/imdb/best.npz "A moving, beautifully shot film." --units 32
      gruengine inspect runs/imdb/best.npz @review.txt --layer 0 --reverse
    """
    from gruengine.inspection import inspect_checkpoint
    stdin = click.get_text_stream("stdin") if input_spec == "-" else None
    s = inspect_checkpoint(ckpt, parse_input(input_spec, stdin), out, layer=layer, units=units,
                           reverse=reverse, plot=not no_plot, device=device)
    for line in summary_lines(s):
        click.echo(line)
