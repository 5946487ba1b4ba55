"""The f16 mode (sdparity.commands.f16): real float16 builds of the tiny model's CLIP, UNet and VAE
on llvm, judged against PyTorch's own float16 error. A regression inside TVM's mixed-precision
pass (float16 accumulation in matmuls and convolutions instead of float32) must fail it."""

from __future__ import annotations

import numpy as np
import pytest

from sdparity.registry import get_stage
from sdparity.commands import f16
from sdparity.tolerances import F16

MODEL_STAGES = ("clip", "unet", "vae")


def _run(tiny, llvm, cache, stages=MODEL_STAGES, only_cases=None):
    from sdparity.reports.report import Report
    from sdparity.runner import Progress

    report = Report(tiny)
    f16.run_f16([get_stage(n) for n in stages], [llvm], tiny, report, cache, log=Progress(quiet=True),
                only_cases=only_cases)
    return report.results


def test_f16_builds_pass_with_both_errors_recorded(tiny, llvm, cache):
    results = _run(tiny, llvm, cache)
    assert {r["stage"] for r in results} == set(MODEL_STAGES)
    assert all(r["verdict"] == "pass" for r in results), [r["message"] for r in results if r["verdict"] != "pass"]
    for r in results:  # the one Metrics of sdparity.compare: noise_floor = PyTorch float16's error
        m, tol = r["metrics"], r["tolerance"]
        assert r["precision"] == "f16" and m["max_abs"] <= tol["atol"]
        assert tol["atol"] == pytest.approx(max(F16.factor * m["noise_floor"], F16.min_levels if r.get("integer") else 0))
        if not r.get("integer"):
            # a real float16 build: far from float32 (tiny CLIP's float32 error is ~1e-6) and of
            # the order of PyTorch's own float16 error
            assert m["max_abs"] > 1e-4 and m["noise_floor"] > 1e-4, r
            assert 0.25 < m["floor_ratio"] <= F16.factor, r


@pytest.fixture()
def tmp_cache(tmp_path):
    from sdparity.cache import BuildCache

    return BuildCache(root=tmp_path / "cache")  # the perturbed builds must not reach the shared cache


def test_float16_accumulation_in_tvm_fails(tiny, llvm, tmp_cache, monkeypatch):
    """TVM's ToMixedPrecision perturbed to accumulate in float16 (a plausible regression of the
    pass): measured 2.6-7.5x PyTorch's float16 error (tolerances.F16), so every check fails."""
    from tvm import relax

    real = relax.transform.ToMixedPrecision

    def accumulate_in_f16(out_dtype="float32", fp16_input_names=None):
        return real(out_dtype="float16", fp16_input_names=fp16_input_names)

    monkeypatch.setattr(relax.transform, "ToMixedPrecision", accumulate_in_f16)
    # one case per stage: the pass is wrong in every case (each fails; the clean test above runs
    # them all), and a float16 case is a slow run on the CPU (~3 s each)
    results = []
    for name in MODEL_STAGES:
        st = get_stage(name)
        first = st.cases(tiny, st.default_variant(tiny), 0)[0].label
        results += _run(tiny, llvm, tmp_cache, [name], only_cases=[first])
    float_checks = [r for r in results if not r.get("integer")]
    assert {r["stage"] for r in float_checks} == set(MODEL_STAGES)
    assert all(r["verdict"] == "fail" for r in float_checks), [(r["stage"], r["message"]) for r in float_checks]
    assert min(r["metrics"]["floor_ratio"] for r in float_checks) > F16.factor


def test_judge_rules():
    """The f16 rule through the one comparison: within 2x PyTorch float16's own error against
    float64 (err/floor is that ratio), non-finite and shape mismatches fail, 0..255 outputs may
    differ by 1 level where PyTorch's happens not to."""
    ref = np.linspace(-1, 1, 100)
    torch16 = ref + 1e-3
    m, tol = f16.judge(ref + 1.5e-3, ref, torch16, integer=False)
    assert m.passed and abs(m.floor_ratio - 1.5) < 1e-6 and abs(m.noise_floor - 1e-3) < 1e-12
    assert tol.atol == pytest.approx(2e-3) and "PyTorch float16" in m.why
    assert not f16.judge(ref + 3e-3, ref, torch16, integer=False)[0].passed
    bad = ref.copy()
    bad[3] = np.nan
    m, _ = f16.judge(bad, ref, torch16, integer=False)
    assert not m.passed and "non-finite" in m.why and m.failed_bound == "nonfinite"
    assert not f16.judge(ref[:50], ref, torch16, integer=False)[0].passed
    img = np.arange(256.0)
    assert f16.judge(img + 1, img, img, integer=True)[0].passed  # 1 level even where torch is exact
    assert not f16.judge(img + 2, img, img, integer=True)[0].passed


