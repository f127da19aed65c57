"""Compile every ``@cuda.jit`` kernel of this package to PTX without a GPU.

``numba.cuda.compile_ptx`` runs NVVM on the host, so the kernels can be checked on a machine
with no GPU (the simulator runs them as Python and misses what NVVM rejects). Where
``cuda.bindings.nvjitlink`` is importable the PTX is also assembled for the target, which
reports registers, shared and local (spill) memory per thread.

    python -m gruengine.kernels.cuda.ptx            # markdown table of resource use
"""
import contextlib
import re
import types

from numba import boolean, cuda, float32, float64, int64

from . import blas, conv, gru_kernels, gru_persistent, lstm, mingru, norm, ops, optim

MODULES = (blas, gru_kernels, gru_persistent, ops, optim, lstm, mingru, conv, norm)


def kernels():
    """name -> dispatcher of every ``@cuda.jit`` kernel (not device function) in the package."""
    found = {}
    for mod in MODULES:
        for name, obj in vars(mod).items():
            opts = getattr(obj, "targetoptions", None)
            if opts is not None and hasattr(obj, "py_func") and not opts.get("device", False):
                found[name] = obj
    return found


def signatures(f=float32):
    """name -> argument types of each kernel, for float dtype ``f`` (C-contiguous arrays)."""
    v, m, t3, t4 = f[::1], f[:, ::1], f[:, :, ::1], f[:, :, :, ::1]
    i1, i2, p = int64[::1], int64[:, ::1], float64[::1]
    i, b, d = int64, boolean, float64
    own = {
        # blas: the GEMM also runs on strided views (column slices of dG), layout "A"
        "gemm_kernel": (f[:, :], f[:, :], f[:, :], v, i, i, i, b, b, b, b),
        "gemm_blocked_kernel": (f[:, :], f[:, :], f[:, :], v, i, i, i, b, b, b, b),
        "colsum_kernel": (m, v, i, i, b),
        "colsum_partial_kernel": (m, m, i, i, i),
        "transpose_kernel": (m, m, i, i),
        "fill_kernel": (v, d, i),
        "sum_kernel": (v, p, b),
        "copy2d_kernel": (f[:, :], f[:, :], i, i),
        "add_kernel": (v, v, i),
        # GRU recurrence
        "gru_step_forward_kernel": (t3, m, v, m, m, m, m, t3, t4, i1, i, b, i),
        "gru_step_backward_kernel": (t3, m, t4, i1, i, b, t3, t3, m, m, m, i),
        "gru_step_backward_fused_kernel": (t3, m, t4, i1, i, b, m, t3, t3, m),
        "gru_forward_persistent_kernel": (t3, m, v, m, t3, t4, m, i1, b, b),
        "gru_backward_persistent_kernel": (t3, m, t4, i1, b, b, m, t3, t3, m),
        # ops
        "embedding_forward_kernel": (i1, m, m),
        "embedding_backward_kernel": (m, i1, i1, i1, i, m),
        "pool_forward_kernel": (t3, i1, i, m, i2),
        "pool_backward_kernel": (m, i1, i, i2, t3),
        "softmax_xent_kernel": (m, i1, v, b, f, m, p),
        "bce_kernel": (v, v, v, b, f, v, p),
        "mse_kernel": (m, m, v, b, f, m, p),
        "multiply_kernel": (v, v, v),
        # optimizers
        "adam_kernel": (v, v, v, v, d, d, d, d, d, b, d, d, d),
        "sgd_kernel": (v, v, v, d, d, d, b, d, d, b),
        "scale_kernel": (v, f),
        "clamp_kernel": (v, f),
    }
    # modules that keep their kernels' signatures beside them (lstm.py, mingru.py)
    sigs = dict(own)
    for mod in MODULES:
        if hasattr(mod, "ptx_signatures"):
            sigs.update(mod.ptx_signatures(f))
    return sigs


@contextlib.contextmanager
def _device_cc_without_gpu(cc):
    # numba-cuda compiles the ``@cuda.jit(device=True)`` helpers a kernel calls for "the
    # current device", which needs a driver even inside ``compile_ptx``. With no GPU, stand
    # in a device of the requested compute capability for the length of the compile only.
    from numba.cuda import dispatcher
    if cuda.is_available():
        yield
        return
    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def compile_kernel(name, cc=(9, 0), f=float32):
    """PTX text of one kernel for compute capability ``cc``."""
    with _device_cc_without_gpu(cc):
        ptx, _ = cuda.compile_ptx(kernels()[name].py_func, signatures(f)[name], cc=cc)
    return ptx


def local_bytes_in_ptx(ptx):
    """Bytes of ``.local`` arrays declared in the PTX (before ptxas adds spills)."""
    total = 0
    for m in re.finditer(r"\.local\s+\.align\s+\d+\s+\.b8\s+\S+\[(\d+)\]", ptx):
        total += int(m.group(1))
    return total


def resource_usage(ptx, cc=(9, 0)):
    """{'registers', 'smem', 'lmem'} per thread from nvJitLink's assembler log, or None.

    None when ``cuda.bindings.nvjitlink`` is missing or cannot assemble for this target.
    """
    try:
        from cuda.bindings import nvjitlink
    except ImportError:
        return None
    try:
        h = nvjitlink.create(2, [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose"])
        data = ptx.encode()
        nvjitlink.add_data(h, nvjitlink.InputType.PTX, data, len(data), "kernel")
        nvjitlink.complete(h)
        buf = bytearray(nvjitlink.get_info_log_size(h))
        nvjitlink.get_info_log(h, buf)
        nvjitlink.destroy(h)
    except Exception:
        return None
    log = buf.decode(errors="replace")
    regs = re.search(r"used (\d+) registers", log)
    smem = re.search(r"(\d+) bytes smem", log)
    lmem = re.search(r"(\d+) bytes lmem", log)
    if not regs:
        return None
    return {"registers": int(regs.group(1)), "smem": int(smem.group(1)) if smem else 0,
            "lmem": int(lmem.group(1)) if lmem else 0}


def table(cc=(9, 0), f=float32):
    """Markdown table: kernel, registers, shared bytes, local bytes (per thread), PTX .local."""
    lines = [f"| kernel (sm_{cc[0]}{cc[1]}, {f}) | registers | shared B | local B | PTX .local B |",
             "|---|---:|---:|---:|---:|"]
    for name in sorted(kernels()):
        ptx = compile_kernel(name, cc, f)
        use = resource_usage(ptx, cc) or {}
        lines.append(f"| {name} | {use.get('registers', '?')} | {use.get('smem', '?')} | "
                     f"{use.get('lmem', '?')} | {local_bytes_in_ptx(ptx)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table((9, 0)))
    print()
    print(table((8, 0)))
