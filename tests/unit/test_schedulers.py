"""PNDM (PLMS), Euler and LCM stages: constants vs the real diffusers schedulers, the TVM build vs
diffusers, negative tests (faults), and the bounds behind their tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from reference import schedulers as ref
from sdparity.compare import compare
from sdparity.registry import get_stage
from sdparity.stages import scheduler_euler as E
from sdparity.stages import scheduler_lcm as L
from sdparity.stages import scheduler_pndm as P
from sdparity.stages._scheduler import call
from sdparity.tolerances import lookup

f32 = np.float32
SHAPE = (1, 4, 4, 4)
ALL_N = tuple(range(1, 101))
SOME_N = (1, 2, 3, 4, 5, 7, 10, 20, 25, 50, 99, 100)
#: diffusers' "trailing" spacing gives n+1 timesteps (the last -1) for these n in 1..100
TRAILING_EXTRA_TIMESTEP = {61}


def counts_of(cfg: dict, counts, constants):
    """The step counts to check; the ones diffusers gets wrong must be refused, not checked."""
    bad = TRAILING_EXTRA_TIMESTEP if cfg.get("timestep_spacing") == "trailing" else set()
    for n in set(counts) & bad:
        with pytest.raises(ValueError, match="timesteps for num_steps"):
            constants(cfg, n)
    return [n for n in counts if n not in bad]


def iid(n_calls: int, seed: int, scale: float = 1.0):
    """i.i.d. N(0,1) model outputs (far from any denoiser: large, uncorrelated history terms)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * scale).astype(f32)
    return x, [rng.standard_normal(SHAPE).astype(f32) for _ in range(n_calls)]


def tol(stage: str, output: str):
    return lookup(stage, output, "llvm", "*")


# ---- emulation: the stage formulas in numpy float32, one rounding per op ---------------------

def pndm_emulated(c, r):
    return call(P.pndm_step, [r["sample_in"], r["model_output"], r["h1"], r["h2"], r["h3"],
                              ref.scalars(c, ref.PNDM_STEP_KEYS, r.index)])


def euler_emulated(c, r):
    k = r.index
    return {"scaled_sample": call(E.euler_scale_model_input, [r["sample"], ref.scalars(c, ref.EULER_SCALE_KEYS, k)]),
            "pred_original_sample": call(E.euler_convert_model_output,
                                         [r["sample"], r["model_output"], ref.scalars(c, ref.EULER_CONVERT_KEYS, k)]),
            "prev_sample": call(E.euler_step, [r["sample"], r["pred_original_sample"],
                                               ref.scalars(c, ref.EULER_STEP_KEYS, k)])}


def lcm_emulated(c, r):
    k = r.index
    d = call(L.lcm_denoise, [r["sample"], r["model_output"], ref.scalars(c, ref.LCM_DENOISE_KEYS, k)])
    if not c["add_noise"][k]:
        return {"denoised": d, "prev_sample": d}
    return {"denoised": d, "prev_sample": call(L.lcm_add_noise, [r["denoised"], r["noise"],
                                                                 ref.scalars(c, ref.LCM_NOISE_KEYS, k)])}


PNDM_CONFIGS = {
    "sd1": (P.SD1_PNDM, ALL_N),
    "v_prediction": ({**P.SD1_PNDM, "prediction_type": "v_prediction"}, SOME_N),
    "steps_offset0": ({**P.SD1_PNDM, "steps_offset": 0}, SOME_N),
    "linspace": ({**P.SD1_PNDM, "timestep_spacing": "linspace", "steps_offset": 0}, SOME_N),
    "trailing": ({**P.SD1_PNDM, "timestep_spacing": "trailing", "steps_offset": 0}, SOME_N + (61,)),
    "set_alpha_to_one": ({**P.SD1_PNDM, "set_alpha_to_one": True}, SOME_N),
}
EULER_CONFIGS = {
    "trailing": (E.TURBO, ALL_N),
    "trailing_v": (E.CONFIGS["trailing_v"], SOME_N),
    "leading": (E.CONFIGS["leading"], ALL_N),
    "leading_offset0": ({**E.CONFIGS["leading"], "steps_offset": 0}, SOME_N),
    "linspace": (E.CONFIGS["linspace"], SOME_N),
    "linspace_v": ({**E.CONFIGS["linspace"], "prediction_type": "v_prediction"}, SOME_N),
    "final_sigma_min": ({**E.TURBO, "final_sigmas_type": "sigma_min"}, SOME_N + (61,)),
    "karras": ({**E.CONFIGS["leading"], "use_karras_sigmas": True}, SOME_N),
}
LCM_CONFIGS = {
    "default": (L.LCM, tuple(range(1, 51))),  # num_steps <= original_inference_steps (50)
    "orig100": ({**L.LCM, "original_inference_steps": 100}, ALL_N),
    "orig100_v": (L.CONFIGS["v_orig100"], SOME_N),
    "orig30_scaling5": ({**L.LCM, "original_inference_steps": 30, "timestep_scaling": 5.0}, tuple(range(1, 31))),
}


