"""One kernel for PyTorch's safe softmax in the f16 mode (``fuse_safe_softmax``).

``F.scaled_dot_product_attention`` exports (torch's math decomposition) as

    p = where(logical_not(max(int8(logical_not(x == -inf)), -1)), 0, softmax(x, -1))

where ``x`` is the attention's scores. After ``relax.transform.ToMixedPrecision`` the scores
arrive in float16 and are cast to float32 for the softmax and for the all-masked-row test, and
``p`` is cast back to float16 for the second product. TVM fuses that into four kernels that
write or read the scores five times in float32; for the full-size UNet at 512x512
(2 x 8 x 4096 x 4096 scores, 1 GiB in float32) they took 2.4 of the 3.0 ms of each 64x64
self-attention on the H200, synchronized per kernel (docs/results/cuda-h200-f16-tuned/
kernel-profile.json: ``cast40`` 0.88, ``fused_reshape8_cast39`` 0.87, the softmax 0.53, the
mask's max 0.16; the two products 0.33 and 0.27).

``fuse_safe_softmax`` replaces the chain with one TE kernel that reads the float16 scores
(or float32 ones, where a float32 mask was added to them),
computes in float32 exactly what the chain computes (the row's max, ``exp(x - max)``, their
sum, the quotient; 0 where every score of the row is -inf) and writes float16. "Every score is
-inf" is tested as "the sum is 0": TVM's max starts from the lowest finite float, so such a
row's max is finite and each of its exp(-inf - max) is 0, while a row with one finite score
has a term exp(0) = 1 (a test of max == -inf never fires: tests/unit/test_attention.py). The arithmetic is the same, operation for operation, as TOPI's softmax on the
cast values, so the result is bit-identical to the unfused chain on a target that schedules
both the same way (``tests/unit/test_attention.py`` checks it on llvm).

It matches the chain by structure (ops, attributes, the -inf and 0 constants, the same scores
feeding both branches) and leaves anything else alone. Applied by the f16 mode only
(``sdparity.tiers.f16.to_f16``): the float32 builds keep TVM's own lowering of the chain.
"""

from __future__ import annotations

import math

#: the primfunc name hint of the fused kernel (also how tests find it)
KERNEL = "safe_softmax_f16"


def _is_op(expr, name: str) -> bool:
    import tvm
    from tvm import relax

    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def _const_value(expr):
    """The scalar a Relax constant holds, else None."""
    from tvm import relax

    from sdparity.compile.compat import const_value

    if isinstance(expr, (relax.Var, relax.Call)):
        return None
    v = const_value(expr)
    return float(v) if v is not None and v.size == 1 else None


def _shape(expr):
    from sdparity.compile.compat import type_info

    return type_info(expr).shape


def _dtype(expr) -> str:
    from sdparity.compile.compat import type_info

    return str(type_info(expr).dtype)


class _Chain:
    """Bindings of one function (var -> value), to walk producers."""

    def __init__(self, func):
        from tvm import relax

        self.value = {}
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.value[b.var] = b.value

    def of(self, expr):
        from tvm import relax

        return self.value.get(expr, expr) if isinstance(expr, relax.Var) else expr

    def source(self, expr):
        """The float16 tensor a float32 ``astype`` of it reads, else None."""
        call = self.of(expr)
        if _is_op(call, "relax.astype") and str(call.attrs.dtype) == "float32":
            src = call.args[0]
            if _dtype(src) == "float16":
                return src
        return None

    def safe_softmax_input(self, where):
        """For ``where(all_masked(x), 0, softmax(x))``: the scores, i.e. x, or the float16
        tensor x was cast from."""
        where = self.of(where)
        if not _is_op(where, "relax.where"):
            return None
        cond, zero, sm = (self.of(a) for a in where.args)
        if not (_is_op(sm, "relax.nn.softmax") and int(sm.attrs.axis) in (-1, len(_shape(sm)) - 1)):
            return None
        if not (_is_op(zero, "relax.full_like") and _const_value(zero.args[1]) == 0.0):
            return None
        # cond = logical_not(bool(max(int8(logical_not(equal(x, -inf))), axis=-1, keepdims)))
        chain = []
        node = cond
        for name in ("relax.logical_not", "relax.astype", "relax.max", "relax.astype", "relax.logical_not",
                     "relax.equal"):
            if not _is_op(node, name):
                return None
            chain.append(node)
            node = self.of(node.args[0])
        eq = chain[-1]
        mx = chain[2]
        ndim = len(_shape(sm))
        axes = [int(a) % ndim for a in (mx.attrs.axis or [])]
        if axes != [ndim - 1] or not bool(mx.attrs.keepdims):
            return None
        scores = self.scores(sm.args[0])
        if _const_value(eq.args[1]) != -math.inf or not self.scores(eq.args[0]).same_as(scores):
            return None
        return scores

    def scores(self, expr):
        """What the chain reads: the float16 tensor a float32 cast reads, else expr itself."""
        src = self.source(expr)
        return expr if src is None else src


