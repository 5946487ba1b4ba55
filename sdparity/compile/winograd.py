"""3x3 convolutions as Winograd F(2x2, 3x3): 2.25x fewer multiply-adds (issue 13).

The direct convolution spends 9*C multiply-adds on each output; Winograd's minimal filtering
algorithm F(2x2, 3x3) computes a 2x2 block of outputs from a 4x4 block of inputs with 16*C,
i.e. 4*C an output. Four kernels replace one ``conv2d`` (NCHW input, OIHW weights):

    U[e, k, c] = (G w[k, c] G^T)[e]          weight transform    (16 x K x C)
    V[e, c, p] = (B^T d[c, p] B)[e]          input transform     (16 x C x P), d: the 4x4 input
                                                                  block of tile p, zero-padded
    M[e, k, p] = sum_c U[e, k, c] V[e, c, p] 16 independent GEMMs (tiled by the GPU matmul rule)
    y[n, k, 2ty+i, 2tx+j] = (A^T M[k, p] A)[i, j]                 output transform

with tiles p = (n, ty, tx) of the output, e = (e1, e2) the 4x4 positions, and the standard
matrices (Lavin & Gray, 2016)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

Every entry is 0, +-1 or +-1/2, so the transforms add and subtract (the halves are exact in
binary): F(2x2, 3x3) is the Winograd variant whose float32 error stays at the direct
convolution's (cuDNN uses it for float32 too). Larger tiles (F(4x4, 3x3): 4x fewer products)
need entries like 1/6 and 1/24 and lose about a digit; they are not used.

Only convolutions where it pays and is exact in structure are rewritten: float32 (or the f16
mode's float16 with float32 output: transforms in float32, U and V stored in float16), NCHW/OIHW,
3x3, stride 1, dilation 1, padding 1 on every side, one group, static shapes with even output
height and width, and at least ``MIN_CHANNELS`` input channels (below that the transforms cost
more than the products they save). Everything else keeps TVM's ``topi.nn.conv``.

The parity checks judge a build that uses it exactly as any other (docs/numerics.md); the unit
tests compare it with the direct convolution in float64 and show that one wrong transform
entry fails them (tests/unit/test_winograd.py).
"""

from __future__ import annotations

#: target kinds whose builds rewrite 3x3 convolutions (measured on the lent H200:
#: docs/performance.md, "Winograd")
KINDS = frozenset({"cuda", "webgpu"})

#: fewer input channels than this keep the direct convolution (the VAE's and UNet's 3x3
#: convolutions have 128..1280; conv_in has 4)
MIN_CHANNELS = 32

# The transform matrices, as rows of (column, coefficient) for the nonzero entries only, so
# that the generated kernels add and subtract instead of multiplying by 0 and 1.
B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))


def _combine(terms):
    """sum(coef * value) without multiplying by +-1; terms: [(coef, expr)], coef != 0."""
    out = None
    for coef, value in terms:
        if coef == -1:
            out = -value if out is None else out - value
            continue
        if coef != 1:
            value = value * coef
        out = value if out is None else out + value
    return out


def _two_sided(mat, block):
    """(mat X mat^T)[a][b] for X given as block(r, s), as nested lists of expressions."""
    rows, cols = len(mat), len(mat[0])
    return [[_combine([(mat[a][r] * mat[b][s], block(r, s))
                       for r in range(cols) for s in range(cols) if mat[a][r] * mat[b][s] != 0])
             for b in range(rows)] for a in range(rows)]


