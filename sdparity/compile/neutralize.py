"""Neutralizers: for each known upstream bug that a check can meet, the build-time change that
removes exactly that bug and nothing else (issue 22: "known means proven").

A failing check is labelled ``known`` only when the same check, built with the neutralizers of
the issues that pre-select it (``sdparity.known_issues``), passes its normal tolerance and
budget (sdparity.runner). So a neutralizer must

  * change only the computation the bug is in: where the bug is in the use of an op, the op
    stays, so a regression in its lowering still shows in the neutralized build (GELU keeps
    ``relax.nn.gelu``, the resize keeps ``relax.image.resize2d``); where the op itself is the
    bug (WGSL's sin/cos builtins), it is computed from + - * instead, and a regression of that
    op alone would be hidden in the neutralized build (the as-built check still fails, so it
    shows as ``known`` with its as-built error, which the gate compares), and
  * compute what PyTorch computes there, to float32 rounding.

Each one is a set of converters for TVM's torch importer (``from_exported_program``'s
``custom_convert_map``: aten op name -> fn(node, importer)), applied when a build variant
carries ``"neutralize": [names]`` (part of the build key, so neutralized builds are cached on
their own). Names are the known issues' ids.
"""

from __future__ import annotations

import math

from sdparity.errors import SdparityError

# sin/cos in float32 arithmetic alone: k = round(x * 2/pi), r = x - k*pi/2 by a four-part
# Cody-Waite split, then the Taylor polynomials of sin and cos on |r| <= pi/4 (truncation below
# 2e-9) and the quadrant. TVM prints WGSL float literals with 7 significant digits (NOTES.md,
# WebGPU): P1 = 1.5625 and P2 = 2^-7 print exactly and have 5 and 1 significant bits, so k*P1,
# k*P2 and both subtractions are exact for |k| < 2^12 (|x| < ~6400; SD's time projection reaches
# ~1000); P3 is taken as its own 7-digit decimal (what the WGSL will hold), P4 the rest.
_P1, _P2 = 1.5625, 2.0**-7
_P3 = float("%.7g" % (math.pi / 2 - _P1 - _P2))
_P4 = math.pi / 2 - _P1 - _P2 - _P3
# float32 erf(x / sqrt(2)) is exactly -1 (|erfc| below half an ulp of 1) for x below this, so
# torch's float32 GELU is -0 there; TVM's WebGPU erf gives -1.0000001 (tvm_webgpu_gelu_erf_constants)
_GELU_ZERO_BELOW = -4.0 * math.sqrt(2.0)
_SIN = [(-1) ** n / math.factorial(2 * n + 1) for n in range(1, 5)]  # r^3 .. r^9
_COS = [(-1) ** n / math.factorial(2 * n) for n in range(1, 5)]  # r^2 .. r^8


def _sin_cos_software(which: str):
    """sin or cos computed with + - * round floor only: WGSL's builtins are specified to 2^-11
    absolute error on [-pi, pi] and to nothing outside it (tvm_webgpu_sin_cos_unreduced)."""

    def convert(node, importer):
        from tvm import relax

        op = relax.op
        x = importer.env[node.args[0]]
        dtype = _dtype(x)
        bb = importer.block_builder
        c = lambda v: relax.const(v, dtype)  # noqa: E731
        k = bb.emit(op.round(op.multiply(x, c(2.0 / math.pi))))
        r = bb.emit(op.subtract(op.subtract(x, op.multiply(k, c(_P1))), op.multiply(k, c(_P2))))
        r = bb.emit(op.subtract(op.subtract(r, op.multiply(k, c(_P3))), op.multiply(k, c(_P4))))
        r2 = bb.emit(op.multiply(r, r))

        def poly(coefs):
            acc = c(coefs[-1])
            for a in reversed(coefs[:-1]):
                acc = op.add(c(a), op.multiply(r2, acc))
            return op.multiply(r2, acc)

        s = bb.emit(op.add(r, op.multiply(r, poly(_SIN))))
        co = bb.emit(op.add(c(1.0), poly(_COS)))
        q = bb.emit(op.subtract(k, op.multiply(c(4.0), op.floor(op.multiply(k, c(0.25))))))  # k mod 4
        if which == "cos":
            q = bb.emit(op.add(q, c(1.0)))  # cos(x) = sin(x + pi/2)
        pick = [s, co, op.negative(s), op.negative(co), s]  # q (cos: q + 1) = 0 .. 4
        out = pick[4]
        for n in (3, 2, 1, 0):
            out = op.where(op.equal(q, c(float(n))), pick[n], out)
        return bb.emit(out)

    return convert


def _gelu_exact_tail(node, importer):
    """GELU as TVM imports it (relax.nn.gelu), with -0 where float32 erf is exactly -1."""
    from tvm import relax

    if node.kwargs.get("approximate", "none") != "none":
        return importer._gelu(node)
    x = importer.env[node.args[0]]
    bb = importer.block_builder
    g = bb.emit(relax.op.nn.gelu(x))
    zero = relax.const(-0.0, _dtype(x))
    return bb.emit(relax.op.where(relax.op.less(x, relax.const(_GELU_ZERO_BELOW, _dtype(x))), zero, g))


def _nearest_torch_rows(node, importer):
    """aten.upsample_nearest2d with torch's index rule, src = floor(dst * in / out)
    (resize2d 'asymmetric' + 'floor'), for fixed and symbolic sizes."""
    from tvm import relax

    x = importer.env[node.args[0]]
    size = upsample_size(node, importer)
    if size is None:
        raise SdparityError("neutralizer tvm_nearest_resize_half_pixel: an upsampling with neither "
                            "an output size nor an integral scale")
    return importer.block_builder.emit(relax.op.image.resize2d(
        x, size, layout="NCHW", method="nearest_neighbor", coordinate_transformation_mode="asymmetric",
        rounding_method="floor"))


