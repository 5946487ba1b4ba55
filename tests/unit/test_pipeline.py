"""The whole Web Stable Diffusion pipeline, driven through the native stage builds, against
diffusers.StableDiffusionPipeline with the same weights and injected latents: per step and
per pixel, each step's error measured against its float64 floor (reference.pipeline.
float64_generate) with the calibrated budget of its group ("pipeline/latents/llvm/tiny"; other
schedulers "pipeline_<scheduler>/...", SD 2.x and SDXL their own scopes). This is what the
browser app does; here without a browser, for SD 1.x, SD 2.x and SDXL with every scheduler."""

from __future__ import annotations

import pytest

from reference.pipeline import diffusers_generate, float64_generate, initial_latents
from sdparity.app.pipeline import (GUIDANCE, NEGATIVE, PROMPT, STEPS, build_stages, first_failing_step,
                                   generate, judge_generation, rgba_to_u8, steps_without_budget)



def _latent(model):
    """Each model at its own sample size, as calibrated and as the browser e2e runs it (the tiny
    SD 1.x 16x16, the SD 2.x and SDXL tiny models 8x8): the generation shares its stage builds
    with the model's own checks (test_parity.py, test_model_family.py)."""
    return tuple(model.default_latent_hw)


@pytest.fixture(scope="module")
def ref(tiny):
    lat = initial_latents(tiny, _latent(tiny), seed=0)
    return (lat, diffusers_generate(tiny, PROMPT, NEGATIVE, STEPS, GUIDANCE, lat),
            float64_generate(tiny, PROMPT, NEGATIVE, STEPS, GUIDANCE, lat))


def _generate(backend, tiny, cache, lat, arts=None, **kw):
    arts = {**build_stages(backend, tiny, cache, _latent(tiny), log=lambda *a: None), **(arts or {})}
    with backend.session() as r:
        out = generate(r, arts, tiny, **{"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": STEPS,
                                         "guidance": GUIDANCE, "latents": lat, "seed": 0, **kw})
    out["pixels"] = rgba_to_u8(out["rgba"])
    return out


def _references(model, scheduler="dpm", steps=STEPS):
    """(injected latents, diffusers' generation, its float64 twin) for seed 0 (LCM: its step
    noise drawn after the latents)."""
    lat = initial_latents(model, _latent(model), seed=0)
    return (lat, diffusers_generate(model, PROMPT, NEGATIVE, steps, GUIDANCE, lat, scheduler=scheduler, seed=0),
            float64_generate(model, PROMPT, NEGATIVE, steps, GUIDANCE, lat, scheduler=scheduler, seed=0))


def _judged(backend, model, cache, refs, scheduler="dpm", steps=STEPS, **kw):
    """The llvm driver's generation from ``refs``' latents, judged against them."""
    lat, r, r64 = refs
    gen = _generate(backend, model, cache, lat, steps=steps, scheduler=scheduler, **kw)
    return judge_generation(gen, r, r64, backend.name, model.scope, scheduler=scheduler)


def _assert_passes(recs, group):
    bad = [f"{x['case']} {x['output']}: {x['message']}" for x in recs if x["verdict"] != "pass"]
    assert not bad, bad
    steps = [x for x in recs if x["output"] == "latents"]
    assert steps and steps[0]["tolerance"]["floor_budget"] and not steps_without_budget(steps), f"no {group} budget"


def test_native_pipeline_matches_diffusers(llvm, tiny, cache, ref):
    lat, r, r64 = ref
    out = _generate(llvm, tiny, cache, lat)
    assert out["timesteps"] == r["timesteps"]
    recs = judge_generation(out, r, r64, "llvm", "tiny")
    bad = [f"{x['case']} {x['output']}: {x['message']}" for x in recs if x["verdict"] != "pass"]
    assert not bad, bad
    steps = [x for x in recs if x["output"] == "latents"]
    assert len(steps) == STEPS
    # every step is judged by its floor, not by the absolute bound alone
    assert all(x["metrics"]["floor_budget"] is not None for x in steps), steps[0]["message"]
    assert r["image_u8"].std() > 5  # a real image, not a constant


