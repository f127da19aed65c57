"""The feature side of an ONNX export (``gruengine.onnx``): the input scaling a numeric model
was trained with, and the convolutional front end in eval mode.

Scaling (``gruengine.data.scaling.Scaler``) runs on the raw features in float64, as the Scaler
does, and hands float32 on: per-series mean and standard deviation over each row's valid steps
(steps < lengths), z = (x - mean) / (std, or 1 where std is 0), with ``keep_stats`` the level
and log(std + floor) appended as channels, then (x - mean_c) / std_c with the training
statistics (a constant channel's std is already 1 in them), padding zero. Padding values are
never read: every step at or past a row's length is replaced by 0 (Where, so not even a NaN
there leaks) before any sum.

Front end (``gruengine.conv.ConvFrontEnd``), in (batch, channels, time) layout: per block a
``Conv`` with pads ((K-1)//2, K-1-(K-1)//2) and the block's stride, which gives ceil(T/stride)
steps and reads step t*stride + k - (K-1)//2, as the engine; then ``BatchNormalization`` with
the running statistics or ``LayerNormalization`` over the channels, ``Relu``, and the steps at
and past the block's lengths ceil(L/stride) set to zero, so the next block reads zeros there
as the engine's does. Initializers carry the state_dict's names (``frontend.conv0.weight``,
``frontend.norm0.running_mean``, ...), which is how ``onnx_import.load`` reads them back.
"""
import numpy as np

from .conv import EPS

__all__ = ["scale_features", "front_end", "valid_steps"]


def valid_steps(g, x, lengths, time_axis):
    """(B, T) bool: step t < lengths[b], with T the size of ``x``'s axis ``time_axis``."""
    T = g.op("Squeeze", g.op("Shape", x, start=time_axis, end=time_axis + 1))
    steps = g.op("Range", g.const("zero", 0, np.int64), T, g.const("one", 1, np.int64))
    return g.op("Less", g.op("Unsqueeze", steps, g.const("axes.0", [0], np.int64)),
                g.op("Unsqueeze", lengths, g.const("axes.1", [1], np.int64)))


def scale_features(g, x, lengths, scaler):
    """x (B, T, F_raw) float32 raw -> (B, T, F_out) float32 as ``scaler.transform_arrays``."""
    tp = g.onnx.TensorProto
    valid = g.op("Unsqueeze", valid_steps(g, x, lengths, 1),
                 g.const("axes.2", [2], np.int64))                             # (B, T, 1)
    zero = g.const("scaling.zero", 0.0, np.float64)
    z = g.op("Where", valid, g.op("Cast", x, to=tp.DOUBLE), zero)              # padding -> 0
    if scaler.series:
        n = g.op("Unsqueeze", g.op("Cast", lengths, to=tp.DOUBLE),
                 g.const("axes.1_2", [1, 2], np.int64))                        # (B, 1, 1)
        axis1 = g.const("axes.1", [1], np.int64)
        mean = g.op("Div", g.op("ReduceSum", z, axis1, keepdims=1), n)         # (B, 1, F)
        dev = g.op("Where", valid, g.op("Sub", z, mean), zero)
        std = g.op("Sqrt", g.op("Div", g.op("ReduceSum", g.op("Mul", dev, dev), axis1,
                                            keepdims=1), n))                    # (B, 1, F)
        safe = g.op("Where", g.op("Greater", std, zero), std,
                    g.const("scaling.one", 1.0, np.float64))
        parts = [g.op("Div", dev, safe)]
        if scaler.keep_stats:
            shape = g.op("Shape", dev)
            log_scale = g.op("Log", g.op("Add", std, g.const("scaling.floor", scaler.floor,
                                                             np.float64)))
            parts += [g.op("Expand", mean, shape), g.op("Expand", log_scale, shape)]
        z = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=2)
    if scaler.channels:
        z = g.op("Div", g.op("Sub", z, g.const("scaling.mean", scaler.mean, np.float64)),
                 g.const("scaling.std", scaler.std, np.float64))
    return g.op("Cast", g.op("Where", valid, z, zero), to=tp.FLOAT)


def front_end(g, fe, sd, x, lengths):
    """x (T, B, C_in) float32, lengths (B,) int64 -> (y (T', B, C) float32, lengths' (B,))."""
    h = g.op("Transpose", x, perm=[1, 2, 0])                                  # (B, C, T)
    axis1 = g.const("axes.1", [1], np.int64)
    h = g.op("Where", g.op("Unsqueeze", valid_steps(g, h, lengths, 2), axis1), h,
             g.const("zero.f", 0.0))
    for k, (K, s) in enumerate(zip(fe.kernel_sizes, fe.strides)):
        name = f"frontend.conv{k}."
        conv_in = [h, g.const(name + "weight", sd[name + "weight"])]
        if name + "bias" in sd:
            conv_in.append(g.const(name + "bias", sd[name + "bias"]))
        pad = (K - 1) // 2
        h = g.op("Conv", *conv_in, kernel_shape=[K], pads=[pad, K - 1 - pad], strides=[s])
        if s > 1:
            lengths = g.op("Div", g.op("Add", lengths, g.const(f"int.{s - 1}", s - 1, np.int64)),
                           g.const(f"int.{s}", s, np.int64))                  # ceil(L / s)
        gamma, beta = (g.const(f"frontend.norm{k}.{n}", sd[f"frontend.norm{k}.{n}"])
                       for n in ("weight", "bias"))
        if fe.norm == "batch":
            mean, var = (g.const(f"frontend.norm{k}.{n}", sd[f"frontend.norm{k}.{n}"])
                         for n in ("running_mean", "running_var"))
            h = g.op("BatchNormalization", h, gamma, beta, mean, var, epsilon=EPS)
        else:
            h_btc = g.op("LayerNormalization", g.op("Transpose", h, perm=[0, 2, 1]), gamma, beta,
                         axis=-1, epsilon=EPS)
            h = g.op("Transpose", h_btc, perm=[0, 2, 1])
        h = g.op("Where", g.op("Unsqueeze", valid_steps(g, h, lengths, 2), axis1),
                 g.op("Relu", h), g.const("zero.f", 0.0))                     # padding -> 0
    return g.op("Transpose", h, perm=[2, 0, 1]), lengths                      # (T', B, C)