def test_cli_refuses_a_selection_without_model_stages(capsys):
    from sdparity.cli import main

    assert main(["f16", "--stages", "scheduler_dpm", "-q"]) == 2
    assert "covers the model stages" in capsys.readouterr().err


def test_cast_per_use_gives_each_use_its_own_cast_and_the_same_numbers():
    """f16.cast_per_use: a cast with two uses becomes two (so FuseOps fuses each into its
    consumer); built for llvm, every output is bit-identical to the module without it."""
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((4, 8), "float16")):
            with R.dataflow():
                y = R.astype(x, "float32")
                a = R.nn.softmax(y)
                b = R.max(y, axis=1)
                R.output(a, b)
            return (a, b)

    out = f16.cast_per_use(Mod)
    casts = out["main"].script().count("R.astype(")
    assert (Mod["main"].script().count("R.astype("), casts) == (1, 2)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float16)
    results = []
    for mod in (Mod, out):
        vm = relax.VirtualMachine(relax.build(mod, "llvm"), tvm.cpu())
        results.append([r.numpy() for r in vm["main"](tvm.runtime.tensor(x))])
    for before, after in zip(*results):
        assert np.array_equal(before, after)


def test_lifted_weights_compute_what_the_plain_build_computes():
    """LiftTransformParams, as fused_for_gpu(lift=True) runs it for the f16 CUDA builds, on a
    function whose ``num_input`` marks its inputs (as the frontend marks the stages): the
    weights' transpose and cast to float16 move into ``<fn>_transform_params``, which the
    runner calls once with the weights (a list, as gpu_cuda's device step passes them); the
    function then takes its outputs. Built for llvm here: the same numbers as the build
    without lifting."""
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    @tvm.script.ir_module
    class Mod:
        @R.function
        def unet(x: R.Tensor((4, 8), "float16"), w: R.Tensor((8, 8), "float32"), b: R.Tensor((8,), "float32")):
            R.func_attr({"num_input": 1})
            with R.dataflow():
                y = R.matmul(x, R.astype(R.permute_dims(w), "float16"), out_dtype="float32")
                out = R.add(y, b)
                R.output(out)
            return out

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8)).astype(np.float16)
    w, b = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    lifted = relax.transform.LiftTransformParams()(Mod)
    assert "unet_transform_params" in [gv.name_hint for gv in lifted.get_global_vars()]
    assert "permute_dims" not in lifted["unet"].script() and "astype" not in lifted["unet"].script()
    dev = tvm.cpu()
    plain = relax.VirtualMachine(relax.build(Mod, "llvm"), dev)
    vm = relax.VirtualMachine(relax.build(lifted, "llvm"), dev)
    args = [tvm.runtime.tensor(a, dev) for a in (x, w, b)]
    weights = list(vm["unet_transform_params"](args[1:]))
    assert np.array_equal(vm["unet"](args[0], *weights).numpy(), plain["unet"](*args).numpy())


def test_model_stages_mark_their_inputs_for_lifting(tiny):
    """fused_for_gpu(lift=True) relies on each model stage's ``num_input`` (set by TVM's
    exported-program frontend) counting the arguments before the weights, also after the f16
    mode's passes; a wrong count would lift work on an input, or nothing."""
    from sdparity.registry import all_stages

    for name in ("clip", "unet", "vae"):
        st = all_stages()[name]
        ir = f16.to_f16(st.build_ir(tiny, st.default_variant(tiny)))
        for fn, weights in ir.params.items():
            func = ir.mod[fn]
            assert int(func.attrs["num_input"]) == len(func.params) - len(weights) > 0, (name, fn)
