"""DPM-Solver++ stage: constants vs diffusers, the TVM build vs diffusers, negative tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import dpm
from reference.models import PINNED_SCHEDULER
from sdparity.compare import compare
from sdparity.registry import get_stage
from tests.strategies import latent_nchw, step_and_index, step_counts
from sdparity.tolerances import lookup

f32 = np.float32
MODES = ("zero", "sigma_min")
TIMESTEPS_20 = [999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300, 250, 200, 150, 100, 50]


def config(mode: str) -> dict:
    return {**PINNED_SCHEDULER, "final_sigmas_type": mode}


def iid_chain(cfg: dict, n: int, shape, seed: int, steps: int | None = None):
    """diffusers on i.i.d. N(0,1) sample and model outputs (large x0: a hard numeric case)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(f32)
    eps = [rng.standard_normal(shape).astype(f32) for _ in range(steps or n)]
    return dpm.run_diffusers(cfg, n, x, eps)


def emulate_step(c: dict, k: int, x, m0, m1):
    """The dpm_step formula in numpy float32, one rounding per op, in the Relax order."""
    c0, c1, half_c1, inv_r0 = (f32(c[key][k]) for key in dpm.STEP_KEYS)
    return (c0 * x - c1 * m0) - half_c1 * (inv_r0 * (m0 - m1))


def emulate_convert(c: dict, k: int, x, eps):
    return (x - f32(c["sigma"][k]) * eps) / f32(c["alpha"][k])


def tol(output: str):
    return lookup("scheduler_dpm", output, "llvm", "*")


# ---- constants ------------------------------------------------------------------------

def test_timesteps_and_final_step_constants():
    z, s = dpm.compute_constants(config("zero"), 20), dpm.compute_constants(config("sigma_min"), 20)
    assert z["timesteps"] == s["timesteps"] == TIMESTEPS_20
    # "zero": the last step is first order to sigma 0, i.e. prev = 0*x + x0
    assert (z["c0"][-1], z["c1"][-1], z["half_c1"][-1], z["inv_r0"][-1], z["order"][-1]) == (0.0, -1.0, 0.0, 0.0, 1)
    # "sigma_min" with >= 15 steps: second order to sigma_min; the step before is the same in both
    assert s["order"][-1] == 2 and s["c0"][-1] > 0.1 and s["half_c1"][-1] != 0
    assert z["order"] == [1] + [2] * 18 + [1] and s["order"] == [1] + [2] * 19
    for key in ("alpha", "sigma", "c0", "c1", "half_c1", "inv_r0"):
        assert z[key][:-1] == s[key][:-1]
    # lower_order_final: fewer than 15 steps end first order in both modes
    assert dpm.compute_constants(config("sigma_min"), 14)["order"][-1] == 1
    assert dpm.compute_constants(config("sigma_min"), 1)["order"] == [1]


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, True])
def test_step_count_validated(bad):
    with pytest.raises(ValueError):
        dpm.compute_constants(PINNED_SCHEDULER, bad)


def _assert_bit_exact(mode: str, n: int, seed: int):
    c = dpm.compute_constants(config(mode), n)
    for r in iid_chain(config(mode), n, (1, 4, 4, 4), seed):
        k = r.index
        assert np.array_equal(r.last_x0, np.zeros_like(r.sample)) or k > 0
        assert np.array_equal(emulate_convert(c, k, r.sample, r.model_output), r.x0), (mode, n, k)
        assert np.array_equal(emulate_step(c, k, r.sample, r.x0, r.last_x0), r.prev_sample), (mode, n, k)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 2, 3, 14, 15, 20, 100])
def test_constants_bit_exact_with_diffusers(mode, n):
    """Our float32 formula with our constants reproduces every scheduler.step bit for bit:
    a one-ulp difference in any constant would show in most of the 64 elements."""
    _assert_bit_exact(mode, n, seed=n)


