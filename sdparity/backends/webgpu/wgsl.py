"""Relax rewrites for what TVM's WGSL printer cannot express (applied before scheduling)."""

from __future__ import annotations

_NARROW_INTS = ("int8", "int16", "uint8", "uint16")


def legalize_for_webgpu(mod):
    """Rewrite what TVM's WGSL printer cannot express, keeping every result the same.

    * ``astype(bool -> int8/16)`` becomes ``astype(bool -> float32)``. torch exports
      ``any(mask)`` as an int8 cast then ``max`` (CLIP's attention mask). WGSL has no 8/16-bit
      storage, and the identity of an int32 max (INT32_MIN) is printed as ``-2147483648i``,
      which WGSL rejects; float32 holds 0/1 exactly and type inference carries it to the
      consumers (max, then astype back to bool).
    * float32 constants +-inf become +-3e38: WGSL has no infinity literal (the printer
      writes ``inff``, and an infinite const-expression is a shader-creation error). Masks
      use them as "minus infinity": exp(-3e38 - m) is 0 like exp(-inf), and a masked score
      (score + -3e38 rounds back to -3e38) still compares equal to the mask value. Not
      FLT_MAX: the printer writes 7 significant digits, and "3.402823e+38f" is another float
      than FLT_MAX, so a comparison between an inlined literal and the same constant passed
      as a tensor would fail; 3e38 survives the round trip exactly.
    """
    import numpy as np
    import tvm
    from tvm import relax

    from sdparity.compile.compat import const_value, type_info

    astype = tvm.ir.Op.get("relax.astype")

    @relax.expr_functor.mutator
    class Legalize(relax.PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if call.op.same_as(astype) and str(call.attrs.dtype) in _NARROW_INTS:
                src = call.args[0]
                if getattr(type_info(src), "dtype", None) == "bool":
                    return relax.op.astype(src, "float32")
            return call

        def visit_generic_const_(self, const):  # TVM 0.27: relax constants are GenericConst
            value = const_value(const)
            if value is not None and value.dtype == np.float32 and np.isinf(value).any():
                return relax.const(np.nan_to_num(value, nan=np.nan, posinf=3e38, neginf=-3e38), "float32")
            return const

        visit_constant_ = visit_generic_const_  # the name before TVM 0.27

    @relax.transform.function_pass(opt_level=0, name="LegalizeForWebGPU")
    def legalize(func, mod, _ctx):
        return Legalize(mod).visit_expr(func)

    return legalize(mod)  # a pass: the input module is left as it was