def upsample_size(node, importer):
    """The output size of aten.upsample_nearest2d.vec: its size nodes' Relax values (symbolic
    sizes are torch.fx Nodes), or input size * an integral scale; None otherwise."""
    x = importer.env[node.args[0]]
    size = node.args[1] if len(node.args) > 1 else None
    scale = node.args[2] if len(node.args) > 2 else None
    if size is not None:
        return [importer.env[s] if hasattr(s, "op") else s for s in size]
    if scale is not None and all(float(f).is_integer() for f in scale):
        shape = importer.shape_of(x)
        return [shape[2 + i] * int(f) for i, f in enumerate(scale)]
    return None


def _argmax_int32(node, importer):
    """aten.argmax over one axis as TVM imports it, but in 32-bit arithmetic only: the first index
    of the maximum, min(where(x == max(x), iota, n)), int32 (WGSL has no 64-bit integers:
    tvm_webgpu_int64_argmax). Torch's argmax also returns the first maximal index. The maximum
    of integers is taken as -min(-x): the identity of an int32 max, INT32_MIN, prints as a WGSL
    literal WGSL rejects (backends/webgpu/wgsl.py); exact unless x holds INT32_MIN itself, which
    token ids (the pooling's argmax input) never do."""
    from tvm import relax

    x = importer.env[node.args[0]]
    axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)) or False
    shape = importer.shape_of(x)
    if axis is None or len(shape) == 0:
        raise SdparityError("neutralizer tvm_webgpu_int64_argmax: an argmax over all axes")
    axis = int(axis) % len(shape)
    n = int(shape[axis])
    op, bb = relax.op, importer.block_builder
    iota = op.reshape(op.arange(0, n, 1, "int32"), [n if i == axis else 1 for i in range(len(shape))])
    if _dtype(x).startswith("int"):
        top = op.negative(op.min(op.negative(x), axis=[axis], keepdims=True))
    else:
        top = op.max(x, axis=[axis], keepdims=True)
    first = bb.emit(op.where(op.equal(x, top), iota, relax.const(n, "int32")))
    return bb.emit(op.min(first, axis=[axis], keepdims=bool(keepdim)))


def _pooled_rows_int32(node, importer):
    """aten.index.Tensor for ``x[arange(B), j]`` on x (B, S, H) (the text encoders' pooling at the
    end-of-text token) as a gather of rows B*S -> B with int32 indices i*S + j; any other
    indexing as TVM imports it."""
    from tvm import relax

    x = importer.env[node.args[0]]
    idx = node.args[1]
    first = idx[0] if len(idx) == 2 else None
    shape = importer.shape_of(x)
    rows = (first is not None and getattr(first, "target", None) is not None
            and "arange" in str(first.target) and len(shape) == 3
            and list(first.args) in ([int(shape[0])], [0, int(shape[0])], [0, int(shape[0]), 1]))
    if not rows:
        return importer._index_tensor(node)
    b, n, h = (int(d) for d in shape)
    op, bb = relax.op, importer.block_builder
    j = op.astype(importer.env[idx[1]], "int32")
    flat = bb.emit(op.add(op.multiply(op.arange(0, b, 1, "int32"), relax.const(n, "int32")), j))
    return bb.emit(op.take(op.reshape(x, [b * n, h]), flat, axis=0))


def _int32_stays_int32(node, importer):
    """aten._to_copy of int32 values (the prompt's token ids) to int64 kept in int32: the same
    values (below 2^31); TVM materializes the int64 copy where it has two users (SDXL's second
    encoder embeds the ids and pools at their argmax), a buffer WGSL cannot hold. Any other
    copy as TVM imports it."""
    import torch

    x = importer.env[node.args[0]]
    if node.kwargs.get("dtype") == torch.int64 and _dtype(x) == "int32":
        return x
    return importer._to_copy(node)


def _dtype(x) -> str:
    from sdparity.compile.compat import type_info

    return str(type_info(x).dtype)


#: known-issue id -> aten converters that remove that bug
NEUTRALIZERS: dict[str, dict] = {
    "tvm_nearest_resize_half_pixel": {"upsample_nearest2d.vec": _nearest_torch_rows},
    "tvm_webgpu_sin_cos_unreduced": {"sin.default": _sin_cos_software("sin"),
                                     "cos.default": _sin_cos_software("cos")},
    "tvm_webgpu_gelu_erf_constants": {"gelu.default": _gelu_exact_tail},
    "tvm_webgpu_int64_argmax": {"argmax.default": _argmax_int32, "index.Tensor": _pooled_rows_int32,
                                "_to_copy.default": _int32_stays_int32},
    # the symbolic-size conversion (frontend._symbolic_upsample_nearest), switched on by name
    "tvm_symbolic_upsample": {},
}


def convert_map(names) -> dict:
    """The importer's converters for a list of neutralizer names (unknown names are an error:
    a stale name in a cache key or report must not silently build the unneutralized module)."""
    out: dict = {}
    for n in names or ():
        if n not in NEUTRALIZERS:
            raise SdparityError(f"no neutralizer named {n!r}; there are: {', '.join(sorted(NEUTRALIZERS))}")
        for op, fn in NEUTRALIZERS[n].items():
            if op in out:
                raise SdparityError(f"neutralizers {sorted(names)} both convert {op}")
            out[op] = fn
    return out
