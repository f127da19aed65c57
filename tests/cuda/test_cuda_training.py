"""A few training steps on 'cuda' end with the same weights as on 'cpu' (float32, 1e-5 relative).

Two levels: the SequenceModel + Adam path a user runs (layers pick the CUDA kernels through
``device='cuda'``), and a training step written on the op-level functions with every
parameter, gradient and optimizer state resident on the device (forward, backward, global
norm clipping, Adam), compared with the same step on the CPU kernels.
"""
import math

import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from gruengine.kernels import cpu as kcpu  # noqa: E402
from gruengine.kernels import cuda as kcuda  # noqa: E402


def _weights_close(got, want):
    # 1e-5 relative to the weights' scale (a weight crossing zero has no relative error)
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_sequence_model_trains_the_same_on_cuda_and_cpu(rng):
    import gruengine
    from gruengine.models import SequenceModel
    B, T, V = 3, 4, 7
    ids = rng.integers(1, V, size=(B, T)).astype(np.int64)
    lengths = np.array([4, 2, 3], dtype=np.int64)
    targets = rng.integers(0, 3, size=B).astype(np.int64)
    final = {}
    for device in ("cpu", "cuda"):
        model = SequenceModel(dict(task="classify", num_outputs=3, input="tokens", vocab_size=V,
                                   embed_dim=3, padding_idx=0, hidden_size=4, bidirectional=True,
                                   pooling="mean", device=device, seed=5))
        opt = gruengine.Adam(model.params, lr=0.05)
        norms = []
        for _ in range(3):
            model.params.zero_grad()
            out = model.forward(ids, lengths)
            loss, dout = model.loss_and_grad(out, targets, lengths)
            model.backward(dout)
            norms.append(opt.step(max_norm=0.1))          # small: clipping is active
        final[device] = (model.params.data.copy(), norms, loss)
    (w_cpu, n_cpu, l_cpu), (w_gpu, n_gpu, l_gpu) = final["cpu"], final["cuda"]
    assert min(n_cpu) > 0.1                               # the clip really scaled the steps
    np.testing.assert_allclose(n_gpu, n_cpu, rtol=1e-5)
    np.testing.assert_allclose(l_gpu, l_cpu, rtol=1e-5)
    _weights_close(w_gpu, w_cpu)


# ----------------------------------------------------------------------------- device-resident step

I, H, C = 2, 4, 3
SHAPES = {"W_ih": (3 * H, I), "W_hh": (3 * H, H), "b_ih": (3 * H,), "b_hh": (3 * H,),
          "W_out": (C, H), "b_out": (C,)}


def _views(flat):
    # named views of one flat buffer (numpy, or a device array: slicing keeps it on the device)
    out, k = {}, 0
    for name, shape in SHAPES.items():
        n = math.prod(shape)
        out[name] = flat[k:k + n].reshape(shape)
        k += n
    return out


def _assign(dst, src):
    if isinstance(dst, np.ndarray):
        dst[...] = src
    else:
        dst.copy_to_device(src)


def _train_step(K, data, grad, m, v, step, batch, max_norm=0.2):
    """Forward, backward, global-norm clipping and Adam on backend K; arrays stay where they are."""
    x, h0, lengths, targets, dh_zero = batch
    p, g = _views(data), _views(grad)
    y, h_n, cache = K.gru_forward(x, h0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], lengths)
    logits = K.linear_forward(h_n, p["W_out"], p["b_out"])
    loss, dlogits = K.softmax_cross_entropy(logits, targets, None)
    dh_n, dW_out, db_out = K.linear_backward(dlogits, h_n, p["W_out"])
    dy = K.dropout_forward(y, dh_zero)                    # zeros shaped like y, made on K's side
    _, _, dW_ih, dW_hh, db_ih, db_hh = K.gru_backward(dy, dh_n, x, h0, p["W_ih"], p["W_hh"],
                                                      p["b_ih"], p["b_hh"], lengths, cache)
    for name, d in (("W_ih", dW_ih), ("W_hh", dW_hh), ("b_ih", db_ih), ("b_hh", db_hh),
                    ("W_out", dW_out), ("b_out", db_out)):
        _assign(g[name], d)
    norm = math.sqrt(K.sum_of_squares(grad))
    scale = min(1.0, max_norm / (norm + 1e-6))
    K.adam_step(data, grad, m, v, step, 0.05, 0.9, 0.999, 1e-8, 0.01, True, scale)
    return loss, norm


def test_training_step_resident_on_the_device_matches_cpu(rng):
    N = sum(math.prod(s) for s in SHAPES.values())
    data0 = (rng.standard_normal(N) * 0.5).astype(np.float32)
    B, T = 3, 4
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    lengths = np.array([2, 4, 3], dtype=np.int64)
    targets = rng.integers(0, C, size=B).astype(np.int64)
    zeros_y = np.zeros((B, T, H), np.float32)
    host = [data0.copy()] + [np.zeros(N, np.float32) for _ in range(3)]   # data, grad, m, v
    dev = [cuda.to_device(a) for a in host]
    batch_h = (x, h0, lengths, targets, zeros_y)
    batch_d = tuple(cuda.to_device(a) for a in batch_h)
    for step in (1, 2, 3):
        loss_h, norm_h = _train_step(kcpu, *host, step, batch_h)
        loss_d, norm_d = _train_step(kcuda, *dev, step, batch_d)
        np.testing.assert_allclose(loss_d, loss_h, rtol=1e-5)
        np.testing.assert_allclose(norm_d, norm_h, rtol=1e-5)
    assert norm_h > 0.2                                   # clipping was active
    assert not np.allclose(host[0], data0)                # the weights moved
    _weights_close(dev[0].copy_to_host(), host[0])
    _weights_close(dev[2].copy_to_host(), host[2])        # Adam's first moment