def test_tutorial_constants_diverge_at_the_last_step(llvm, tiny, cache, ref):
    from reference.dpm import tutorial_constants

    lat, r, r64 = ref
    out = _generate(llvm, tiny, cache, lat, constants=tutorial_constants(dict(tiny.pipe.scheduler.config), 20))
    bad = first_failing_step(judge_generation(out, r, r64, "llvm", "tiny"))
    assert bad is not None, "tutorial-era constants went unnoticed"
    assert bad["case"] == "step 20", bad  # earlier steps agree to float32 rounding; the final step breaks
    print(f"tutorial constants: first divergence at {bad['case']}: {bad['message']}")


def test_gelu_as_tanh_fails_the_generation_by_its_floor(llvm, tiny, cache, tmp_path, ref):
    """A lowering change the absolute bound lets through: GELU lowered as its tanh approximation
    (through TVM's op-attribute registry) in every build of the pipeline. Each step's latents
    stay within the absolute 2e-4, but err/floor leaves the calibrated budget."""
    from sdparity.cache import BuildCache
    from sdparity.registry import get_stage
    from tests.perturb import gelu_tanh_lowered

    lat, r, r64 = ref
    unet = get_stage("unet")  # the one pipeline stage with a GELU (CLIP's is quick_gelu, the VAE's SiLU)
    variant = {**unet.default_variant(tiny), "latent": list(_latent(tiny))}
    with gelu_tanh_lowered():  # the perturbed build goes to a cache of its own
        art, _, _ = llvm.build_cached(lambda: unet.build_ir(tiny, variant), unet.build_key(tiny, variant),
                                      BuildCache(root=tmp_path / "cache"), log=lambda *a: None, label="unet")
    out = _generate(llvm, tiny, cache, lat, arts={"unet": art})
    recs = judge_generation(out, r, r64, "llvm", "tiny")
    bad = first_failing_step(recs)
    assert bad is not None, "GELU as tanh went unnoticed by the generation's check"
    assert bad["failed_bound"] == "floor", bad["message"]  # the absolute bound alone would pass it
    m = bad["metrics"]
    assert m["floor_ratio"] > m["floor_budget"]
    print(f"GELU as tanh: first failing {bad['case']}: {bad['message']}")


@pytest.fixture(scope="module")
def sd2():
    from reference.models import load_model

    return load_model("tiny-sd2", log=lambda *a: None)


def test_sd2_generation_converts_v_prediction_and_matches_diffusers(llvm, sd2, cache, monkeypatch):
    """SD 2.x (v-prediction) through the same loop, judged per step by its own scope's budgets;
    the loop converting its output as epsilon (an app that ignores prediction_type) fails at
    step 1."""
    refs = _references(sd2)
    _assert_passes(_judged(llvm, sd2, cache, refs), "sd2-tiny")

    from sdparity.stages import scheduler_dpm

    monkeypatch.setattr(scheduler_dpm, "convert_function", lambda cfg: "dpm_convert_model_output")
    first = first_failing_step(_judged(llvm, sd2, cache, refs))
    assert first is not None and first["case"] == "step 01", first


@pytest.fixture(scope="module")
def sdxl():
    from reference.models import load_model

    return load_model("tiny-sdxl", log=lambda *a: None)


def test_sdxl_generation_matches_diffusers_with_its_added_conditions(llvm, sdxl, cache, monkeypatch):
    """SDXL through the same loop (two tokenizers and text encoders, the pooled text_embeds and
    the time ids as the UNet's added conditions) against StableDiffusionXLPipeline, judged per
    step by its own scope's budgets; the sizes of add_time_ids given in latent units instead of
    pixels (8 where the pipeline says 64) fails at step 1."""
    import reference.pipeline

    refs = _references(sdxl)
    recs = _judged(llvm, sdxl, cache, refs)
    _assert_passes(recs, "sdxl-tiny")
    assert {x["output"] for x in recs} == {"embeddings", "pooled", "latents", "pixels"}

    monkeypatch.setattr(reference.pipeline, "sdxl_time_ids", lambda pipe, hw: [*hw, 0, 0, *hw])
    first = first_failing_step(_judged(llvm, sdxl, cache, refs))
    assert first is not None and first["case"] == "step 01", first


