"""A SequenceModel with the convolutional front end (strided, read by the head too) trains
the same on 'cuda' as on 'cpu': losses, gradient norms and weights (float32, 1e-5)."""
import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from .helpers import assert_close  # noqa: E402
from .test_cuda_training import _batch, _train, small_blocks  # noqa: E402,F401

CASES = {
    "conv-stride2-skip-bigru-mean": dict(task="classify", num_outputs=3, input="features",
                                         num_features=2, hidden_size=3, bidirectional=True,
                                         pooling="mean", conv_channels=3, conv_kernels=(3, 2),
                                         conv_stride=2, conv_skip=True),
    "conv-tag-gru": dict(task="tag", num_outputs=2, input="features", num_features=1,
                         hidden_size=3, conv_channels=2, conv_kernels=(3,)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_front_end_model_trains_the_same_on_cuda_and_cpu(rng, case):
    cfg = CASES[case]
    batch = _batch(rng, cfg)
    cpu = _train("cpu", cfg, "adamw", batch)
    gpu = _train("cuda", cfg, "adamw", batch)
    np.testing.assert_allclose(gpu[3], cpu[3], rtol=1e-5)          # losses
    np.testing.assert_allclose(gpu[2], cpu[2], rtol=1e-5)          # gradient norms
    w_cpu, w_gpu = cpu[0].state_dict(), gpu[0].state_dict()
    assert any(k.startswith("frontend.conv1") or k.startswith("frontend.conv0") for k in w_cpu)
    for k in w_cpu:
        assert_close(w_gpu[k], w_cpu[k], np.float32, k)


def test_features_on_cuda_are_the_cpu_features(rng):
    # the vectors the head reads (eval mode: batch norm's running averages), after the same
    # training steps on both devices, come back to the host equal to float32 precision
    cfg = CASES["conv-stride2-skip-bigru-mean"]
    batch = _batch(rng, cfg)
    cpu = _train("cpu", cfg, "adamw", batch)[0].eval()
    gpu = _train("cuda", cfg, "adamw", batch)[0].eval()
    x, lengths, _ = batch
    f_cpu, f_gpu = cpu.features(x, lengths), gpu.features(x, lengths)
    assert isinstance(f_gpu, np.ndarray) and f_gpu.shape == (x.shape[0], 2 * 3 + 3)
    assert_close(f_gpu, f_cpu, np.float32, "features")


def test_neighbours_mix_the_same_on_cuda(rng):
    # the stored training vectors and the mixed eval-mode predictions of a model trained on
    # 'cuda' equal the CPU model's (float32)
    from gruengine.data.dataset import Dataset
    from gruengine.neighbours import fit_neighbours
    cfg = CASES["conv-stride2-skip-bigru-mean"]
    batch = _batch(rng, cfg)
    x, lengths, y = batch
    models = [_train(dev, cfg, "adamw", batch)[0] for dev in ("cpu", "cuda")]
    outs = []
    for m in models:
        m.neighbours = fit_neighbours(m, Dataset(x, lengths, y, "classify",
                                                         cfg["num_outputs"]))
        outs.append((m.neighbours.features, m.predict_proba(m.forward(x, lengths))))
    assert_close(outs[1][0], outs[0][0], np.float32, "neighbours.features")
    assert_close(outs[1][1], outs[0][1], np.float32, "mixed probabilities")
    assert (outs[0][1][np.arange(len(y)), y] >= 0.5).all()     # each its own neighbour