def _cell(e, cells):
    """cells[e // 4][e % 4] of a 4x4 grid for a symbolic e: a 16-way choice, unrolled."""
    from tvm import te

    out = cells[3][3]
    for idx in range(14, -1, -1):
        out = te.if_then_else(e == idx, cells[idx // 4][idx % 4], out)
    return out


def applies(call) -> bool:
    """Whether this relax.nn.conv2d call is one Winograd F(2x2, 3x3) computes."""
    from sdparity.compile.compat import type_info

    a = call.attrs
    x, w = (type_info(arg) for arg in call.args)
    try:
        xs = [int(d) for d in x.shape]
        ws = [int(d) for d in w.shape]
    except (TypeError, ValueError):  # symbolic
        return False
    return (str(a.data_layout) == "NCHW" and str(a.kernel_layout) == "OIHW"
            and str(a.out_layout) in ("NCHW", "") and int(a.groups) == 1
            and [int(s) for s in a.strides] == [1, 1] and [int(d) for d in a.dilation] == [1, 1]
            and [int(p) for p in a.padding] == [1, 1, 1, 1]
            and (str(x.dtype), str(w.dtype)) in (("float32", "float32"), ("float16", "float16"))
            and (a.out_dtype is None or str(a.out_dtype) in ("", "float32", "void"))
            and ws[2:] == [3, 3] and xs[1] >= MIN_CHANNELS and xs[2] % 2 == 0 and xs[3] % 2 == 0)


def buffer_bytes(call) -> int:
    """The largest of the rewrite's buffers (U: 16 x K x C, V: 16 x C x P, M: 16 x K x P), in
    bytes at 4 a value (the f16 mode's float16 U and V counted as float32: an upper bound)."""
    from sdparity.compile.compat import type_info

    n, c, h, wd = (int(d) for d in type_info(call.args[0]).shape)
    k = int(type_info(call.args[1]).shape[0])
    tiles = n * (h // 2) * (wd // 2)
    return 4 * 16 * max(k * c, c * tiles, k * tiles)


def legalizer(max_buffer: int | None = None):
    """The customize_legalize_map entry for relax.nn.conv2d: Winograd where ``applies`` and,
    with ``max_buffer`` (the target's largest buffer a kernel may bind: ``Backend.max_buffer``),
    where every buffer of the rewrite fits it; else TVM's direct convolution. SDXL's VAE at
    1024x1024 needs 2-4 GiB Winograd buffers where its direct convolutions bind at most 0.5 GiB
    (docs/results/webgpu-sdxl-buffers)."""

    def rule(bb, call):
        import tvm

        if not applies(call) or (max_buffer is not None and buffer_bytes(call) > max_buffer):
            return tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")(bb, call)
        return legalize(bb, call)

    return rule


def legalize(bb, call):
    """Winograd F(2x2, 3x3) for a relax.nn.conv2d call that ``applies``."""
    from tvm import te

    from sdparity.compile.compat import tir, type_info

    x, w = call.args
    n, c, h, wd = (int(d) for d in type_info(x).shape)
    k = int(type_info(w).shape[0])
    th, tw = h // 2, wd // 2
    tiles = n * th * tw
    # f16 mode (float16 input and weights, float32 accumulation as ToMixedPrecision writes
    # conv2d): the transforms add in float32 and store U and V in float16, the GEMMs multiply
    # float16 and accumulate in float32 (tensor cores: compile/mma.py), the output stays float32
    half = str(type_info(x).dtype) == "float16"
    wide = (lambda v: v.astype("float32")) if half else (lambda v: v)
    narrow = (lambda v: v.astype("float16")) if half else (lambda v: v)

    def weight_transform(w):
        def f(e, ko, ci):
            return narrow(_cell(e, _two_sided(G, lambda r, s: wide(w[ko, ci, r, s]))))
        return te.compute((16, k, c), f, name="winograd_weight")

    def input_transform(x):
        def d(ci, p, r, s):  # the 4x4 input block of tile p, zero outside the image
            ni, rem = p // (th * tw), p % (th * tw)
            yy, xx = (rem // tw) * 2 + r - 1, (rem % tw) * 2 + s - 1
            inside = tir().all(yy >= 0, yy < h, xx >= 0, xx < wd)
            return te.if_then_else(inside, wide(x[ni, ci, yy, xx]), tir().const(0.0, "float32"))

        def f(e, ci, p):
            return narrow(_cell(e, _two_sided(B_T, lambda r, s: d(ci, p, r, s))))
        return te.compute((16, c, tiles), f, name="winograd_input")

    def products(u, v):
        rc = te.reduce_axis((0, c), "rc")
        return te.compute((16, k, tiles), lambda e, ko, p: te.sum(wide(u[e, ko, rc]) * wide(v[e, rc, p]), axis=rc),
                          name="winograd_gemm")

    def output_transform(m):
        def f(ni, ko, yy, xx):
            p = ni * (th * tw) + (yy // 2) * tw + xx // 2
            cells = _two_sided(A_T, lambda r, s: m[r * 4 + s, ko, p])
            i, j = yy % 2, xx % 2
            return te.if_then_else(i == 0, te.if_then_else(j == 0, cells[0][0], cells[0][1]),
                                   te.if_then_else(j == 0, cells[1][0], cells[1][1]))
        return te.compute((n, k, h, wd), f, name="winograd_output")

    u = bb.emit(bb.call_te(weight_transform, w, primfunc_name_hint="winograd_weight"))
    v = bb.emit(bb.call_te(input_transform, x, primfunc_name_hint="winograd_input"))
    m = bb.emit(bb.call_te(products, u, v, primfunc_name_hint="winograd_gemm"))
    # kOutEWiseFusable (4): FuseOps may append elementwise epilogues (bias, residual, scaling)
    # but not injective consumers; left injective, the next convolution's input transform (and
    # a resize before it) fused in and recomputed every output 16 times (VAE upsamplers)
    return bb.call_te(output_transform, m, primfunc_name_hint="winograd_output",
                      primfunc_attrs={"op_pattern": 4})
