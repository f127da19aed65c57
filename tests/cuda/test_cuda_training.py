"""A few training steps on 'cuda' end with the same weights as on 'cpu' (float32, 1e-5 relative).

Two levels: the SequenceModel + optimizer path a user runs (``device='cuda'``: parameters,
gradients, activations and optimizer state stay on the device; forward, backward, the loss,
global-norm clipping and the update all run there), and a training step written on the
op-level functions with device arrays, compared with the same step on the CPU kernels.
"""
import math

import numba
import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from gruengine.kernels import cpu as kcpu  # noqa: E402
from gruengine.kernels import cuda as kcuda  # noqa: E402
from gruengine.kernels.cuda import blas, launch  # noqa: E402

from .helpers import assert_close  # noqa: E402


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # the simulator runs every thread as a Python thread: small blocks keep these tests quick
    # (grid-stride loops and the one-block recurrence loop over the rest). Under the simulator
    # the GEMM tile is read when the kernel runs, so 4 x 4 tiles (16 threads, not 256) serve
    # these few-row products; test_cuda_ops checks the GEMMs at their real tile sizes.
    monkeypatch.setattr(launch, "THREADS_PER_BLOCK", 32)
    monkeypatch.setattr(launch, "PERSISTENT_THREADS", 16)
    monkeypatch.setattr(launch, "MAX_BLOCKS", 2)
    if numba.config.ENABLE_CUDASIM:
        monkeypatch.setattr(blas, "TILE", 4)
        monkeypatch.setattr(blas, "TILE_PAD", 5)


# (model config, optimizer, batch kind): every cell, input kind, pooling and task; dropout on
# the input, between layers and before the head; the Cho form; Adam, AdamW and SGD
MODEL_CASES = {
    "tokens-bigru-mean-adam": (dict(task="classify", num_outputs=3, input="tokens", vocab_size=7,
                                    embed_dim=3, padding_idx=0, hidden_size=4, bidirectional=True,
                                    pooling="mean"), "adam"),
    "features-lstm-last-dropout-adamw": (dict(task="regress", num_outputs=2, input="features",
                                              num_features=2, input_proj=3, cell="lstm",
                                              hidden_size=3, bidirectional=True,
                                              dropout=0.3, pooling="last"), "adamw"),
    "tokens-gru-cho-tag-sgd": (dict(task="tag", num_outputs=3, input="tokens", vocab_size=6,
                                    embed_dim=2, hidden_size=3, num_layers=2, reset_after=False,
                                    dropout=0.2), "sgd"),
    "features-mingru-max-adam": (dict(task="classify", num_outputs=2, input="features",
                                      num_features=2, cell="mingru", hidden_size=4,
                                      bidirectional=True, pooling="max"), "adam"),
    "tokens-bigru-max-embed-skip-dropout-adamw": (dict(task="classify", num_outputs=2,
                                                       input="tokens", vocab_size=7, embed_dim=3,
                                                       padding_idx=0, hidden_size=4,
                                                       bidirectional=True, pooling="max",
                                                       embed_skip=True, dropout=0.2), "adamw"),
}


def _batch(rng, cfg, B=3, T=4):
    lengths = np.array([4, 2, 3], dtype=np.int64)
    if cfg["input"] == "tokens":
        x = rng.integers(1, cfg["vocab_size"], size=(B, T)).astype(np.int64)
    else:
        x = rng.standard_normal((B, T, cfg["num_features"])).astype(np.float32)
    C = cfg["num_outputs"]
    if cfg["task"] == "classify":
        y = rng.integers(0, C, size=B).astype(np.int64)
    elif cfg["task"] == "tag":
        y = rng.integers(0, C, size=(B, T)).astype(np.int64)
    else:
        y = rng.standard_normal((B, C)).astype(np.float32)
    return x, lengths, y


def _optimizer(kind, params):
    import gruengine
    if kind == "sgd":
        return gruengine.SGD(params, lr=0.1, momentum=0.9)
    cls = gruengine.AdamW if kind == "adamw" else gruengine.Adam
    return cls(params, lr=0.05)


