"""Localization: a module broken on purpose in exactly one kernel is localized to that kernel."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sdparity.check import localize

GELU = "fused_reshape11_multiply2_tir_sigmoid_multiply3_reshape12"  # tiny CLIP's MLP activation


def scale_output(func, factor: float):
    """The same PrimFunc, its last store into its output buffer multiplied by ``factor``.

    Done on the TVMScript text: TVM 0.27's Python API has no statement mutator."""
    import tvm

    out = func.params[-1].name
    lines = func.script().splitlines()
    stores = [i for i, line in enumerate(lines) if re.match(rf"\s*{re.escape(out)}\[.*\] = ", line)]
    lhs, rhs = lines[stores[-1]].split(" = ", 1)
    lines[stores[-1]] = f"{lhs} = ({rhs}) * T.float32({factor!r})"
    return tvm.script.from_source("\n".join(lines))


def small_module():
    from tvm import relax

    from sdparity.compile.compat import tensor_type

    bb = relax.BlockBuilder()
    x, w = relax.Var("x", tensor_type((4, 8), "float32")), relax.Var("w", tensor_type((8, 8), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, w))
            z = bb.emit(relax.op.add(y, x))
            ones, zeros = relax.const(np.ones(8, "float32")), relax.const(np.zeros(8, "float32"))
            n = bb.emit(relax.op.nn.layer_norm(z, ones, zeros, axes=[-1]))
            t = bb.emit(relax.op.tanh(n))
            out = bb.emit_output(relax.op.sum(t, axis=[1]))
        bb.emit_func_output(out)
    return bb.get()


def build_broken(mod, kernel: str | None, factor: float = 1.001):
    """relax.build of mod with its kernels fused as the backends fuse them, one kernel scaled."""
    import tvm
    from tvm import relax

    target = tvm.target.Target({"kind": "llvm"})
    with target:
        fused = relax.get_pipeline("zero")(mod)
    if kernel is not None:
        gv = fused.get_global_var(kernel)
        fused[gv] = scale_output(fused[gv], factor)
    return relax.build(fused, target=target)


@pytest.mark.parametrize("kernel", [None, "fused_layer_norm_tir_tanh"])
def test_replay_names_the_broken_kernel_only(kernel):
    import tvm
    from tvm import relax

    from sdparity.compile.compat import tensor

    mod = small_module()
    dev = tvm.cpu()
    vm = relax.VirtualMachine(build_broken(mod, kernel), dev)
    rng = np.random.default_rng(0)
    args = [tensor(rng.standard_normal(s).astype("float32"), dev) for s in ((4, 8), (8, 8))]
    rec = localize.replay(vm, localize.build_trusted(mod), "main", args, dev)
    assert rec["calls"] == rec["kernels"] == 3 and not rec["unchecked"]  # matmul+add, layer_norm+tanh, sum
    if kernel is None:
        assert rec["status"] == "clean" and rec["first"] is None and "upstream" in rec["summary"]
    else:
        # downstream kernels get the candidate's (wrong) inputs on both sides: they agree
        assert rec["status"] == "diverged" and rec["n_diverged"] == 1
        assert rec["first"]["kernel"] == kernel and rec["first"]["call"] == 1
        assert rec["first"]["rel"] == pytest.approx(1e-3, rel=0.01)


def test_divergence_rule():
    d = localize._diverges
    assert d(np.array([1.0, -np.inf], "float32"), np.array([1.0, -np.inf], "float32")) is None
    assert d(np.array([1.0, np.nan], "float32"), np.array([1.0, 2.0], "float32"))["max_abs"] == np.inf
    assert d(np.array([100.0, 1.0]), np.array([100.0 + 5e-4, 1.0])) is None  # 5e-6 of max |x|
    assert d(np.array([100.0, 1.0]), np.array([100.0, 1.01])) is not None
    assert d(np.array([1, 2], "int32"), np.array([1, 3], "int32"))["mismatches"] == 1
    assert localize.op_name("fused_matmul3_add4") == "matmul_add"


def test_failing_stage_is_localized_to_the_broken_kernel(tiny, tmp_path, monkeypatch):
    """End to end: the tiny CLIP stage built with one kernel (the MLP activation) scaled by
    1.001 fails its check, and the report record names that kernel. (Kernel replay only: op
    replay on a failing check is tested in test_opreplay.py.)"""
    monkeypatch.setenv("SDPARITY_LOCALIZE", "kernel")
    import tvm

    from sdparity.backends.native import LIB, PARAMS, NativeBackend, save_params
    from sdparity.cache import BuildCache
    from sdparity.registry import get_stage
    from sdparity.reports.report import Report
    from sdparity.runner import Progress, run_checks

    class OneKernelBroken(NativeBackend):
        def target(self):
            return tvm.target.Target({"kind": "llvm"})

        def target_key(self):
            return {"target": "llvm", "broken": GELU}

        def build(self, ir, out_dir, log=print):
            build_broken(ir.mod, GELU).export_library(str(out_dir / LIB))
            save_params(ir.params, out_dir / PARAMS)
            return {}

    report = Report(tiny)
    stage = get_stage("clip")
    run_checks([stage], [OneKernelBroken("llvm")], tiny, report, BuildCache(tmp_path), log=Progress(quiet=True),
               localize=True)
    failed = [r for r in report.results if r["verdict"] == "fail"]
    assert len(failed) == len(report.results) == 4
    loc = failed[0]["localization"]
    assert loc["status"] == "diverged", loc
    assert loc["first"]["kernel"] == GELU and {d["kernel"] for d in loc["diverged"]} <= {GELU}
    assert "sigmoid" in loc["first"]["op"] and not loc["unchecked"]
    assert sum("localization" in r for r in report.results) == 1  # the first failing case only
    assert loc["op"]["status"] == "skipped"
