"""Neutralizers: for each known upstream bug that a check can meet, the build-time change that
removes exactly that bug and nothing else (issue 22: "known means proven").

A failing check is labelled ``known`` only when the same check, built with the neutralizers of
the issues that pre-select it (``sdparity.known_issues``), passes its normal tolerance and
budget (sdparity.runner). So a neutralizer must

  * change only the computation the bug is in (the same Relax ops stay, so a regression in
    their lowering still shows in the neutralized build: GELU keeps ``relax.nn.gelu``, sin
    keeps ``relax.sin``, the resize keeps ``relax.image.resize2d``), and
  * compute what PyTorch computes there, to float32 rounding.

Each one is a set of converters for TVM's torch importer (``from_exported_program``'s
``custom_convert_map``: aten op name -> fn(node, importer)), applied when a build variant
carries ``"neutralize": [names]`` (part of the build key, so neutralized builds are cached on
their own). Names are the known issues' ids.
"""

from __future__ import annotations

import math
import struct

from sdparity.errors import SdparityError

# 2*pi split for a Cody-Waite reduction in float32: C1 has 15 significant bits, so k*C1 is exact
# for |k| < 2^9 (arguments up to ~3200) and x - k*C1 is exact; C2 = float32(2*pi - C1).
_C1 = 6.28125  # 201/32
_C2 = struct.unpack("f", struct.pack("f", 2.0 * math.pi - _C1))[0]  # 0.00193530717958647...
_INV_2PI = 1.0 / (2.0 * math.pi)
# float32 erf(x / sqrt(2)) is exactly -1 (|erfc| below half an ulp of 1) for x below this, so
# torch's float32 GELU is -0 there; TVM's WebGPU erf gives -1.0000001 (tvm_webgpu_gelu_erf_constants)
_GELU_ZERO_BELOW = -4.0 * math.sqrt(2.0)


def _unary_reduced(op_name: str):
    """sin/cos on the argument reduced to [-pi, pi] first (x - k*2pi, k = round(x / 2pi))."""

    def convert(node, importer):
        from tvm import relax

        x = importer.env[node.args[0]]
        dtype = _dtype(x)
        bb = importer.block_builder
        c = lambda v: relax.const(v, dtype)  # noqa: E731
        k = bb.emit(relax.op.round(relax.op.multiply(x, c(_INV_2PI))))
        r = bb.emit(relax.op.subtract(relax.op.subtract(x, relax.op.multiply(k, c(_C1))),
                                      relax.op.multiply(k, c(_C2))))
        return bb.emit(getattr(relax.op, op_name)(r))

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


def _dtype(x) -> str:
    from sdparity.compile.compat import type_info

    return type_info(x).dtype


#: known-issue id -> aten converters that remove that bug
NEUTRALIZERS: dict[str, dict] = {
    "tvm_nearest_resize_half_pixel": {"upsample_nearest2d.vec": _nearest_torch_rows},
    "tvm_webgpu_sin_cos_unreduced": {"sin.default": _unary_reduced("sin"),
                                     "cos.default": _unary_reduced("cos")},
    "tvm_webgpu_gelu_erf_constants": {"gelu.default": _gelu_exact_tail},
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