@given(n=step_counts, mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_constants_bit_exact_fuzzed(n, mode, seed):
    _assert_bit_exact(mode, n, seed)


def test_tutorial_table_is_sigma_min_up_to_float32_rounding():
    t, s = dpm.tutorial_constants(PINNED_SCHEDULER, 20), dpm.compute_constants(config("sigma_min"), 20)
    assert t["timesteps"] == s["timesteps"] and t["order"] == s["order"]
    for key in ("alpha", "sigma", "c0", "c1", "half_c1", "inv_r0"):
        a, b = np.array(t[key], f32).view(np.int32), np.array(s[key], f32).view(np.int32)
        assert np.abs(a.astype(np.int64) - b).max() <= 64, key  # measured: at most 53 ulps (c1)


def test_constants_json_roundtrip(tmp_path):
    c = dpm.compute_constants(PINNED_SCHEDULER, 20)
    path = dpm.write_constants_json(tmp_path / "dpm.json", c)
    back = json.loads(path.read_text())
    assert back == c
    assert set(back) == {"format", "version", "source", "config", "num_steps", "timesteps", "alpha", "sigma",
                         "c0", "c1", "half_c1", "inv_r0", "order"}
    for key in ("alpha", "sigma", "c0", "c1", "half_c1", "inv_r0"):
        assert all(float(f32(v)) == v for v in back[key])  # every value is exactly a float32
    bad = {**c, "c1": [float("nan")] * 20}
    with pytest.raises(ValueError):
        dpm.write_constants_json(path, bad)
    assert json.loads(path.read_text()) == c  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["dpm.json"]  # no temp file left


def test_float64_reference_runs_in_float64():
    r32 = iid_chain(PINNED_SCHEDULER, 20, (1, 4, 8, 8), 0)
    r64 = dpm.run_diffusers(PINNED_SCHEDULER, 20, r32[0].sample, [r.model_output for r in r32], "float64",
                            samples=[r.sample for r in r32])
    assert all(r.prev_sample.dtype == np.float64 and r.x0.dtype == np.float64 for r in r64)
    floor = max(float(np.abs(a.prev_sample - b.prev_sample).max()) for a, b in zip(r32, r64))
    assert 0 < floor < 1e-4


# ---- the TVM build ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tvm_dpm(tmp_path_factory):
    from sdparity.backends.native import NativeBackend

    backend = NativeBackend("llvm")
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    out = tmp_path_factory.mktemp("scheduler_dpm")
    backend.build(get_stage("scheduler_dpm").build_ir(None, {}), out)
    with backend.session() as runner:
        yield lambda fn, inputs: runner.run(out, fn, inputs)[0]


@given(shape=latent_nchw, nk=step_and_index(), mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_tvm_matches_diffusers_fuzzed(tvm_dpm, shape, nk, mode, seed):
    n, k = nk
    c = dpm.compute_constants(config(mode), n)
    r = iid_chain(config(mode), n, shape, seed, steps=k + 1)[k]
    x0 = tvm_dpm("dpm_convert_model_output", [r.sample, r.model_output, *dpm.convert_inputs(c, k)])
    prev = tvm_dpm("dpm_step", [r.sample, r.x0, r.last_x0, *dpm.step_inputs(c, k)])
    for got, ref, name in ((x0, r.x0, "model_output"), (prev, r.prev_sample, "prev_sample")):
        m = compare(got, ref, tol(name))
        assert m.passed, (name, shape, n, k, m.why)
        # stronger than the tolerance: llvm rounds every op like torch, in the same order
        assert m.max_abs == 0, (name, shape, n, k, m.max_abs)


def _run_cases(tvm_dpm, cases):
    results = {}
    for case in cases:
        got = tvm_dpm(case.function, case.inputs)
        (out,) = case.outputs
        results[case.label] = compare(got, case.reference("float32")[0], tol(out.name), case.reference("float64")[0])
    return results


def test_stage_cases_pass(tvm_dpm):
    stage = get_stage("scheduler_dpm")
    cases = stage.cases(None, stage.default_variant(None), seed=0)
    assert 150 <= len(cases) < 200  # 3 configs (default, sigma_min, v-prediction) x 32 steps x 2
    for case in cases:  # history starts as zeros, never uninitialized memory
        if case.function == "dpm_step" and case.shapes["step_index"] == 0:
            assert not np.any(case.inputs[2])
    results = _run_cases(tvm_dpm, cases)
    failed = {k: m.why for k, m in results.items() if not m.passed}
    assert not failed
    assert max(m.max_abs for m in results.values()) == 0  # bit-exact on llvm
    assert max(m.noise_floor for m in results.values()) > 0  # the float64 reference is real
    labels = set(results)
    assert {"default/n20/k19/step", "sigma_min/n20/k19/step", "default/n1/k0/step", "sigma_min/n100/k99/step",
            "v_prediction/n20/k0/convert", "v_prediction/n20/k19/step"} <= labels
    assert {c.function for c in cases if c.label.startswith("v_prediction/")} == {"dpm_convert_v_prediction",
                                                                                  "dpm_step"}


# ---- negative tests ---------------------------------------------------------------------

def test_tutorial_last_step_fails_under_todays_default(tvm_dpm):
    """The tutorial-era table under diffusers' default final_sigmas_type="zero": the last
    step is wrong, by ~2 on i.i.d. N(0,1) latents (docs/numerics.md, pitfall 1)."""
    tut = dpm.tutorial_constants(PINNED_SCHEDULER, 20)
    recs = iid_chain(PINNED_SCHEDULER, 20, (1, 4, 64, 64), seed=0)
    metrics = [compare(tvm_dpm("dpm_step", [r.sample, r.x0, r.last_x0, *dpm.step_inputs(tut, r.index)]),
                       r.prev_sample, tol("prev_sample")) for r in recs]
    # earlier steps differ only by the tutorial's float32 rounding of the constants (up to 53
    # ulps, see above): measured max 1.1e-5 at |x| ~ 60, which can leave a few elements just
    # outside the 2e-6 tolerance; the last step is five orders of magnitude worse
    assert max(m.max_abs for m in metrics[:-1]) < 1e-4
    assert not metrics[-1].passed
    assert 1.5 < metrics[-1].max_abs < 3.5, metrics[-1].max_abs  # measured 2.51


def test_tutorial_fault_fails_only_default_config(tvm_dpm):
    stage = get_stage("scheduler_dpm").with_fault("tutorial_last_step")
    results = _run_cases(tvm_dpm, stage.cases(None, {}, seed=0))
    assert not results["default/n20/k19/step"].passed
    assert results["default/n20/k19/step"].max_abs > 0.1  # measured 0.27 (toy denoiser latents)
    assert all(m.passed for k, m in results.items() if k.startswith("sigma_min/"))


def test_uninitialized_history_gives_nan(tvm_dpm):
    c = dpm.compute_constants(PINNED_SCHEDULER, 20)
    r = iid_chain(PINNED_SCHEDULER, 20, (1, 4, 8, 8), seed=1, steps=1)[0]
    assert c["half_c1"][0] == 0.0 and c["inv_r0"][0] == 0.0  # the history is multiplied by 0 ...
    garbage = np.full_like(r.sample, np.nan)  # ... but native memory may hold NaN: 0 * NaN = NaN
    out = tvm_dpm("dpm_step", [r.sample, r.x0, garbage, *dpm.step_inputs(c, 0)])
    assert np.isnan(out).all()
    assert not compare(out, r.prev_sample, tol("prev_sample")).passed
    zeros = tvm_dpm("dpm_step", [r.sample, r.x0, np.zeros_like(r.sample), *dpm.step_inputs(c, 0)])
    assert np.array_equal(zeros, r.prev_sample)

    stage = get_stage("scheduler_dpm").with_fault("uninitialized_history")
    results = _run_cases(tvm_dpm, stage.cases(None, {}, seed=0))
    failed = {k for k, m in results.items() if not m.passed}
    assert failed == {k for k in results if k.endswith("/k0/step")}


def test_folded_c2_is_not_bit_exact(tvm_dpm):
    """Why half_c1 and inv_r0 travel separately: one folded c2 = half_c1*inv_r0 rounds once
    more and moves some elements by an ulp (inside the tolerance, but not bit-exact)."""
    c = dpm.compute_constants(PINNED_SCHEDULER, 20)
    diffs = []
    for r in iid_chain(PINNED_SCHEDULER, 20, (1, 4, 16, 16), seed=2)[1:-1]:
        c0, c1, hc, ir = dpm.step_inputs(c, r.index)
        folded = [c0, c1, np.array(hc * ir, dtype=f32), np.array(1.0, dtype=f32)]
        m = compare(tvm_dpm("dpm_step", [r.sample, r.x0, r.last_x0, *folded]), r.prev_sample, tol("prev_sample"))
        assert m.passed
        diffs.append(m.max_abs)
    assert max(diffs) > 0