# ---- constants: bit-exact with scheduler.step -------------------------------------------------

@pytest.mark.parametrize("name", list(PNDM_CONFIGS))
def test_pndm_bit_exact_with_diffusers(name):
    """Every call of every step count: the formula with our constants gives step()'s bits (a
    one-ulp difference in any constant would show in most of the 64 elements)."""
    cfg, counts = PNDM_CONFIGS[name]
    for n in counts_of(cfg, counts, ref.pndm_constants):
        c = ref.pndm_constants(cfg, n)
        x, eps = iid(len(c["timesteps"]), seed=n)
        for r in ref.run_pndm(cfg, n, x, eps):
            assert np.array_equal(pndm_emulated(c, r), r["prev_sample"]), (name, n, r.index)


@pytest.mark.parametrize("name", list(EULER_CONFIGS))
def test_euler_bit_exact_with_diffusers(name):
    cfg, counts = EULER_CONFIGS[name]
    for n in counts_of(cfg, counts, ref.euler_constants):
        c = ref.euler_constants(cfg, n)
        x, eps = iid(n, seed=n, scale=c["init_noise_sigma"])
        for r in ref.run_euler(cfg, n, x, eps):
            for key, got in euler_emulated(c, r).items():
                assert np.array_equal(got, r[key]), (name, n, r.index, key)


@pytest.mark.parametrize("name", list(LCM_CONFIGS))
def test_lcm_bit_exact_with_diffusers(name):
    cfg, counts = LCM_CONFIGS[name]
    for n in counts:
        c = ref.lcm_constants(cfg, n)
        x, eps = iid(n, seed=n)
        for r in ref.run_lcm(cfg, n, x, eps, seed=n):
            for key, got in lcm_emulated(c, r).items():
                assert np.array_equal(got, r[key]), (name, n, r.index, key)


def test_pndm_warmup_and_timesteps():
    c = ref.pndm_constants(P.SD1_PNDM, 20)
    # 20 steps are 21 calls: the second timestep repeats (leading spacing, steps_offset 1)
    assert c["timesteps"] == [951, 901, 901] + list(range(851, 0, -50))
    assert c["terms"] == [1, 1, 2, 3] + [4] * 17
    assert c["saved_sample"] == [False, True] + [False] * 19 and c["push"] == [True, False] + [True] * 19
    # counter 1 redoes step 0 (951 -> 901) with the averaged output
    assert (c["t"][:2], c["prev_t"][:2]) == ([951, 951], [901, 901])
    assert [c[k][1] for k in ("c0", "c1", "mul", "div")] == [1.0, -1.0, 1.0, 2.0]
    assert c["prev_t"][-1] == -49 and ref.pndm_constants(P.SD1_PNDM, 1)["timesteps"] == [1]
    assert len(ref.pndm_constants(P.SD1_PNDM, 2)["timesteps"]) == 3
    # the warm-up matters: with the 4-term formula from the start, call 0 is off by far more than ulps
    x, eps = iid(21, seed=0)
    r = ref.run_pndm(P.SD1_PNDM, 20, x, eps)[0]
    bad = call(P.pndm_step, [r["sample_in"], r["model_output"], r["h1"], r["h2"], r["h3"],
                             np.array([*ref.PLMS_COEFFS[4], *ref.scalars(c, ref.PNDM_STEP_KEYS, 0)[6:]], f32)])
    assert np.abs(bad - r["prev_sample"]).max() > 0.1


