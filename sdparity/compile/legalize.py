"""Legalizations more precise than TVM's defaults, shared by every target (one place), and
the one faster one: 3x3 convolutions as Winograd F(2x2, 3x3) on the target kinds listed in
``sdparity/compile/winograd.py`` (its float32 error stays at the direct convolution's).

GroupNorm. TVM's ``topi.nn.group_norm`` sums x and x*x in float32 over a whole group and
takes E[x^2] - E[x]^2. For the SD VAE decoder (up to 1M elements a group at 512x512,
activations far from zero) that cancels badly. Measured on one 512x64x64 GroupNorm(32),
x ~ N(mean, 1), max error against float64 at mean 0 / 10 / 100: 7.4e-5 / 9.3e-3 / 0.78
(torch float32 on the CPU: 1.0e-6 / 3.7e-6 / 3.1e-5); on the full VAE it put the 0..255 image 0.118 off (float32 noise
floor 5e-4), failing the "full" tolerance, with or without schedules.

Two replacements, same structure (two-level sums: along the innermost axis for every
(n, c, rows...), then over each group's rows, so a GPU has N*C*H independent sums instead
of 32 sums of 1M numbers):

* ``float64`` (targets with float64: llvm, cuda, vulkan): sums of x and x*x in float64;
  only the output's float32 rounding is left.
* ``float32`` (targets without it: WebGPU, as WGSL has no f64; Metal): every value is taken
  relative to the group's first element (sums of small numbers: the float32 sum of 1M values near 100 alone was
  1e-4 off), then two passes, the mean first, then the sum of squared deviations from it:
  no cancellation. Measured on the GroupNorm above (built for llvm, float64 reference),
  max error at mean 0 / 10 / 100: 5.3e-6 / 6.6e-6 / 4.3e-6 (without the shift: 3.8e-6 /
  2.4e-5 / 3.7e-4; the float64 variant: 1.0e-6 / 9.9e-7 / 8.9e-7).

Layouts other than NCHW-style (channel axis 1, reduced axes 2..) and symbolic channel
counts keep TVM's legalization. Symbolic batch and spatial sizes (symbolic-shape builds of
the UNet and VAE) get the precise one: with TVM's, the tiny VAE built for any latent size was
2-3x further from torch than its fixed-shape build (err/floor 2.3-4.7 vs 1.0-1.6 at 8x18).

Which one a build gets is a capability of its backend (``Backend.float64``), passed in by the
build (``schedule.schedule_for(..., float64=backend.float64)``), never read from a name. A
caller without a backend at hand (the CPU schedules' map, the trusted llvm build of kernel
replay, the tuner) passes nothing and gets float64 only on the target kinds in
``FLOAT64_KINDS``; any other kind (Metal, a new one) gets the float32 variant, which is right
on every target.
"""

from __future__ import annotations

import functools
import operator

from sdparity.compile.compat import type_info


def _shape(x) -> list:
    """x's dims: ints where static, the PrimExprs where symbolic."""
    return [int(d) if type(d).__name__ == "IntImm" else d for d in type_info(x).shape]


