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

``fuse_safe_softmax`` replaces the chain with one TE kernel that reads the float16 scores (or
float32 ones, where a float32 mask was added to them), computes in float32 exactly what the
chain computes (the row's max, ``exp(x - max)``, their sum, the quotient; 0 where every score
of the row is -inf) and writes float16. "Every score is -inf" is tested as "the sum is 0":
TVM's max starts from the lowest finite float, so such a row's max is finite and each of its
exp(-inf - max) is 0, while a row with one finite score has a term exp(0) = 1 (a test of
max == -inf never fires). The arithmetic is the same, operation for operation, as TOPI's
softmax on the cast values, so the result is bit-identical to the unfused chain on a target
that schedules both the same way (``tests/unit/test_attention.py`` checks both on llvm).

It matches the chain by structure (ops, attributes, the -inf and 0 constants, the same scores
feeding both branches) and leaves anything else alone. Applied by the f16 mode
(``sdparity.commands.f16.to_f16``).

``fuse_attention`` goes further for the float32 llvm builds (``schedule_cpu.rewrite_graph``):
the whole unmasked attention, both products and the safe softmax, as one kernel that the CPU
schedule runs a block of query rows at a time. The other float32 builds (CUDA, WebGPU) keep
TVM's own lowering of the chain.
"""

from __future__ import annotations

import math

#: the primfunc name hint of the fused kernel is KERNEL + "_" + its output dtype
KERNEL = "safe_softmax"


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
        """The float16 tensor a float32 ``astype`` reads, else None."""
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

    def through_shape_ops(self, expr):
        """expr's producer, past reshapes and broadcasts that keep the shape."""
        node = self.of(expr)
        while _is_op(node, "relax.reshape") or (_is_op(node, "relax.broadcast_to") and _same_shape(node, node.args[0])):
            node = self.of(node.args[0])
        return node

    def scores(self, expr):
        """What the chain reads: the float16 tensor a float32 cast reads, else expr itself."""
        src = self.source(expr)
        return expr if src is None else src


#: exp_f32's polynomial for e^r - 1 - r (Cephes' expf), r^7 first down to r^2: read by every
#: call, so a test may replace it to perturb the kernel (tests/unit/test_own_kernels.py)
EXP_F32_COEFFS = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                  5.0000001201e-1)
#: exp_f32 gives 0 below this argument (2^n would leave float32's normal range)
EXP_F32_LOW = -87.33
#: ln 2 as the two parts exp_f32's range reduction subtracts (n * hi exact in float32)
EXP_F32_LN2 = (0.693359375, -2.12194440e-4)


def exp_f32(x):
    """e^x in float32 as one vectorizable expression (Cephes' expf: x = n ln2 + r with
    |r| <= ln2 / 2, a degree-7 polynomial for e^r (EXP_F32_COEFFS), 2^n built from the exponent
    bits), for the CPU attention kernel, where LLVM turns TVM's exp into one libm call per lane
    (0.29 of 0.73 s of the full-size UNet's 64x64 attention on 2 cores). Below EXP_F32_LOW
    (where 2^n would leave the normal range, -inf included) it gives 0, where expf gives a
    denormal (at most 1.2e-38 against the row max's term 1 in a softmax sum); NaN stays NaN.
    Measured against float64 over [-87.33, 0]: at most 1.02 ulp from e^x
    (tests/unit/test_attention.py: 2); ``sdparity check`` bounds it in every llvm run
    (check/own_kernels.py, tolerances.OWN_TRANSCENDENTALS)."""
    from tvm import tirx

    f32 = "float32"

    def c(v):
        return tirx.const(v, f32)

    n = tirx.floor(x * c(1.44269504088896341) + c(0.5))
    r = x - n * c(EXP_F32_LN2[0]) - n * c(EXP_F32_LN2[1])
    y = c(EXP_F32_COEFFS[0])
    for coef in EXP_F32_COEFFS[1:]:
        y = y * r + c(coef)
    y = y * r * r + r + c(1.0)
    two_n = tirx.reinterpret(f32, tirx.shift_left(n.astype("int32") + tirx.const(127, "int32"),
                                                  tirx.const(23, "int32")))
    small = tirx.Select(x < c(EXP_F32_LOW), c(0.0), y * two_n)
    return tirx.Select(x != x, x, small)