def test_pndm_prev_timestep_ignores_spacing():
    """diffusers' step_plms always steps to t - num_train_timesteps // n, whatever the spacing:
    with linspace the next call's timestep is elsewhere (3 steps: 999 -> 666, next call at 500)."""
    c = ref.pndm_constants({**P.SD1_PNDM, "timestep_spacing": "linspace", "steps_offset": 0}, 3)
    assert c["timesteps"] == [999, 500, 500, 0]
    assert c["prev_t"][0] == 666 and c["t"][1] == 833


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="skip_prk_steps=False"):
        ref.pndm_constants({**P.SD1_PNDM, "skip_prk_steps": False}, 20)
    for kind, cfg in (("pndm", P.SD1_PNDM), ("euler", E.TURBO), ("lcm", L.LCM)):
        with pytest.raises(ValueError, match="prediction_type"):
            ref.make(kind, {**cfg, "prediction_type": "sample"})
    with pytest.raises(ValueError, match="clip_sample"):
        ref.make("lcm", {**L.LCM, "clip_sample": True})
    for bad in (0, 1001, 2.5, True):
        with pytest.raises(ValueError):
            ref.euler_constants(E.TURBO, bad)


def test_config_overrides_reach_diffusers():
    """make() drops '_use_default_values': diffusers' from_config would otherwise ignore an
    override of any key listed there."""
    from diffusers import EulerDiscreteScheduler

    base = dict(EulerDiscreteScheduler().config)
    assert "timestep_spacing" in base["_use_default_values"]
    assert ref.make("euler", {**base, "timestep_spacing": "trailing"}).config.timestep_spacing == "trailing"
    assert EulerDiscreteScheduler.from_config({**base, "timestep_spacing": "trailing"}).config.timestep_spacing == "linspace"


def test_euler_turbo_timesteps_and_spacing():
    ts = {n: ref.euler_constants(E.TURBO, n)["timesteps"] for n in (1, 2, 4)}
    assert ts == {1: [999.0], 2: [999.0, 499.0], 4: [999.0, 749.0, 499.0, 249.0]}
    lead = ref.euler_constants(E.CONFIGS["leading"], 4)
    assert lead["timesteps"] == [751.0, 501.0, 251.0, 1.0]
    tr = ref.euler_constants(E.TURBO, 4)
    assert tr["sigma"][0] > 14 > 5 > lead["sigma"][0]  # 4 leading steps start at t=751, sigma 4.1
    assert tr["dt"][-1] == -tr["sigma"][-1]  # final_sigmas_type "zero": the last step goes to 0
    v = ref.euler_constants(E.CONFIGS["trailing_v"], 4)
    assert v["a"] != tr["a"] and tr["b"] == [1.0] * 4 and v["scale"] == tr["scale"]


def test_lcm_timesteps_and_scalings():
    c = ref.lcm_constants(L.LCM, 4)
    assert c["timesteps"] == [999.0, 759.0, 499.0, 259.0] and c["add_noise"] == [True, True, True, False]
    assert ref.lcm_constants({**L.LCM, "original_inference_steps": 100}, 4)["timesteps"] == [999.0, 749.0, 499.0, 249.0]
    assert c["c_out"][0] > 0.99999 and c["c_skip"][0] < 1e-5  # far from t=0 the output is c_out*x0
    with pytest.raises(ValueError):  # diffusers: more steps than original_inference_steps
        ref.lcm_constants(L.LCM, 51)
    # the final alpha is never used (the last step adds no noise): set_alpha_to_one changes nothing
    for n in (1, 2, 4, 50):
        a, b = ref.lcm_constants(L.LCM, n), ref.lcm_constants({**L.LCM, "set_alpha_to_one": False}, n)
        assert {k: v for k, v in a.items() if k != "config"} == {k: v for k, v in b.items() if k != "config"}


