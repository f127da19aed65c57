"""Every ``@cuda.jit`` kernel compiles to real PTX (NVVM) for sm_90 and sm_80, no GPU needed.

The simulator runs kernels as Python and accepts code NVVM rejects (a non-literal shared
array shape, an unsupported call); this catches it. Skips when numba-cuda (the cuda extra:
pip install -e ".[cuda]") or NVVM is missing, and under NUMBA_ENABLE_CUDASIM=1 (the simulator
has no compile_ptx). Numba's own deprecated numba.cuda does not count: its compile_ptx differs.
"""
import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("PTX compilation does not run under the CUDA simulator", allow_module_level=True)

pytest.importorskip("numba_cuda", reason="the PTX compile tests need numba-cuda "
                    "(pip install -e '.[cuda]')")
cuda = pytest.importorskip("numba.cuda")


def _nvvm_works():
    from numba import float32

    def probe(x):
        x[0] = 1

    try:
        cuda.compile_ptx(probe, (float32[::1],), cc=(8, 0))
        return True
    except Exception:
        return False


if not _nvvm_works():
    pytest.skip("numba-cuda with NVVM is not installed (pip install 'numba-cuda[cu13]')",
                allow_module_level=True)

from gruengine.kernels.cuda import ptx as P  # noqa: E402

KERNELS = sorted(P.kernels())


def test_every_kernel_has_a_signature():
    # a new kernel without an entry in ptx.signatures() would escape the compile check
    assert set(KERNELS) == set(P.signatures()), set(KERNELS) ^ set(P.signatures())
    assert len(KERNELS) >= 15


@pytest.mark.parametrize("cc", [(9, 0), (8, 0)], ids=["sm_90", "sm_80"])
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_to_ptx(name, cc):
    text = P.compile_kernel(name, cc)
    assert f".target sm_{cc[0]}{cc[1]}" in text
    assert ".entry" in text


def test_recurrent_kernels_compile_for_float64():
    from numba import float64
    # float64 doubles the shared arrays: the persistent backward sits at the 48 KiB static limit
    for name in ("gru_step_forward_kernel", "gru_step_backward_fused_kernel",
                 "gru_forward_persistent_kernel", "gru_backward_persistent_kernel",
                 "gemm_kernel", "gemm_blocked_kernel"):
        text = P.compile_kernel(name, (9, 0), float64)
        assert ".entry" in text
        use = P.resource_usage(text, (9, 0))
        if use is not None:
            assert use["smem"] <= 48 * 1024 + 1024, (name, use)


def test_no_local_memory_in_the_hot_kernels():
    # registers, shared and local memory per thread as ptxas (nvJitLink) assembles them
    pytest.importorskip("cuda.bindings.nvjitlink")
    for name in ("gru_step_forward_kernel", "gru_step_backward_fused_kernel",
                 "gru_forward_persistent_kernel", "gru_backward_persistent_kernel",
                 "gemm_kernel", "gemm_blocked_kernel"):
        text = P.compile_kernel(name, (9, 0))
        use = P.resource_usage(text, (9, 0))
        if use is None:
            pytest.skip("nvJitLink could not assemble for sm_90 here")
        print(name, use)
        assert P.local_bytes_in_ptx(text) == 0, name
        assert use["lmem"] == 0, (name, use)
        assert 0 < use["registers"] <= 128, (name, use)


# ----------------------------------------------------------------------------- LSTM and minGRU
# Their signatures live beside the kernels (``ptx_signatures(f)`` in lstm.py / mingru.py);
# ptx.signatures() merges them, so the tests above cover them in float32 too; these add float64.

from gruengine.kernels.cuda import lstm as _lstm, mingru as _mingru  # noqa: E402

CELL_KERNELS = sorted((mod.__name__.rsplit(".", 1)[1], name)
                      for mod in (_lstm, _mingru) for name, obj in vars(mod).items()
                      if hasattr(obj, "py_func") and getattr(obj, "targetoptions", None) is not None
                      and not obj.targetoptions.get("device", False))


def _compile_cell_kernel(modname, name, cc, f=None):
    from numba import float32
    mod = {"lstm": _lstm, "mingru": _mingru}[modname]
    with P._device_cc_without_gpu(cc):
        sig = mod.ptx_signatures(f or float32)[name]
        ptx, _ = cuda.compile_ptx(getattr(mod, name).py_func, sig, cc=cc)
    return ptx


def test_every_cell_kernel_has_a_signature():
    from numba import float32
    assert len(CELL_KERNELS) == 5, CELL_KERNELS
    for modname, name in CELL_KERNELS:
        assert name in {"lstm": _lstm, "mingru": _mingru}[modname].ptx_signatures(float32), name


@pytest.mark.parametrize("cc", [(9, 0), (8, 0)], ids=["sm_90", "sm_80"])
@pytest.mark.parametrize("modname, name", CELL_KERNELS, ids=[n for _, n in CELL_KERNELS])
def test_cell_kernel_compiles_to_ptx_without_spills(modname, name, cc):
    from numba import float32, float64
    for f in (float32, float64):
        text = _compile_cell_kernel(modname, name, cc, f)
        assert f".target sm_{cc[0]}{cc[1]}" in text
        assert ".entry" in text
        assert P.local_bytes_in_ptx(text) == 0, (name, f)
        use = P.resource_usage(text, cc)
        if use is not None:
            # float64 doubles the LSTM's shared tiles: they must stay under the 48 KiB static limit
            assert use["lmem"] == 0, (name, f, use)
            assert use["smem"] <= 48 * 1024 + 1024, (name, f, use)
            assert 0 < use["registers"] <= 128, (name, f, use)
