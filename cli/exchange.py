"""``gruengine export`` and ``gruengine import``: models to and from ONNX and safetensors.

Parsing and printing only; the work is in ``gruengine.onnx`` and ``gruengine.safetensors``.
"""
import click

from .main import app


def _shape(dims):
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


@app.command("export")
@click.argument("checkpoint", type=click.Path(), metavar="CKPT")
@click.argument("out", type=click.Path(), metavar="OUT")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="skip running the .onnx file with onnxruntime against the model")
def export_cmd(checkpoint, out, no_verify):
    """Write a checkpoint's model as OUT: an ONNX graph (.onnx) or weights (.safetensors).

    CKPT is a .npz or .safetensors checkpoint, or a run folder (its best.npz).

    .onnx: the whole model (input and its scaling, conv front end, GRU/LSTM stack, pooling,
    head, softmax) as one graph, opset 17, checked with onnx.checker, inputs ids or raw
    (unscaled) features and lengths with a dynamic batch and time axis; output
    probabilities (classify, tag) or values (regress). A text
    model's tokenizer is written beside it as NAME.tokenizer.json. Unless --no-verify, the
    file is run with onnxruntime on random inputs and compared with the model.

    .safetensors: the model's weights and the checkpoint's metadata (no optimizer state),
    which evaluate, predict, inspect and export accept as CKPT.

    Needs pip install 'gruengine[onnx]'.

    \b
    Examples:
      gruengine export runs/imdb/best.npz imdb.onnx
      gruengine export runs/adding adding.safetensors
    """
    if out.endswith(".safetensors"):
        from gruengine.inference import checkpoint_to_safetensors
        click.echo(f"wrote {checkpoint_to_safetensors(checkpoint, out)}: model weights and "
                   f"metadata (safetensors)")
        return
    if not out.endswith(".onnx"):
        raise click.BadParameter(f"{out}: expected a name ending in .onnx or .safetensors",
                                 param_hint="OUT")
    from gruengine import onnx as gonnx
    info = gonnx.export_checkpoint(checkpoint, out)
    ins = ", ".join(f"{k} {_shape(v)}" for k, v in info["inputs"].items())
    (name, dims), = info["output"].items()
    click.echo(f"wrote {info['path']}: ONNX opset {info['opset']}, inputs {ins} -> "
               f"{name} {_shape(dims)}")
    if info["tokenizer"]:
        click.echo(f"tokenizer (vocabulary, patterns, max_len): {info['tokenizer']}")
    if not no_verify:
        from gruengine.inference import load_model
        model, _ = load_model(checkpoint, device="cpu")
        diff = gonnx.verify(info["path"], model)
        click.echo(f"onnxruntime matches gruengine: max |difference| {diff:.2g} on 8 random "
                   f"inputs of random lengths")


@app.command("import")
@click.argument("model", type=click.Path(), metavar="MODEL.onnx")
@click.option("--out", "out", type=click.Path(),
              help="file to write, .npz or .safetensors [default: MODEL with .npz]")
def import_cmd(model, out):
    """Read an ONNX model into gruengine: a checkpoint, or the state_dict of its GRU/LSTMs.

    A graph written by gruengine export becomes a checkpoint that evaluate, predict, inspect
    and export accept. Any other graph: its GRU and LSTM nodes become gruengine layers with
    exactly their function, written as a state_dict (PyTorch names; several stacks are
    prefixed rnn0., rnn1., ...); a node gruengine cannot compute exactly (an activation other
    than the defaults, clip, peepholes, a lone reverse direction, ...) is refused in one line.

    Needs pip install 'gruengine[onnx]'.

    \b
    Examples:
      gruengine import imdb.onnx --out imdb.npz
      gruengine import encoder.onnx --out encoder.safetensors
    """
    from gruengine import onnx as gonnx
    res = gonnx.import_onnx(model, out)
    if res["kind"] == "checkpoint":
        click.echo(f"{model}: a gruengine export -> checkpoint {res['path']}")
        return
    n = len(res["stacks"])
    click.echo(f"{model}: {n} recurrent stack{'s' if n > 1 else ''} -> state_dict {res['path']}")
    for k, s in enumerate(res["stacks"]):
        kind = s["cell"].upper() + ("" if s["cell"] == "lstm" else
                                    f" reset_after={s['reset_after']}")
        click.echo(f"  stack {k}{' (' + s['prefix'] + ')' if s['prefix'] else ''}: {kind}, "
                   f"{s['num_layers']} layer(s){', bidirectional' if s['bidirectional'] else ''}, "
                   f"input {s['input_size']}, hidden {s['hidden_size']}, {s['dtype']}, "
                   f"nodes {', '.join(s['nodes'])}")