def test_lcm_noise_is_the_one_diffusers_drew():
    """run_lcm records the noise step() drew from the generator; the formula with it is
    bit-exact, with any other draw it is not; the last step draws nothing."""
    c = ref.lcm_constants(L.LCM, 4)
    x, eps = iid(4, seed=3)
    recs = ref.run_lcm(L.LCM, 4, x, eps, seed=7)
    for r in recs[:-1]:
        assert np.array_equal(lcm_emulated(c, r)["prev_sample"], r["prev_sample"])
        other = np.random.default_rng(r.index).standard_normal(SHAPE).astype(f32)
        moved = call(L.lcm_add_noise, [r["denoised"], other, ref.scalars(c, ref.LCM_NOISE_KEYS, r.index)])
        assert np.abs(moved - r["prev_sample"]).max() > 0.1
    assert recs[-1]["noise"] is None and np.array_equal(recs[-1]["prev_sample"], recs[-1]["denoised"])
    again = ref.run_lcm(L.LCM, 4, x, eps, seed=7)
    assert all(np.array_equal(a["noise"], b["noise"]) for a, b in zip(recs[:-1], again[:-1]))


# ---- the float64 twin and the tolerances ------------------------------------------------------

def _worst_floor(chains):
    worst = {}
    for stage, chain in chains:
        for r32, r64 in zip(chain.records("float32"), chain.records("float64")):
            for out in (o.name for o in get_stage(stage).outputs):
                if out in r32.arrays and r32[out] is not None:
                    assert r64[out].dtype == np.float64
                    d = float(np.abs(r64[out] - r32[out]).max())
                    t = tol(stage, out)
                    # the float64 reference (what a backend rounding better than float32 per op
                    # approaches) stays inside the bound with room: half of atol + rtol*|ref|
                    assert np.all(np.abs(r64[out] - r32[out]) <= 0.5 * (t.atol + t.rtol * np.abs(r32[out]))), \
                        (stage, out, r32.index, d)
                    worst[(stage, out)] = max(worst.get((stage, out), 0.0), d)
    return worst


def test_float64_twins_sit_inside_the_tolerances():
    chains = [("scheduler_pndm", ref.pndm_chain(cfg, n, (1, 4, 16, 16), seed=s))
              for cfg in (P.SD1_PNDM, P.CONFIGS["v_trailing"]) for n in (3, 20) for s in (0, 1)]
    chains += [("scheduler_euler", ref.euler_chain(cfg, n, (1, 4, 16, 16), seed=s))
               for cfg in (E.TURBO, E.CONFIGS["trailing_v"], E.CONFIGS["leading"]) for n in (1, 4, 20) for s in (0, 1)]
    chains += [("scheduler_lcm", ref.lcm_chain(cfg, n, (1, 4, 16, 16), seed=s))
               for cfg in (L.LCM, L.CONFIGS["v_orig100"]) for n in (1, 4, 8) for s in (0, 1)]
    worst = _worst_floor(chains)
    assert all(v > 0 for v in worst.values()), worst  # the float64 twin is real
    assert set(worst) == {("scheduler_pndm", "prev_sample"), ("scheduler_euler", "scaled_sample"),
                          ("scheduler_euler", "pred_original_sample"), ("scheduler_euler", "prev_sample"),
                          ("scheduler_lcm", "denoised"), ("scheduler_lcm", "prev_sample")}


# ---- the TVM build ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tvm_run(tmp_path_factory):
    from sdparity.backends.native import NativeBackend

    backend = NativeBackend("llvm")
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    outs = {}
    for name in ("scheduler_pndm", "scheduler_euler", "scheduler_lcm"):
        outs[name] = tmp_path_factory.mktemp(name)
        backend.build(get_stage(name).build_ir(None, {}), outs[name])
    with backend.session() as runner:
        yield lambda stage, fn, inputs: runner.run(outs[stage], fn, inputs)[0]


def _run_cases(tvm_run, stage):
    results = {}
    for case in stage.cases(None, {}, seed=0):
        (out,) = case.outputs
        got = tvm_run(stage.name, case.function, case.inputs)
        results[case.label] = compare(got, case.reference("float32")[0], tol(stage.name, out.name),
                                      case.reference("float64")[0])
    return results


@pytest.mark.parametrize("name", ["scheduler_pndm", "scheduler_euler", "scheduler_lcm"])
def test_stage_cases_bit_exact_on_llvm(tvm_run, name):
    results = _run_cases(tvm_run, get_stage(name))
    assert results and all(m.passed for m in results.values())
    assert max(m.max_abs for m in results.values()) == 0  # llvm rounds every op as torch does
    assert max(m.noise_floor for m in results.values()) > 0


