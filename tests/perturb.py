"""TVM perturbed for negative tests: one op attribute (a legalization, an intrinsic lowering)
replaced through TVM's op-attribute registry for the duration of a ``with`` block, then put
back. The registry is in no build-cache key: build perturbed modules into a temporary cache."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def op_attr_replaced(op_name: str, attr: str, fn):
    """``op_name``'s ``attr`` (e.g. "FLegalize", "llvm.FLowerIntrinsic") is ``fn`` inside; the
    previous value (if any) is restored after."""
    import tvm

    op = tvm.ir.Op.get(op_name)
    prev = op.get_attr(attr)
    tvm.ir.register_op_attr(op_name, attr, fn, level=11)
    try:
        yield
    finally:
        op.reset_attr(attr)
        if prev is not None:
            tvm.ir.register_op_attr(op_name, attr, prev, level=10)


def floor_lowered_as_trunc():
    """TVM's llvm lowering of ``floor`` replaced by ``trunc``: a plausible codegen regression
    (the two differ only for negative non-integers, e.g. every argument of a softmax's exp)."""
    from tvm import tirx

    return op_attr_replaced("tirx.floor", "llvm.FLowerIntrinsic", lambda call: tirx.trunc(call.args[0]))


def gelu_tanh(_unused: int = 0):
    """An FLegalize for relax.nn.gelu: GELU lowered to its tanh approximation (|difference| up to
    ~2e-4 per element), the kind of change a fast-math lowering makes."""
    import math

    from tvm import tirx, topi

    def legalize(bb, call):
        c = math.sqrt(2.0 / math.pi)
        half, one = tirx.const(0.5, "float32"), tirx.const(1.0, "float32")
        return bb.call_te(lambda x: half * x * (one + topi.tanh(
            tirx.const(c, "float32") * (x + tirx.const(0.044715, "float32") * x * x * x))),
            call.args[0], primfunc_name_hint="gelu")
    return legalize


def gelu_tanh_lowered():
    """``with gelu_tanh_lowered():`` relax.nn.gelu lowered as its tanh approximation."""
    return op_attr_replaced("relax.nn.gelu", "FLegalize", gelu_tanh())
