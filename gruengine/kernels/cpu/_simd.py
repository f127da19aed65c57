"""SIMD micro-kernels of the CPU GEMMs, written as LLVM IR through Numba intrinsics.

One micro-kernel computes a tile of ``mr`` rows x ``nc`` columns of C = A @ P with its
accumulators in vector registers for the whole K loop:

    C[i, j] (+)= sum_k A[a0 + i*sa_i + k*sa_k] * P[p0 + k*sp_k + j]     i < mr, j < nc
    (C[i, j] at c0 + i*ldc + (j // vw)*cs_v + j % vw: vector v of a row at c0 + i*ldc + v*cs_v)

* A is read one scalar at a time and broadcast, so any two strides work: a row-major operand
  (sa_i = lda, sa_k = 1) and a transposed one (sa_i = 1, sa_k = lda) cost the same;
* P is read as ``nv`` vectors per k: its columns j must be contiguous (a packed weight panel,
  or the rows of a row-major operand);
* C is row-major with leading dimension ``ldc``; its nv vectors of a row are ``cs_v`` apart
  (``cs_v = vw``: contiguous columns; ``cs_v = H``: one vector in each of three gate blocks);
  ``accumulate`` adds into C.

Rows ``mr <= i < MR`` repeat row ``mr - 1`` and are not stored, so one kernel covers every row
count. ``microkernel(nv, masked=True)`` masks the loads of P and the stores of C to the first
``nc`` columns (the tail of a matrix whose width is not a multiple of the tile).

Why not BLAS: OpenBLAS picks its Haswell (AVX2) kernels on the development machine's AMD EPYC
while the core runs AVX-512 at full width. Measured there, one thread, a (32, 128) x (128, 384)
float32 product repeated from L1/L2 (thread CPU time): 205-265 GFLOP/s with MR=8, NV=3 (zmm),
97 GFLOP/s with OpenBLAS, 82 with SciPy's BLAS called from njit code (``np.dot``); and a GEMM
called per time step from Python costs more in dispatch than it computes (docs/benchmarks.md). The vector width and MR follow the host's registers,
decided once at import (Numba's cache is keyed on the CPU, so a cached kernel never runs on a
CPU it was not built for). Each multiply-add is ``llvm.fmuladd``: fused where the CPU has FMA,
and the k order is fixed, so a value never depends on the tile or thread that computed it.
"""
import llvmlite.binding as _ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

__all__ = ["VW32", "VW64", "vector_width", "lanes", "tile_rows", "microkernel"]

_FEATURES = _ll.get_host_cpu_features()
if _FEATURES.get("avx512f"):
    VW32, _NREG = 16, 32            # zmm registers
elif _FEATURES.get("avx") or _FEATURES.get("avx2"):
    VW32, _NREG = 8, 16             # ymm
else:
    VW32, _NREG = 4, 16             # SSE / NEON: 128-bit
VW64 = VW32 // 2


def vector_width(dtype):
    """Elements per SIMD vector of ``dtype`` (float32 or float64) on this CPU."""
    return VW32 if dtype.itemsize == 4 else VW64


def lanes(a):
    """Elements per SIMD vector of the array ``a``'s dtype; a compile-time constant in njit code."""
    return vector_width(a.dtype)


@overload(lanes, inline="always")
def _lanes(a):
    w = VW32 if a.dtype == types.float32 else VW64
    return lambda a: w