def _safe_softmax_te(x, out_dtype: str, lanes: int = 1, exp=None):
    """float16 or float32 scores -> probabilities in out_dtype, float32 inside, TOPI's softmax
    order. ``lanes``: the row max and the row sum first per lane (every lanes-th score), then
    across the lanes, so a CPU takes them in vector registers (the max is the same value; the
    sum adds in another order, within float32 rounding). ``exp``: e^x (default TVM's exp)."""
    from tvm import te, tirx

    *outer, n = x.shape
    f32 = "float32"
    exp = exp or te.exp
    by_lanes = lanes > 1 and int(n) % lanes == 0

    def row(reduce, value, name):
        """reduce(value(..., k)) over the last axis, per lane first when by_lanes."""
        if not by_lanes:
            k = te.reduce_axis((0, n), "k")
            return te.compute(outer, lambda *i: reduce(value((*i, k)), axis=k), name)
        kc = te.reduce_axis((0, int(n) // lanes), "kc")
        kl = te.reduce_axis((0, lanes), "kl")
        part = te.compute((*outer, lanes), lambda *i: reduce(value((*i[:-1], kc * lanes + i[-1])), axis=kc),
                          f"{name}_lanes")
        return te.compute(outer, lambda *i: reduce(part[(*i, kl)], axis=kl), name)

    mx = row(te.max, lambda i: x[i].astype(f32), "softmax_max")
    ex = te.compute(x.shape, lambda *i: exp(x[i].astype(f32) - mx[i[:-1]]), "softmax_exp")
    sm = row(te.sum, lambda i: ex[i], "softmax_sum")
    zero = tirx.const(0.0, f32)
    return te.compute(x.shape, lambda *i: tirx.Select(
        sm[i[:-1]] == zero, zero, ex[i] / sm[i[:-1]]).astype(out_dtype), "softmax_norm")


def fuse_safe_softmax(mod):
    """``mod`` with every safe softmax whose result is cast back to float16 (through shape-only
    ops) computed by one kernel (module docstring)."""

    def match(chain, value):
        # astype(float16) of reshape / broadcast_to of the where
        if not (_is_op(value, "relax.astype") and str(value.attrs.dtype) == "float16"):
            return None
        scores = chain.safe_softmax_input(chain.through_shape_ops(value.args[0]))
        return None if scores is None else (_safe_softmax_te, [scores, "float16"], f"{KERNEL}_float16")

    return _rewrite(mod, match)


def _attention_te(q, kt, v):
    """Attention of float32 (BH, T, D) queries, (BH, D, S) transposed keys and (BH, S, Dv)
    values as the unfused chain computes it (scores summed over D in order, the safe softmax,
    the output summed over S in order), except the softmax's exp (``exp_f32``) and the order of
    its row sum (16 partial sums): both vectorize on a CPU, within float32 rounding."""
    from tvm import te

    bh, t, d = q.shape
    s_len, dv = kt.shape[2], v.shape[2]
    k = te.reduce_axis((0, d), "k")
    scores = te.compute((bh, t, s_len), lambda b, i, j: te.sum(q[b, i, k] * kt[b, k, j], axis=k), "attn_scores")
    p = _safe_softmax_te(scores, "float32", lanes=16, exp=exp_f32)
    j = te.reduce_axis((0, s_len), "j")
    return te.compute((bh, t, dv), lambda b, i, c: te.sum(p[b, i, j] * v[b, j, c], axis=j), "attn_out")


#: the primfunc name hint (and attribute) of the whole-attention kernel of ``fuse_attention``
ATTENTION = "sdparity_attention"


def fuse_attention(mod):
    """``mod`` with every unmasked float32 attention (``matmul(safe_softmax(matmul(q, kt)), v)``
    as torch exports scaled_dot_product_attention) computed by one kernel (``_attention_te``),
    which the CPU schedule (``schedule_cpu``) runs a block of query rows at a time: the
    (BH, T, S) scores and probabilities are never written whole (1 GiB each for the full-size
    UNet's 64x64 self-attention). Same operations in the same order as the unfused chain.
    The kernel is marked opaque (nothing fuses into it) and ``sdparity.attention``."""

    def match(chain, value):
        if not (_is_op(value, "relax.matmul") and _dtype(value) == "float32"):
            return None
        probs, v = value.args
        where = chain.through_shape_ops(probs)
        scores = chain.safe_softmax_input(where)
        if scores is None or _dtype(scores) != "float32":
            return None
        product = chain.through_shape_ops(scores)
        if not (_is_op(product, "relax.matmul") and _dtype(product) == "float32"):
            return None
        q, kt = product.args
        shapes = [_ints(_shape(e)) for e in (q, kt, v, probs)]
        if any(sh is None or len(sh) != 3 for sh in shapes) or any(_dtype(e) != "float32" for e in (q, kt, v)):
            return None
        (bh, t, d), (bh2, d2, s_len), (bh3, s2, _), (bh4, t2, s3) = shapes
        if not (bh == bh2 == bh3 == bh4 and d == d2 and s_len == s2 == s3 and t == t2):
            return None
        if _ints(_shape(scores))[-2:] != [t, s_len]:  # the reshapes keep each (T, S) matrix whole
            return None
        return _attention_te, [q, kt, v], ATTENTION

    return _rewrite(mod, match, attrs={"op_pattern": 8, ATTENTION: True})


def attention_instances(mod) -> list[dict]:
    """The distinct shapes of the ``fuse_attention`` kernels in ``mod`` (a module after the
    rewrite, scheduled or not): [{"q": [BH, T, D], "kt": [BH, D, S], "v": [BH, S, Dv]}, ...],
    read from each marked kernel's parameters (the own-kernel check builds each shape alone)."""
    from tvm import tirx

    found = []
    for _, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and func.attrs.get(ATTENTION, False):
            # TVM 0.27's parameters are buffers; older releases map handle vars to buffers
            bmap = getattr(func, "buffer_map", None)
            q, kt, v = (bmap[p] if bmap is not None else p for p in list(func.params)[:3])
            shapes = {name: [int(x) for x in b.shape] for name, b in zip(("q", "kt", "v"), (q, kt, v))}
            if shapes not in found:
                found.append(shapes)
    return found


def _ints(shape):
    """A static shape's dims as ints, else None."""
    try:
        return [int(x) for x in shape]
    except (TypeError, ValueError):
        return None


def _rewrite(mod, match, attrs: dict | None = None):
    """Replace every binding ``match(chain, value)`` accepts with ``call_te(fn, *args)``
    (reshaped to the binding's shape); ``attrs`` go on each new kernel."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Rewrite(PyExprMutator):
        def __init__(self, mod, chain):
            super().__init__(mod)
            self.chain = chain
            self.count = 0

        def visit_var_binding_(self, binding):
            found = match(self.chain, binding.value)
            if found is None:
                return super().visit_var_binding_(binding)
            fn, args, name = found
            args = [self.visit_expr(a) if isinstance(a, relax.Expr) else a for a in args]
            out = self.builder_.emit(self.builder_.call_te(fn, *args, primfunc_name_hint=name))
            new = relax.op.reshape(out, _shape(binding.var)) if not _same_shape(out, binding.var) else out
            self.count += 1
            self.set_var_remap(binding.var, self.builder_.emit(new))

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        rewrite = Rewrite(out, _Chain(func))
        new = rewrite.visit_expr(func)
        if rewrite.count:
            for g, f in rewrite.builder_.get().functions_items():
                if isinstance(f, tirx.PrimFunc) and g.name_hint not in {x.name_hint for x in out.get_global_vars()}:
                    for k, val in (attrs or {}).items():
                        f = f.with_attr(k, val)
                    out[g] = f
            out[gv] = relax.analysis.remove_all_unused(new)
    return out


def _same_shape(a, b) -> bool:
    import tvm_ffi

    return bool(tvm_ffi.structural_equal(_shape(a), _shape(b)))
