"""sdparity.compile.legalize: the GroupNorm every target uses must stay close to float64 where TVM's
own legalization (float32 E[x^2]-E[x]^2) cancels: activations far from zero, as in the SD VAE.
Which statistics a build gets (float64, or shifted two-pass float32) is the building backend's
``float64`` capability, never its name."""

from __future__ import annotations

import numpy as np
import pytest

SHAPE, GROUPS, EPS = (1, 128, 64, 64), 32, 1e-6


def _module(shape=SHAPE):
    """main(x, gamma, beta) = GroupNorm(GROUPS) of x."""
    from tvm import relax

    from sdparity.compile.compat import tensor_type

    bb = relax.BlockBuilder()
    xv = relax.Var("x", tensor_type(shape, "float32"))
    gv = relax.Var("g", tensor_type((shape[1],), "float32"))
    bv = relax.Var("b", tensor_type((shape[1],), "float32"))
    with bb.function("main", [xv, gv, bv]):
        bb.emit_func_output(bb.emit(relax.op.nn.group_norm(xv, gv, bv, GROUPS, 1, [2, 3], EPS)))
    return bb.get()


def _run(legalize_map, x, g, b):
    import tvm
    from tvm import relax

    target = tvm.target.Target({"kind": "llvm"})
    mod = _module()
    if legalize_map is not None:
        with target:
            mod = relax.transform.LegalizeOps(customize_legalize_map=legalize_map)(mod)
    vm = relax.VirtualMachine(relax.build(mod, target=target), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in (x, g, b))).numpy()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SHAPE) + 100.0).astype(np.float32)  # mean 100, std 1
    g = rng.standard_normal(SHAPE[1]).astype(np.float32)
    b = rng.standard_normal(SHAPE[1]).astype(np.float32)
    xd = x.astype(np.float64).reshape(1, GROUPS, -1)
    ref = ((xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + EPS)).reshape(SHAPE)
    ref = ref * g[None, :, None, None] + b[None, :, None, None]
    tvm_err = float(np.abs(_run(None, x, g, b) - ref).max())
    return x, g, b, ref, tvm_err


@pytest.mark.parametrize("float64", [True, False], ids=["float64", "float32"])  # the two statistics
def test_precise_group_norm_matches_float64(float64, data):
    from sdparity.compile.legalize import precise_legalize_map

    x, g, b, ref, tvm_err = data
    err = float(np.abs(_run(precise_legalize_map("llvm", float64=float64), x, g, b) - ref).max())
    # float32 output rounding of values up to ~|g|*4+|b| is ~1e-6; 2e-5 leaves room for the
    # float32 statistics of the WebGPU variant (measured 4.3e-6 on 512x64x64)
    assert err < 2e-5, err
    assert tvm_err > 20 * err, (tvm_err, err)  # the case really exercises the cancellation


def _kernels(mod) -> set[str]:
    from sdparity.compile.compat import tir

    return {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tir().PrimFunc)}


@pytest.mark.parametrize("kind,float64,stats", [
    ("llvm", True, "float64"), ("llvm", False, "float32"),  # the capability decides, not the kind
    ("webgpu", False, "float32"), ("metal", False, "float32"),
    # no capability given (a caller without a backend): float64 only on kinds known to have it
    ("llvm", None, "float64"), ("cuda", None, "float64"), ("vulkan", None, "float64"),
    ("webgpu", None, "float32"), ("metal", None, "float32"), ("opencl", None, "float32"),
])
def test_statistics_follow_the_float64_capability(kind, float64, stats):
    import tvm

    from sdparity.compile import legalize

    assert legalize.stats_dtype(kind, float64) == stats
    target = tvm.target.Target({"kind": "llvm"})
    # legalized for llvm with that capability: the kernel the statistics name
    assert f"group_norm_{stats}" in _kernels(legalize.apply(_module(), target, float64=stats == "float64"))


def test_group_norm_only_leaves_the_other_ops():
    import tvm
    from tvm import relax

    from sdparity.compile.compat import tensor_type
    from sdparity.compile.legalize import group_norm_only

    shape = (1, 64, 4, 4)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", tensor_type(shape, "float32"))
    gv = relax.Var("g", tensor_type((shape[1],), "float32"))
    with bb.function("main", [xv, gv]):
        y = bb.emit(relax.op.nn.group_norm(xv, gv, gv, GROUPS, 1, [2, 3], EPS))
        bb.emit_func_output(bb.emit(relax.op.add(y, xv)))
    out = group_norm_only(bb.get(), tvm.target.Target({"kind": "llvm"}), float64=False)
    assert _kernels(out) == {"group_norm_float32"}
    calls = set()
    relax.analysis.post_order_visit(out["main"], lambda e: calls.add(e.op.name)
                                    if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    assert "relax.add" in calls and "relax.nn.group_norm" not in calls, calls


def test_a_cpu_build_without_float64_gets_float32_statistics(data):
    """schedule_for on llvm with float64=False (a backend without float64, built on the CPU:
    tests/unit/test_extending.py's example backend): the float32 GroupNorm, scheduled and right."""
    import tvm
    from tvm import relax

    from sdparity.compile.schedule import build_module, schedule_for

    x, g, b, ref, _ = data
    target = tvm.target.Target({"kind": "llvm"})
    for float64 in (True, False):
        mod = schedule_for(_module(), target, float64=float64)
        names = _kernels(mod)
        want, other = ("float64", "float32") if float64 else ("float32", "float64")
        assert any(f"group_norm_{want}" in n for n in names), names
        assert not any(f"group_norm_{other}" in n for n in names), names
        vm = relax.VirtualMachine(build_module(mod, target), tvm.cpu())
        out = vm["main"](*(tvm.runtime.tensor(a) for a in (x, g, b))).numpy()
        assert float(np.abs(out - ref).max()) < 2e-5


def test_every_backend_passes_its_capabilities_to_the_build(monkeypatch, tmp_path):
    """Each registered backend's build hands its own ``float64`` and ``max_buffer`` to
    compile/schedule.schedule_for (WebGPU: no float64, WGSL has no f64, and a 1 GiB binding
    limit; llvm, cuda, vulkan: float64, no limit)."""
    import sdparity.compile.schedule as schedule
    from sdparity.backends import get_backend, names
    from sdparity.backends.webgpu import toolchain, wgsl
    from sdparity.ir import StageIR

    class Stop(Exception):
        pass

    seen = {}

    def record(mod, target, lift=False, float64=None, max_buffer=None):
        seen.update(float64=float64, max_buffer=max_buffer)
        raise Stop

    monkeypatch.setattr(schedule, "schedule_for", record)
    monkeypatch.setattr(toolchain, "ensure_toolchain", lambda log=print: None)  # no emcc needed
    monkeypatch.setattr(wgsl, "legalize_for_webgpu", lambda mod: mod)
    declared = {}
    for name in names():
        backend = get_backend(name)
        seen.clear()
        with pytest.raises(Exception):  # Stop, or the backend's own wrapping of it
            backend.build(StageIR(_module(), params={}), tmp_path)
        assert seen == {"float64": backend.float64, "max_buffer": backend.max_buffer}, name
        declared[name] = (backend.float64, backend.max_buffer)
    assert {n: declared[n] for n in ("llvm", "cuda", "vulkan", "webgpu")} == {
        "llvm": (True, None), "cuda": (True, None), "vulkan": (True, None), "webgpu": (False, 1 << 30)}