#: per scheduler, a loop that gets its bookkeeping wrong (constants changed the way such a loop
#: would use them) and the first step that must fail
LOOP_FAULTS = {
    "euler": ("init_noise_sigma", "step 01"),  # the injected noise not scaled by sigma_max
    "pndm": ("saved_sample", "step 02"),  # the warm-up's second call from the current sample
    "lcm": ("c_skip_c_out_swapped", "step 01"),  # the boundary-condition scalings change places
}


def _with_loop_fault(consts: dict, fault: str) -> dict:
    return {"init_noise_sigma": lambda: {**consts, "init_noise_sigma": 1.0},
            "saved_sample": lambda: {**consts, "saved_sample": [False] * len(consts["timesteps"])},
            "c_skip_c_out_swapped": lambda: {**consts, "c_skip": consts["c_out"], "c_out": consts["c_skip"]}}[fault]()


def _other_scheduler(llvm, model, cache, scheduler, group):
    """A generation with ``scheduler`` passes by its group's budgets, one record per UNet call
    (PNDM: steps + 1), and its loop fault fails at its first step."""
    from reference.pipeline import scheduler_constants
    from sdparity.app.pipeline import SCHEDULER_STEPS

    steps = SCHEDULER_STEPS[scheduler]
    refs = _references(model, scheduler, steps)
    recs = _judged(llvm, model, cache, refs, scheduler, steps)
    _assert_passes(recs, f"pipeline_{scheduler} {group}")
    consts = scheduler_constants(dict(model.pipe.scheduler.config), scheduler, steps)
    assert len([x for x in recs if x["output"] == "latents"]) == len(refs[1]["latents"]) == len(consts["timesteps"])
    assert {x["stage"] for x in recs} == {f"pipeline_{scheduler}"} and {x["model_scope"] for x in recs} == {group}
    fault, first_bad = LOOP_FAULTS[scheduler]
    first = first_failing_step(_judged(llvm, model, cache, refs, scheduler, steps,
                                       constants=_with_loop_fault(consts, fault)))
    assert first is not None and first["case"] == first_bad, first


@pytest.mark.parametrize("scheduler", sorted(LOOP_FAULTS))
def test_other_schedulers_generate_as_diffusers_and_their_loop_faults_fail(llvm, tiny, cache, scheduler):
    """Euler (trailing spacing, 4 steps), PNDM (10 steps, 11 UNet calls) and LCM (4 steps, noise
    added after the first three) through the same stage builds and the same judge, against
    StableDiffusionPipeline with that scheduler, each by its own group's budgets (stage
    pipeline_<scheduler>); a loop that gets the scheduler's bookkeeping wrong fails at the first
    step it touches."""
    _other_scheduler(llvm, tiny, cache, scheduler, "tiny")


@pytest.mark.parametrize("scheduler", sorted(LOOP_FAULTS))
@pytest.mark.parametrize("family, group", [("sd2", "sd2-tiny"), ("sdxl", "sdxl-tiny")])
def test_the_family_generates_with_every_scheduler(llvm, cache, family, group, scheduler, request):
    """SD 2.x (v-prediction: each scheduler's own conversion) and SDXL (its added conditions)
    with Euler (trailing spacing: SD-Turbo's and SDXL-Turbo's), PNDM and LCM (LCM-SDXL's and
    LCM-LoRA's) against their diffusers pipelines with that scheduler, per step by their own
    scopes' budgets (pipeline_<scheduler>/*/llvm/<scope>); each loop fault fails at its step."""
    _other_scheduler(llvm, request.getfixturevalue(family), cache, scheduler, group)


def test_calibrate_refuses_a_scheduler_without_pipeline(capsys):
    """--scheduler picks a generation's scheduler: without --pipeline it would be ignored
    silently, so it is one line and exit 2, before any work."""
    from sdparity.cli import main

    assert main(["calibrate", "--scheduler", "pndm", "-q"]) == 2
    assert "--scheduler pndm needs --pipeline" in capsys.readouterr().err