def tile_rows(nv, registers=None):
    """Rows MR of a tile of ``nv`` vectors: MR*nv accumulators, nv loads of P and one
    broadcast of A must fit the vector registers (this CPU's unless given)."""
    return max(1, min(8, ((registers or _NREG) - nv - 1) // nv))


def _i64(context, builder, val, ty):
    return context.cast(builder, val, ty, types.int64)


def _vec_intrinsic(builder, name, vty, argtys, ret):
    sfx = f"v{vty.count}f{64 if isinstance(vty.element, ir.DoubleType) else 32}"
    fnty = ir.FunctionType(ret, argtys)
    return cgutils.get_or_insert_function(builder.module, fnty, name.format(sfx))


def microkernel(nv, masked=False, vw32=None, registers=None):
    """The intrinsic ``mk(A, a0, sa_i, sa_k, mr, P, p0, sp_k, K, C, c0, ldc, cs_v, nc, accumulate)``
    for tiles of ``nv`` vectors (see the module docstring). A, P, C: C-contiguous arrays of one
    float dtype, offsets in elements from their first element; K >= 1, 1 <= mr <= MR.
    ``vw32`` / ``registers`` build the kernel of another vector width / register count (the
    tests check the code of other CPUs that way; the engine uses this CPU's)."""
    vw32 = vw32 or VW32
    mr_max = tile_rows(nv, registers)

    @intrinsic
    def mk(typingctx, A, a0, sa_i, sa_k, mr, P, p0, sp_k, K, C, c0, ldc, cs_v, nc, accumulate):
        for a in (A, P, C):
            if not isinstance(a, types.Array) or a.layout != "C" or a.dtype != A.dtype:
                return None
        sig = types.void(A, a0, sa_i, sa_k, mr, P, p0, sp_k, K, C, c0, ldc, cs_v, nc,
                         accumulate)

        def codegen(context, builder, signature, args):
            ts = signature.args
            (A_, a0_, sai_, sak_, mr_, P_, p0_, spk_, K_, C_, c0_, ldc_, csv_, nc_, acc_) = args
            a0_, sai_, sak_, mr_, p0_, spk_, K_, c0_, ldc_, csv_, nc_ = (
                _i64(context, builder, v, t) for v, t in
                zip((a0_, sai_, sak_, mr_, p0_, spk_, K_, c0_, ldc_, csv_, nc_),
                    (ts[1], ts[2], ts[3], ts[4], ts[6], ts[7], ts[8], ts[10], ts[11], ts[12],
                     ts[13])))
            accumulate = context.cast(builder, acc_, ts[14], types.boolean)
            fty = context.get_value_type(ts[0].dtype)
            vw = vw32 if isinstance(fty, ir.FloatType) else vw32 // 2
            vty = ir.VectorType(fty, vw)
            i64, i32, i1 = ir.IntType(64), ir.IntType(32), ir.IntType(1)
            mty = ir.VectorType(i1, vw)
            pa = context.make_array(ts[0])(context, builder, A_).data
            pp = context.make_array(ts[5])(context, builder, P_).data
            pc = context.make_array(ts[9])(context, builder, C_).data
            fmuladd = _vec_intrinsic(builder, "llvm.fmuladd.{}", vty, [vty] * 3, vty)
            if masked:
                mload = _vec_intrinsic(builder, "llvm.masked.load.{}.p0", vty,
                                       [vty.as_pointer(), i32, mty, vty], vty)
                mstore = _vec_intrinsic(builder, "llvm.masked.store.{}.p0", vty,
                                        [vty, vty.as_pointer(), i32, mty], ir.VoidType())
                # lane masks of the nv vectors: column v*vw + lane < nc
                lanes = ir.Constant(ir.VectorType(i64, vw), list(range(vw)))
                ncv = builder.insert_element(ir.Constant(ir.VectorType(i64, vw), ir.Undefined),
                                             nc_, ir.Constant(i32, 0))
                ncv = builder.shuffle_vector(ncv, ncv, ir.Constant(ir.VectorType(i32, vw), [0] * vw))
                masks = [builder.icmp_signed("<", builder.add(lanes, ir.Constant(
                    ir.VectorType(i64, vw), [v * vw] * vw)), ncv) for v in range(nv)]
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * vw)
            undef = ir.Constant(vty, ir.Undefined)
            splat0 = ir.Constant(ir.VectorType(i32, vw), [0] * vw)
            one64 = ir.Constant(i64, 1)
            # row pointers: rows past mr repeat the last valid row (their results are dropped)
            last = builder.sub(mr_, one64)
            rows = []
            for i in range(mr_max):
                ri = ir.Constant(i64, i)
                ri = builder.select(builder.icmp_signed("<", ri, mr_), ri, last)
                rows.append(builder.gep(pa, [builder.add(a0_, builder.mul(ri, sai_))]))

            def load_p(ptr, v):
                vp = builder.bitcast(ptr, vty.as_pointer())
                if masked:
                    return builder.call(mload, [vp, ir.Constant(i32, 4), masks[v], zero])
                return builder.load(vp, align=4)

            entry = builder.block
            loop = builder.append_basic_block("mk.loop")
            done = builder.append_basic_block("mk.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), entry)
            accs = []
            for _ in range(mr_max * nv):
                ph = builder.phi(vty)
                ph.add_incoming(zero, entry)
                accs.append(ph)
            pk = builder.gep(pp, [builder.add(p0_, builder.mul(k, spk_))])
            pv = [load_p(builder.gep(pk, [ir.Constant(i64, v * vw)]), v) for v in range(nv)]
            ksa = builder.mul(k, sak_)
            new = []
            for i in range(mr_max):
                a = builder.load(builder.gep(rows[i], [ksa]))
                av = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(i32, 0)),
                                            undef, splat0)
                for v in range(nv):
                    new.append(builder.call(fmuladd, [av, pv[v], accs[i * nv + v]]))
            k1 = builder.add(k, one64)
            k.add_incoming(k1, builder.block)
            for ph, val in zip(accs, new):
                ph.add_incoming(val, builder.block)
            builder.cbranch(builder.icmp_signed("<", k1, K_), loop, done)
            builder.position_at_end(done)
            # store row i when i < mr; accumulate: C += acc, else C = acc
            def store_rows(add):
                for i in range(mr_max):
                    with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, i), mr_),
                                         likely=True):
                        crow = builder.gep(pc, [builder.add(c0_, builder.mul(
                            ir.Constant(i64, i), ldc_))])
                        for v in range(nv):
                            cp = builder.bitcast(builder.gep(crow, [builder.mul(
                                ir.Constant(i64, v), csv_)]), vty.as_pointer())
                            val = new[i * nv + v]
                            if masked:
                                if add:
                                    val = builder.fadd(builder.call(
                                        mload, [cp, ir.Constant(i32, 4), masks[v], zero]), val)
                                builder.call(mstore, [val, cp, ir.Constant(i32, 4), masks[v]])
                            else:
                                if add:
                                    val = builder.fadd(builder.load(cp, align=4), val)
                                builder.store(val, cp, align=4)

            with builder.if_else(accumulate) as (then, otherwise):
                with then:
                    store_rows(True)
                with otherwise:
                    store_rows(False)
            return context.get_dummy_value()

        return sig, codegen

    mk.MR = mr_max
    mk.NV = nv
    return mk
