"""sdparity.compile.attention.fuse_safe_softmax: the f16 mode's one-kernel safe softmax, on real
torch exports of ``F.scaled_dot_product_attention`` built with TVM for llvm."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

B, H, T, D = 2, 2, 16, 8


class Attention(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class NoMask(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _inputs(masked_row: int | None):
    g = np.random.default_rng(0)
    q, k, v = (g.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(3))
    mask = np.ones((B, H, T, T), bool)
    if masked_row is not None:
        mask[1, 0, masked_row, :] = False  # every score of this row is -inf
    mask[0, 1, 3, 5:] = False  # a partly masked row
    return q, k, v, mask


def _f16_ir(module, args):
    from sdparity.compile.frontend import export_to_relax
    from sdparity.tiers import f16

    ir = export_to_relax(module, tuple(torch.from_numpy(a) for a in args), "attention")
    from tvm import relax

    return f16.cast_per_use(relax.transform.ToMixedPrecision(out_dtype="float32")(ir.mod))


def _run(mod, args):
    import tvm
    from tvm import relax

    from sdparity.compile.schedule import build_module, schedule_for

    target = tvm.target.Target("llvm")
    vm = relax.VirtualMachine(build_module(schedule_for(mod, target), target), tvm.cpu())
    return vm["attention"](*(tvm.runtime.tensor(a) for a in args))[0].numpy()


def _kernels(mod) -> list[str]:
    from tvm import tirx

    return sorted(gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))


def _ops(mod) -> str:
    return mod["attention"].script()


@pytest.mark.parametrize("masked", [False, True], ids=["sd-attention", "float32-mask"])
def test_fused_kernel_computes_what_the_chain_computes_bit_for_bit(masked):
    """The rewrite fires once, removes the softmax, the float32 casts of the scores and the mask
    test, and the llvm build's output is bit-identical to the unfused f16 build's (same
    operations in the same order). Unmasked (the SD UNet's attention: float16 scores) and with
    an additive float32 mask that masks part of a row (float32 scores)."""
    from sdparity.compile.attention import KERNEL, fuse_safe_softmax

    module, args = (Attention(), _inputs(None)) if masked else (NoMask(), _inputs(None)[:3])
    plain = _f16_ir(module, args)
    fused = fuse_safe_softmax(plain)
    assert "R.nn.softmax" in _ops(plain) and "R.nn.softmax" not in _ops(fused)
    assert _ops(fused).count("R.where(") == _ops(plain).count("R.where(") - 1
    assert [k for k in _kernels(fused) if k.startswith(KERNEL)] == [KERNEL]
    a, b = _run(plain, args), _run(fused, args)
    assert a.dtype == b.dtype and np.array_equal(a, b)
    ref = module(*(torch.from_numpy(x) for x in args)).numpy()
    assert np.abs(b.astype(np.float64) - ref).max() < 1e-2  # float16 of values of order 1


def test_a_row_whose_scores_are_all_masked_gives_zeros_as_torch_does():
    """PyTorch's safe softmax gives 0 (not NaN) for a row with every score -inf; the fused
    kernel must too (its test is max == -inf)."""
    from sdparity.compile.attention import fuse_safe_softmax

    args = _inputs(masked_row=7)
    out = _run(fuse_safe_softmax(_f16_ir(Attention(), args)), args)
    ref = Attention()(*(torch.from_numpy(x) for x in args)).numpy()
    assert np.isfinite(out).all()
    assert np.array_equal(out[1, 0, 7], np.zeros(D, np.float32)) and np.array_equal(ref[1, 0, 7], out[1, 0, 7])


def test_other_chains_are_left_alone():
    """Only the exact safe-softmax chain between float16 tensors is rewritten: the float32 build
    (no casts around the softmax) and a chain whose where fills 1 instead of 0 are not."""
    from tvm import relax

    from sdparity.compile import attention
    from sdparity.compile.frontend import export_to_relax

    args = _inputs(None)[:3]
    f32 = export_to_relax(NoMask(), tuple(torch.from_numpy(a) for a in args), "attention").mod
    assert _ops(attention.fuse_safe_softmax(f32)) == _ops(f32)

    mod = _f16_ir(NoMask(), args)
    fill_one = _replace_full_like_fill(mod, 1.0)
    assert "R.nn.softmax" in _ops(attention.fuse_safe_softmax(fill_one))
    assert "R.nn.softmax" not in _ops(attention.fuse_safe_softmax(mod))
    assert isinstance(mod["attention"], relax.Function)


def _replace_full_like_fill(mod, value: float):
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Fill(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.full_like":
                return relax.op.full_like(call.args[0], relax.const(value, "float32"))
            return call

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out["attention"] = Fill(mod).visit_expr(mod["attention"])
    return out