def _train(device, cfg, kind, batch, steps=3, max_norm=0.1):
    from gruengine.models import SequenceModel
    model = SequenceModel(dict(cfg, device=device, seed=5))
    opt = _optimizer(kind, model.params)
    x, lengths, y = batch
    norms, losses = [], []
    for _ in range(steps):
        model.params.zero_grad()
        out = model.forward(x, lengths)
        loss, dout = model.loss_and_grad(out, y, lengths)
        model.backward(dout)
        norms.append(opt.step(max_norm=max_norm))          # small: clipping is active
        losses.append(loss)
    return model, opt, norms, losses


@pytest.mark.parametrize("task", ["classify", "regress"])
def test_ensemble_on_cuda_predicts_as_on_cpu(rng, task):
    from gruengine.ensemble import EnsembleModel
    from gruengine.models import SequenceModel
    cfg = dict(task=task, num_outputs=3, input="features", num_features=2, hidden_size=4,
               bidirectional=True, pooling="mean")
    cpu = [SequenceModel(dict(cfg, seed=s)) for s in (1, 2)]
    gpu = [SequenceModel(dict(cfg, seed=s, device="cuda")) for s in (1, 2)]
    for c, g in zip(cpu, gpu):
        g.load_state_dict(c.state_dict())
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    L = np.array([5, 2, 4])
    y = (rng.integers(0, 3, 3) if task == "classify"
         else rng.standard_normal((3, 3)).astype(np.float32))
    ec, eg = EnsembleModel(cpu).eval(), EnsembleModel(gpu).eval()
    oc, og = ec.forward(x, L), eg.forward(x, L)
    assert_close(og, oc, np.float32, "outputs")
    want = np.mean([m.predict_proba(m.forward(x, L)) for m in cpu], axis=0)
    np.testing.assert_allclose(eg.predict_proba(og), want, rtol=1e-5, atol=1e-7)
    assert eg.loss_and_grad(og, y, L)[0] == pytest.approx(ec.loss_and_grad(oc, y, L)[0],
                                                          rel=1e-5)


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_sequence_model_trains_the_same_on_cuda_and_cpu(rng, case):
    from gruengine import arrays
    cfg, kind = MODEL_CASES[case]
    batch = _batch(rng, cfg)
    cpu = _train("cpu", cfg, kind, batch)
    gpu = _train("cuda", cfg, kind, batch)
    model, opt = gpu[0], gpu[1]
    # everything the step updates lives on the device: the flat parameter and gradient
    # buffers, every module's parameters (views of them) and the optimizer state
    assert model.params.device == "cuda"
    assert arrays.is_device(model.params.data) and arrays.is_device(model.params.grad)
    for mod in model.modules.values():
        assert all(arrays.is_device(v) for v in mod.params.values())
        assert all(arrays.is_device(v) for v in mod.grads.values())
    assert opt._segments[0].state and all(arrays.is_device(a) for a in opt._segments[0].state.values())
    assert min(cpu[2]) > 0.1                               # the clip really scaled the steps
    np.testing.assert_allclose(gpu[2], cpu[2], rtol=1e-5)  # gradient norms
    np.testing.assert_allclose(gpu[3], cpu[3], rtol=1e-5)  # losses
    w_cpu, w_gpu = cpu[0].state_dict(), model.state_dict()
    assert not np.allclose(w_cpu["head.weight"], _train("cpu", cfg, kind, batch, steps=0)[0]
                           .state_dict()["head.weight"])   # the weights moved
    for k in w_cpu:
        assert_close(w_gpu[k], w_cpu[k], np.float32, k)
    s_cpu, s_gpu = cpu[1].state_dict()["arrays"], opt.state_dict()["arrays"]
    assert s_cpu.keys() == s_gpu.keys() and s_cpu
    for k in s_cpu:                                        # optimizer state, back on the host
        assert_close(s_gpu[k], s_cpu[k], np.float32, k)