def _group_norm(stats_dtype: str):
    def legalize(bb, call):
        from tvm import te, topi

        x, gamma, beta = call.args
        a = call.attrs
        shape = _shape(x)
        info = type_info(x)
        simple = (len(shape) >= 3 and isinstance(shape[1], int) and int(a.channel_axis) == 1
                  and str(info.dtype) == "float32" and [int(i) for i in a.axes] == list(range(2, len(shape))))
        if not simple:
            return bb.call_te(topi.nn.group_norm, x, gamma, beta, a.num_groups, a.channel_axis,
                              a.axes, a.epsilon)
        groups, eps = int(a.num_groups), float(a.epsilon)
        per = shape[1] // groups
        count = functools.reduce(operator.mul, shape[2:], per)  # int, or a PrimExpr when symbolic
        rows = shape[2:-1]
        acc = stats_dtype
        n_acc = te.const(float(count), acc) if isinstance(count, int) else count.astype(acc)

        def row_sums(value, tag):
            rw = te.reduce_axis((0, shape[-1]), "rw")
            return te.compute((shape[0], shape[1], *rows),
                              lambda n, c, *r: te.sum(value(n, c, *r, rw), axis=rw), tag)

        def group_sums(part, tag):
            rc = te.reduce_axis((0, per), "rc")
            rr = [te.reduce_axis((0, d), f"rr{i}") for i, d in enumerate(rows)]
            return te.compute((shape[0], groups), lambda n, g: te.sum(part[(n, g * per + rc, *rr)],
                                                                      axis=[rc, *rr]), tag)

        def compute(x, gamma, beta):
            if acc == "float64":
                xv = lambda n, c, *r: x[(n, c, *r)].astype(acc)  # noqa: E731
            else:  # relative to one element of the group: sums of small numbers
                zero = [0] * len(shape[2:])
                xv = lambda n, c, *r: x[(n, c, *r)] - x[(n, (c // per) * per, *zero)]  # noqa: E731
            s1 = group_sums(row_sums(xv, "gn_row_sum"), "gn_sum")
            mean = te.compute((shape[0], groups), lambda n, g: s1[n, g] / n_acc, "gn_mean")
            if acc == "float64":  # E[x^2] - E[x]^2 is exact enough in float64
                sq = lambda n, c, *r: xv(n, c, *r) * xv(n, c, *r)  # noqa: E731
                s2 = group_sums(row_sums(sq, "gn_row_sumsq"), "gn_sumsq")
                var = te.compute((shape[0], groups), lambda n, g: te.max(
                    s2[n, g] / n_acc - mean[n, g] * mean[n, g], te.const(0.0, acc)), "gn_var")
            else:  # two passes: squared deviations from the mean
                def dev2(n, c, *r):
                    d = xv(n, c, *r) - mean[n, c // per]
                    return d * d

                s2 = group_sums(row_sums(dev2, "gn_row_dev2"), "gn_dev2")
                var = te.compute((shape[0], groups), lambda n, g: s2[n, g] / n_acc, "gn_var")

            def norm(n, c, *rest):
                y = (xv(n, c, *rest) - mean[n, c // per]) / te.sqrt(var[n, c // per] + te.const(eps, acc))
                return y.astype("float32") * gamma[c] + beta[c]

            return te.compute(shape, norm, "gn_norm")

        return bb.call_te(compute, x, gamma, beta, primfunc_name_hint=f"group_norm_{acc}")

    return legalize


#: TVM target kinds whose kernels have float64, for callers that build without a backend (a
#: backend passes its own ``Backend.float64``); any kind not listed gets float32 statistics
FLOAT64_KINDS = frozenset({"llvm", "cuda", "vulkan"})


def stats_dtype(target_kind: str, float64: bool | None = None) -> str:
    """The dtype of GroupNorm statistics: "float64" where the target has float64 (the backend's
    capability; None: ``FLOAT64_KINDS``), else "float32"."""
    has = (target_kind in FLOAT64_KINDS) if float64 is None else float64
    return "float64" if has else "float32"


def precise_legalize_map(target_kind: str, winograd: bool | None = None, float64: bool | None = None,
                         max_buffer: int | None = None) -> dict:
    """customize_legalize_map for relax.transform.LegalizeOps on this target kind.

    ``winograd``: rewrite 3x3 convolutions as Winograd F(2x2, 3x3) (``compile/winograd.py``);
    by default on the target kinds listed there. ``float64``: whether the target has float64
    (``Backend.float64``; None: ``stats_dtype``'s default). ``max_buffer``: the largest buffer
    a kernel of the target may bind (``Backend.max_buffer``; None: no limit): a Winograd
    rewrite whose buffers would not fit keeps the direct convolution."""
    from sdparity.compile import winograd as wg

    out = {"relax.nn.group_norm": _group_norm(stats_dtype(target_kind, float64))}
    if (target_kind in wg.KINDS) if winograd is None else winograd:
        out["relax.nn.conv2d"] = wg.legalizer(max_buffer)
    return out


def apply(mod, target, float64: bool | None = None, max_buffer: int | None = None):
    """LegalizeOps with the precise map (inside the target's context)."""
    from tvm import relax

    with target:
        return relax.transform.LegalizeOps(customize_legalize_map=precise_legalize_map(
            target.kind.name, float64=float64, max_buffer=max_buffer))(mod)


def group_norm_only(mod, target, float64: bool | None = None):
    """Only the GroupNorms of ``mod`` legalized (the precise GroupNorm for ``float64``), every
    other op left for a later LegalizeOps: how a CPU build of a backend without float64 gets the
    float32 statistics while the CPU schedules legalize the rest (``schedule.schedule_for``)."""
    import tvm
    from tvm import relax

    ops: set[str] = set()

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            ops.add(e.op.name)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    rule = {"relax.nn.group_norm": _group_norm(stats_dtype(target.kind.name, float64))}
    with target:
        return relax.transform.LegalizeOps(customize_legalize_map=rule,
                                           skip_ops=sorted(ops - set(rule)))(mod)