def test_tvm_hard_inputs_bit_exact(tvm_run):
    """i.i.d. model outputs (large x0, uncorrelated history) through the builds, other shapes."""
    shape = (2, 3, 5, 7)
    rng = np.random.default_rng(5)
    draw = lambda: rng.standard_normal(shape).astype(f32)  # noqa: E731
    c = ref.pndm_constants(P.SD1_PNDM, 7)
    for r in ref.run_pndm(P.SD1_PNDM, 7, draw(), [draw() for _ in range(8)]):
        got = tvm_run("scheduler_pndm", "pndm_step", [r["sample_in"], r["model_output"], r["h1"], r["h2"], r["h3"],
                                                      ref.scalars(c, ref.PNDM_STEP_KEYS, r.index)])
        assert np.array_equal(got, r["prev_sample"]), r.index
    c = ref.euler_constants(E.CONFIGS["trailing_v"], 3)
    for r in ref.run_euler(E.CONFIGS["trailing_v"], 3, draw() * 14, [draw() for _ in range(3)]):
        got = tvm_run("scheduler_euler", "euler_convert_model_output",
                      [r["sample"], r["model_output"], ref.scalars(c, ref.EULER_CONVERT_KEYS, r.index)])
        assert np.array_equal(got, r["pred_original_sample"]), r.index
    c = ref.lcm_constants(L.LCM, 3)
    for r in ref.run_lcm(L.LCM, 3, draw(), [draw() for _ in range(3)], seed=2):
        got = tvm_run("scheduler_lcm", "lcm_denoise", [r["sample"], r["model_output"],
                                                       ref.scalars(c, ref.LCM_DENOISE_KEYS, r.index)])
        assert np.array_equal(got, r["denoised"]), r.index


# ---- faults: each fails exactly where it should -------------------------------------------------

def _failed(tvm_run, name, fault):
    results = _run_cases(tvm_run, get_stage(name).with_fault(fault))
    return {k for k, m in results.items() if not m.passed}, results


def test_fault_pndm_warmup_skipped(tvm_run):
    failed, results = _failed(tvm_run, "scheduler_pndm", "warmup_skipped")
    # every warm-up call (counters 0-3) fails; from counter 4 on the formula is the full one
    assert {"sd1/n20/k0", "sd1/n20/k1", "sd1/n20/k2", "sd1/n20/k3", "sd1/n1/k0", "v_trailing/n4/k3"} <= failed
    assert not any(f"/k{k}" in label for label in failed for k in range(4, 51))
    assert results["sd1/n20/k4"].max_abs == 0


def test_fault_pndm_heun_from_current_sample(tvm_run):
    failed, _ = _failed(tvm_run, "scheduler_pndm", "heun_from_current_sample")
    assert failed == {"sd1/n20/k1", "sd1/n3/k1", "v_trailing/n4/k1"}


def test_fault_euler_v_prediction_as_epsilon(tvm_run):
    failed, _ = _failed(tvm_run, "scheduler_euler", "v_prediction_as_epsilon")
    v_convert = {f"trailing_v/n{n}/k{k}/convert" for n, ks in ((1, (0,)), (4, (0, 1, 2, 3))) for k in ks}
    assert failed == v_convert


def test_fault_euler_leading_for_trailing(tvm_run):
    failed, results = _failed(tvm_run, "scheduler_euler", "leading_for_trailing")
    assert {"trailing/n1/k0/scale", "trailing/n4/k0/convert", "trailing/n4/k0/step"} <= failed
    assert all(label.startswith(("trailing/", "trailing_v/")) for label in failed)
    assert results["trailing/n1/k0/convert"].max_abs > 1  # x0 = x - sigma*eps with sigma 14.6 vs 0.041 (t=1)


def test_fault_lcm_c_skip_c_out_swapped(tvm_run):
    failed, results = _failed(tvm_run, "scheduler_lcm", "c_skip_c_out_swapped")
    assert failed == {label for label in results if label.endswith("/denoise")}


def test_fault_lcm_v_prediction_as_epsilon(tvm_run):
    failed, _ = _failed(tvm_run, "scheduler_lcm", "v_prediction_as_epsilon")
    assert failed == {f"v_orig100/n4/k{k}/denoise" for k in range(4)}
