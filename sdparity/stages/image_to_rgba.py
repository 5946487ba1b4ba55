"""Pack a float image (1, H, W, 3) into (H, W) uint32 = r | g<<8 | b<<16 | 255<<24.

Defined semantics for every float input, so no backend's undefined float->u32 conversion is
ever reached (WGSL clamps, LLVM fptoui of NaN/out-of-range is poison):
  v = round_half_to_even(x), then clamp to [0, 255];  NaN -> 0;  +Inf -> 255;  -Inf -> 0.
The clamp happens in float before the cast, so the cast only sees 0..255. NaN and Inf are
recognised from the float's bits, not with isnan(): on WebGPU (SwiftShader) an isnan-based
version turned NaN into 255, since WGSL lets the compiler assume NaN never occurs.
"""

from __future__ import annotations

import numpy as np

from sdparity.compile.compat import sym_var, tensor_type, tir
from sdparity.registry import Case, Output, Stage, StageIR, register

# Values whose packing is defined case by case (ties, clamp, NaN, +-Inf, float32 extremes).
EDGE_PIXELS = np.array(
    [0.0, 255.0, -0.0, 0.5, 1.5, 2.5, 254.5, 255.5, -0.5, -1.0, 256.0, 1e9, -1e9,
     np.nan, np.inf, -np.inf, 127.49999, 127.50001, 3.4e38, -3.4e38], dtype=np.float32)


def pack_reference(img: np.ndarray) -> np.ndarray:
    """numpy definition of the packer (the reference: numpy's round is ties-to-even)."""
    x = np.asarray(img, dtype=np.float32)[0]
    with np.errstate(invalid="ignore"):
        v = np.clip(np.round(x), 0, 255)
    v = np.where(np.isnan(x), 0, v).astype(np.uint32)
    return v[..., 0] | (v[..., 1] << 8) | (v[..., 2] << 16) | np.uint32(255 << 24)


@register
class ImageToRGBA(Stage):
    name = "image_to_rgba"
    accepts_nonfinite = True  # NaN/Inf packing is defined (module docstring)
    reference_kind = "numpy"

    def torch_eager(self, function):
        def pack(img):
            import torch

            v = torch.nan_to_num(torch.round(img[0]), nan=0.0).clamp(0, 255).to(torch.int64)
            return v[..., 0] | (v[..., 1] << 8) | (v[..., 2] << 16) | (255 << 24)

        return pack
    description = "(1,H,W,3) float -> (H,W) uint32 RGBA, bit-exact, defined for NaN/Inf/out of range"
    uses_model = False
    outputs = (Output("rgba", integer=True, image=True),)
    functions = ("image_to_rgba",)
    faults = {"round_half_away": "rounds .5 ties away from zero", "no_clamp": "casts without clamping"}

    def build_ir(self, model, variant):
        from tvm import relax, te

        tirx = tir()

        h, w = sym_var("h"), sym_var("w")
        fault = self.fault

        def channel(x):
            if fault == "round_half_away":
                r = tirx.floor(x + tirx.const(0.5, "float32"))
            else:
                r = tirx.nearbyint(x)  # round half to even, like numpy/torch/WGSL round
            if fault != "no_clamp":
                f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
                u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
                r = tirx.max(tirx.min(r, f32(255.0)), f32(0.0))
                # NaN and +-Inf are recognised from the bits: WGSL lets a compiler assume
                # there are none, so isnan() or a float clamp of them is not reliable there.
                bits = tirx.reinterpret("uint32", x)
                special = (bits & u32(0x7F800000)) == u32(0x7F800000)
                nan = (bits & u32(0x007FFFFF)) != u32(0)
                negative = (bits >> u32(31)) == u32(1)
                special_value = tirx.Select(tirx.Or(nan, negative), f32(0.0), f32(255.0))
                r = tirx.Select(special, special_value, r)
            return r.astype("uint32")

        def pack(a):
            return te.compute(
                (h, w),
                lambda i, j: channel(a[0, i, j, 0])
                | (channel(a[0, i, j, 1]) << tirx.const(8, "uint32"))
                | (channel(a[0, i, j, 2]) << tirx.const(16, "uint32"))
                | tirx.const(255 << 24, "uint32"),
                name="image_to_rgba",
            )

        img = relax.Var("image", tensor_type((1, h, w, 3), "float32"))
        bb = relax.BlockBuilder()
        with bb.function("image_to_rgba", [img]):
            out = bb.emit_te(pack, img, primfunc_name_hint="image_to_rgba_kernel")
            bb.emit_func_output(out)
        return StageIR(bb.get(), {})

    def cases(self, model, variant, seed):

        rng = np.random.default_rng(seed)
        ramp = np.arange(0, 256, 0.25, dtype=np.float32)  # every tie and quarter in range
        edge_img = np.concatenate([ramp, EDGE_PIXELS, -ramp - 0.5, ramp + 255.5])
        edge_img = np.resize(edge_img, (1, 16, edge_img.size // 48 + 1, 3)).astype(np.float32)
        cases = [("edges", edge_img),
                 ("random_64x64", rng.uniform(-10, 265, (1, 64, 64, 3)).astype(np.float32)),
                 ("integers_7x5", rng.integers(0, 256, (1, 7, 5, 3)).astype(np.float32))]
        return [Case(label, "image_to_rgba", [img], lambda dtype, _x=img: [pack_reference(_x)],
                     self.outputs, {"image": list(img.shape)}) for label, img in cases]