def test_training_step_moves_only_the_batch_and_the_outputs(rng, monkeypatch):
    """Count host<->device copies during training steps: their total must stay far below the
    size of the parameter buffer, so no parameter, gradient or optimizer state travels."""
    import numba.cuda
    from gruengine.models import SequenceModel
    import gruengine
    cfg = dict(task="classify", num_outputs=2, input="tokens", vocab_size=60, embed_dim=8,
               hidden_size=8, bidirectional=True, pooling="max", dropout=0.1, device="cuda",
               seed=1)
    model = SequenceModel(cfg)
    opt = gruengine.AdamW(model.params, lr=0.01)
    B, T = 2, 3
    x = rng.integers(1, 60, size=(B, T)).astype(np.int64)
    lengths = np.array([3, 2], dtype=np.int64)
    y = rng.integers(0, 2, size=B).astype(np.int64)
    moved = []
    real_to_device = numba.cuda.to_device
    dev_type = type(model.params.data)
    real_to_host, real_copy_in = dev_type.copy_to_host, dev_type.copy_to_device

    def to_device(a, *args, **kw):
        moved.append(np.asarray(a).nbytes)
        return real_to_device(a, *args, **kw)

    def to_host(self, *args, **kw):
        moved.append(self.size * np.dtype(self.dtype).itemsize)
        return real_to_host(self, *args, **kw)

    def copy_in(self, ary, *args, **kw):
        if isinstance(ary, np.ndarray):
            moved.append(ary.nbytes)
        return real_copy_in(self, ary, *args, **kw)

    monkeypatch.setattr(numba.cuda, "to_device", to_device)
    monkeypatch.setattr(dev_type, "copy_to_host", to_host)
    monkeypatch.setattr(dev_type, "copy_to_device", copy_in)
    for _ in range(2):
        model.params.zero_grad()
        out = model.forward(x, lengths)
        loss, dout = model.loss_and_grad(out, y, lengths)
        model.backward(dout)
        opt.step(max_norm=1.0)
    buffer_bytes = model.params.size * 4
    biggest = max(a.size for a in model.params.params.values()) * 4   # the embedding, 35%
    assert moved, "no transfer recorded: the counting hooks are not in the path"
    # what does travel: ids, lengths, dropout masks, targets, the outputs, a few float64
    # partial sums of the loss and the norm; the largest is far below any parameter's size
    assert max(moved) < min(biggest, buffer_bytes) / 4, (max(moved), biggest)
    assert sum(moved) < buffer_bytes / 2, (sum(moved), buffer_bytes)


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
    assert_close(dev[0].copy_to_host(), host[0], np.float32)
    assert_close(dev[2].copy_to_host(), host[2], np.float32)        # Adam's first moment


def test_trainer_on_cuda_matches_cpu_and_checkpoints_move_between_devices(tmp_path):
    from gruengine.inference import load_model
    from gruengine.train import train
    cfg = dict(task="adding", seq_len=6, n_train=32, n_test=16, hidden_size=4, batch_size=16,
               epochs=2, lr=1e-2, warmup=1, eval_batch_size=16, seed=3)
    train(dict(cfg, device="cpu"), tmp_path / "cpu", quiet=True)
    summary = train(dict(cfg, device="cuda"), tmp_path / "gpu", quiet=True)
    assert np.isfinite(summary["test"]["loss"])
    m_cpu, _ = load_model(tmp_path / "cpu" / "last.npz")
    m_gpu, meta = load_model(tmp_path / "gpu" / "last.npz")
    assert meta["model_config"]["device"] == "cuda" and m_gpu.config.device == "cuda"
    w_cpu, w_gpu = m_cpu.state_dict(), m_gpu.state_dict()
    for k in w_cpu:
        assert_close(w_gpu[k], w_cpu[k], np.float32, k)
    # moving between devices keeps the weights exactly
    m_moved, _ = load_model(tmp_path / "gpu" / "last.npz", device="cpu")
    for k, v in m_moved.state_dict().items():
        np.testing.assert_array_equal(v, w_gpu[k])
    # a run started on cuda resumes on the cpu (optimizer state and all) and ends where the
    # all-cpu run ends
    train(None, tmp_path / "gpu", resume=True, quiet=True, overrides={"epochs": 3, "device": "cpu"})
    train(None, tmp_path / "cpu", resume=True, quiet=True, overrides={"epochs": 3})
    m_cpu, _ = load_model(tmp_path / "cpu" / "last.npz")
    m_res, meta = load_model(tmp_path / "gpu" / "last.npz")
    assert meta["model_config"]["device"] == "cpu"
    for k, v in m_cpu.state_dict().items():
        assert_close(m_res.state_dict()[k], v, np.float32, k)