def _safe_softmax_te(x):
    """float16 (or float32) scores -> float16 probabilities, float32 inside, TOPI's softmax order."""
    from tvm import te, tirx

    *outer, n = x.shape
    k1 = te.reduce_axis((0, n), "k")
    k2 = te.reduce_axis((0, n), "k")
    f32 = "float32"
    mx = te.compute(outer, lambda *i: te.max(x[(*i, k1)].astype(f32), axis=k1), "softmax_max")
    ex = te.compute(x.shape, lambda *i: te.exp(x[i].astype(f32) - mx[i[:-1]]), "softmax_exp")
    sm = te.compute(outer, lambda *i: te.sum(ex[(*i, k2)], axis=k2), "softmax_sum")
    zero = tirx.const(0.0, f32)
    return te.compute(x.shape, lambda *i: tirx.Select(
        sm[i[:-1]] == zero, zero, ex[i] / sm[i[:-1]]).astype("float16"), "softmax_norm")


def fuse_safe_softmax(mod):
    """``mod`` with every float16 safe softmax whose result is cast back to float16 (through
    shape-only ops) computed by one kernel (module docstring)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Fuse(PyExprMutator):
        def __init__(self, mod, chain):
            super().__init__(mod)
            self.chain = chain
            self.count = 0

        def visit_var_binding_(self, binding):
            value = binding.value
            scores = self._match(value)
            if scores is None:
                return super().visit_var_binding_(binding)
            out = self.builder_.call_te(_safe_softmax_te, self.visit_expr(scores), primfunc_name_hint=KERNEL)
            out = self.builder_.emit(out)
            shape = _shape(binding.var)
            new = relax.op.reshape(out, shape) if not _same_shape(out, binding.var) else out
            self.count += 1
            self.set_var_remap(binding.var, self.builder_.emit(new))

        def _match(self, value):
            # astype(float16) of reshape / broadcast_to of the where
            if not (_is_op(value, "relax.astype") and str(value.attrs.dtype) == "float16"):
                return None
            node = self.chain.of(value.args[0])
            while _is_op(node, "relax.reshape") or _is_op(node, "relax.broadcast_to"):
                if _is_op(node, "relax.broadcast_to") and not _same_shape(node, node.args[0]):
                    return None
                node = self.chain.of(node.args[0])
            return self.chain.safe_softmax_input(node)

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    total = 0
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        fuse = Fuse(out, _Chain(func))
        new = fuse.visit_expr(func)
        if fuse.count:
            total += fuse.count
            lowered = fuse.builder_.get()
            for g, f in lowered.functions_items():
                if not isinstance(f, relax.Function):
                    out[g] = f
            out[gv] = relax.analysis.remove_all_unused(new)
    return out


def _same_shape(a, b) -> bool:
    import tvm_ffi

    return bool(tvm_ffi.structural_equal(_shape(a), _shape(b)))
