"""The Web Stable Diffusion pipeline driven from Python through any backend's stage builds.

This is the same sequence the browser app (web/app) runs, step for step; running it on the
native backend proves the *composition* (concat order, CFG, scheduler constants, history
buffer, VAE, packing) against diffusers.StableDiffusionPipeline before a browser is involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdparity.registry import get_stage
from sdparity.stages import PIPELINE_STAGES


#: known issues a generation's builds must neutralize to build at all, by architecture and
#: backend: SDXL's CLIP (its EOS argmax and pooling gather in int64) does not build for WebGPU
#: as TVM stands. Declared, never silent: the build says so, the app's config.json names it
#: (``neutralized``), the page shows it, every generation record carries it
#: (``neutralized_in_build``), and ``sdparity check`` proves it a known issue.
BUILD_NEUTRALIZE = {("sdxl", "webgpu"): ("tvm_webgpu_int64_argmax",)}


def build_neutralize(model, backend, neutralize=None, log=print) -> list[str]:
    """``neutralize`` with what BUILD_NEUTRALIZE requires for this model and backend."""
    required = BUILD_NEUTRALIZE.get((model.architecture, backend.name), ())
    if required:
        log(f"{model.name} on {backend.name}: built with known issue(s) {', '.join(required)} neutralized: "
            f"as TVM stands it cannot build otherwise (docs/known-issues.md)")
    return sorted({*required, *(neutralize or ())})


def build_stages(backend, model, cache, latent_hw, log=print, neutralize: list[str] | None = None
                 ) -> dict[str, Path]:
    """function name -> artifact folder, for every function the pipeline calls. ``neutralize``:
    known issues neutralized in the builds of stages with weights (as runner.run_checks), with
    those BUILD_NEUTRALIZE requires."""
    neutralize = build_neutralize(model, backend, neutralize, log)
    arts = {}
    for name in APP_STAGES:
        st = get_stage(name)
        variant = st.default_variant(model)
        if "latent" in variant:
            variant = {**variant, "latent": list(latent_hw)}
        if neutralize and st.component:
            variant = {**variant, "neutralize": sorted(neutralize)}
        art, _, cached = backend.build_cached(lambda s=st, v=variant: s.build_ir(model, v),
                                              st.build_key(model, variant), cache, log=log,
                                              label=f"{name}/{backend.name}")
        for fn in st.functions:
            arts[fn] = art
    return arts


#: the scheduler stage each of reference.pipeline.SCHEDULERS steps with; the app builds them all
SCHEDULER_STAGES = {"dpm": "scheduler_dpm", "euler": "scheduler_euler", "pndm": "scheduler_pndm",
                    "lcm": "scheduler_lcm"}
#: every stage the app and this driver build: the pipeline's (stages/pipeline.json), then the
#: other schedulers'
APP_STAGES = PIPELINE_STAGES + tuple(s for s in SCHEDULER_STAGES.values() if s not in PIPELINE_STAGES)


def generation_stage(scheduler: str) -> str:
    """The records' stage of a generation: "pipeline" with DPM-Solver++ (the app's default),
    "pipeline_euler", "pipeline_pndm", "pipeline_lcm": each scheduler's trajectory has its own
    budgets."""
    return "pipeline" if scheduler == "dpm" else f"pipeline_{scheduler}"


def generate(runner, arts: dict[str, Path], model, prompt: str, negative_prompt: str, steps: int,
             guidance: float, latents: np.ndarray, constants: dict | None = None,
             scheduler: str = "dpm", seed: int | None = None) -> dict:
    """Run the pipeline; return the same trace as reference.pipeline.diffusers_generate.
    ``scheduler``: one of reference.pipeline.SCHEDULERS (the constants: scheduler_constants).
    ``seed``: the latents' seed; LCM's steps add the noise diffusers draws after them
    (reference.pipeline.with_noises)."""
    from reference.pipeline import scheduler_constants, sdxl_time_ids, with_noises

    from sdparity.stages.clip import tokenize
    from sdparity.stages.scheduler_dpm import convert_function

    def call(fn, *inputs):
        return runner.run(arts[fn], fn, [np.asarray(x) for x in inputs])

    consts = constants or scheduler_constants(dict(model.pipe.scheduler.config), scheduler, steps)
    consts = with_noises(consts, seed, np.shape(latents))
    convert = convert_function(dict(model.pipe.scheduler.config))  # SD 2.x: v-prediction
    tokenizers = [model.tokenizer] + ([model.tokenizer_2] if model.architecture == "sdxl" else [])
    # SD 1.x/2.x: (embeddings,); SDXL: (embeddings, encoder 2's pooled text_embeds)
    pos, *pooled = call("clip", *(tokenize(tok, prompt) for tok in tokenizers))
    neg, *neg_pooled = call("clip", *(tokenize(tok, negative_prompt) for tok in tokenizers))
    (emb,) = call("concat_embeddings", neg, pos)
    x = np.asarray(latents, np.float32)
    added, texts = [], {"positive": pos, "negative": neg}
    if pooled:  # SDXL's added conditions: pooled [uncond; cond] (stacked on the host, as the
        # page does), then the sizes
        ids = np.array(sdxl_time_ids(model.pipe, x.shape[2:]), np.int32)
        added = [np.concatenate([neg_pooled[0], pooled[0]]), ids[0:2], ids[2:4], ids[4:6]]
        texts.update(pooled=pooled[0], negative_pooled=neg_pooled[0])

    def unet(x_in, k):  # the guided UNet output at call k
        t = np.array(int(consts["timesteps"][k]), np.int32)
        return call("unet", x_in, t, emb, *added, np.array(guidance, np.float32))[0]

    trace = list(_LOOPS[scheduler](x, unet, call, consts, convert))
    image_float, image = call("vae", trace[-1])
    (rgba,) = call("image_to_rgba", image)
    return {**texts, "latents": trace, "timesteps": consts["timesteps"],
            "image_float": image_float, "image": image, "rgba": rgba}


# The denoising loops, one per scheduler, through the stages' functions (web/common/pipeline.js
# has the same four): x the injected latents, unet(x_in, k) the guided output at call k,
# call(function, *inputs) a built function. Each yields the latents after every UNet call.

def _dpm_loop(x, unet, call, consts, convert):
    from reference.dpm import STEP_KEYS

    def c(key, k):
        return np.array(consts[key][k], np.float32)

    hist = np.zeros_like(x)  # never uninitialized: first-order steps multiply it by 0
    for k in range(len(consts["timesteps"])):
        eps = unet(x, k)
        (x0,) = call(convert, x, eps, c("alpha", k), c("sigma", k))
        (x,) = call("dpm_step", x, x0, hist, *[c(key, k) for key in STEP_KEYS])
        hist = x0
        yield x


def _euler_loop(x, unet, call, consts, convert):
    from reference.schedulers import EULER_CONVERT_KEYS, EULER_SCALE_KEYS, EULER_STEP_KEYS, scalars

    x = x * np.float32(consts["init_noise_sigma"])  # the pipeline's prepare_latents, float32
    for k in range(len(consts["timesteps"])):
        (xs,) = call("euler_scale_model_input", x, scalars(consts, EULER_SCALE_KEYS, k))
        eps = unet(xs, k)
        (x0,) = call("euler_convert_model_output", x, eps, scalars(consts, EULER_CONVERT_KEYS, k))
        (x,) = call("euler_step", x, x0, scalars(consts, EULER_STEP_KEYS, k))
        yield x


def _pndm_loop(x, unet, call, consts, convert):
    from reference.schedulers import PNDM_STEP_KEYS, scalars

    zero = np.zeros_like(x)
    saved, h1, h2, h3 = x, zero, zero, zero
    for k in range(len(consts["timesteps"])):
        eps = unet(x, k)
        x_in = saved if consts["saved_sample"][k] else x  # counter 1 redoes step 0 from its sample
        (x,) = call("pndm_step", x_in, eps, h1, h2, h3, scalars(consts, PNDM_STEP_KEYS, k))
        if consts["push"][k]:
            h1, h2, h3 = eps, h1, h2
        yield x


def _lcm_loop(x, unet, call, consts, convert):
    from reference.schedulers import LCM_DENOISE_KEYS, LCM_NOISE_KEYS, scalars

    for k in range(len(consts["timesteps"])):
        eps = unet(x, k)
        (x,) = call("lcm_denoise", x, eps, scalars(consts, LCM_DENOISE_KEYS, k))
        if consts["add_noise"][k]:  # every step but the last: diffusers' noise, drawn after the latents
            (x,) = call("lcm_add_noise", x, consts["noise"][k], scalars(consts, LCM_NOISE_KEYS, k))
        yield x


_LOOPS = {"dpm": _dpm_loop, "euler": _euler_loop, "pndm": _pndm_loop, "lcm": _lcm_loop}


def rgba_to_u8(rgba: np.ndarray) -> np.ndarray:
    """(H,W) uint32 -> (H,W,3) uint8 (little-endian r,g,b)."""
    return rgba.astype("<u4").view(np.uint8).reshape(*rgba.shape, 4)[..., :3]


def judge_generation(gen: dict, ref: dict, ref64: dict, backend: str, scope: str,
                     device_class: str = "cpu", scheduler: str = "dpm", **extra) -> list[dict]:
    """A generation judged against diffusers': ``sdparity.report/1`` records of stage "pipeline"
    (another scheduler than DPM-Solver++: ``generation_stage``, its own budgets).

    gen: the generation's embeddings, per-step latents and final pixels (``positive``,
    ``negative``, SDXL also ``pooled`` and ``negative_pooled``, ``latents``: a list,
    ``pixels``: HxWx3 uint8), from any driver (this module,
    the browser app, Node on Dawn). ref: reference.pipeline.diffusers_generate; ref64:
    reference.pipeline.float64_generate, the noise floor of the embeddings and of every step.
    Each output is judged by the one record maker (runner.judge_case: the one comparison,
    sdparity.compare) with the table's tolerance and the calibrated err/floor budget of its
    (pipeline, output, backend, scope) group; cases:
    "prompt", "negative prompt", "step 01".."step NN", "image". ``extra``: fields every record
    carries (e.g. the card)."""
    from types import SimpleNamespace

    from sdparity.registry import Case, Output
    from sdparity.runner import Mode, judge_by_table, judge_case

    records, stage = [], SimpleNamespace(name=generation_stage(scheduler))

    def group_rule(st, spec, backend, scope, _case, cand, ref, ref64):
        # the group's budget, not a step's own: step k of a 3-step run is not step k of 20
        return judge_by_table(st, spec, backend, scope, None, cand, ref, ref64)

    mode = Mode(name="generation", judge=group_rule, extra=extra)

    def judge(case, output, cand, r32, r64=None, integer=False):
        cand = np.asarray(cand)
        c = Case(case, "generate", [], None, (Output(output, integer),), {output: list(cand.shape)})
        records.extend(judge_case(stage, backend, device_class, c, [cand], [np.asarray(r32)],
                                  [None if r64 is None else np.asarray(r64)], scope, None, lambda *_: None, mode))

    judge("prompt", "embeddings", gen["positive"], ref["positive"], ref64["positive"])
    judge("negative prompt", "embeddings", gen["negative"], ref["negative"], ref64["negative"])
    if "pooled" in ref:  # SDXL: encoder 2's pooled text_embeds, an added condition of its UNet
        judge("prompt", "pooled", gen["pooled"], ref["pooled"], ref64["pooled"])
        judge("negative prompt", "pooled", gen["negative_pooled"], ref["negative_pooled"], ref64["negative_pooled"])
    if len(gen["latents"]) != len(ref["latents"]):
        records.append(dict(records[-1], case="steps", output="latents", verdict="fail", metrics=None,
                            failed_bound="shape", message=f"{len(gen['latents'])} steps, diffusers ran "
                            f"{len(ref['latents'])}"))
    for k, (a, b, b64) in enumerate(zip(gen["latents"], ref["latents"], ref64["latents"])):
        judge(f"step {k + 1:02d}", "latents", a, b, b64)
    judge("image", "pixels", gen["pixels"], ref["image_u8"], integer=True)
    return records


def first_failing_step(records: list[dict]) -> dict | None:
    """The first per-step latents record that did not pass (None: every step passed)."""
    return next((r for r in records if r["output"] == "latents" and r["verdict"] != "pass"), None)


def steps_without_budget(records: list[dict]) -> list[dict]:
    """The per-step latents records judged by the absolute rule alone although their floor is
    not negligible (``compare.NEGLIGIBLE_FLOOR``): steps whose group has no calibrated budget.
    A step that barely moves the latents (a negligible floor) is rightly judged by the absolute
    rule alone."""
    from sdparity.compare import NEGLIGIBLE_FLOOR

    return [r for r in records if r["output"] == "latents" and r["metrics"]["floor_budget"] is None
            and not (r["metrics"]["floor_rel"] is not None and r["metrics"]["floor_rel"] <= NEGLIGIBLE_FLOOR)]


PROMPT, NEGATIVE, STEPS, GUIDANCE = "a photo of a cat", "blurry", 20, 7.5
#: the step count of a generation with each scheduler (the tests' and the calibration's): the
#: app's 20 DPM-Solver++ steps, SD-Turbo's 4 for Euler with trailing spacing, 10 for PLMS
#: (11 UNet calls, its warm-up included), LCM-LoRA's 4 for LCM
SCHEDULER_STEPS = {"dpm": STEPS, "euler": 4, "pndm": 10, "lcm": 4}


def generation_records(backend, model, cache, seed: int, latent_hw, log=print, prompt: str = PROMPT,
                       negative_prompt: str = NEGATIVE, steps: int | None = None, guidance: float = GUIDANCE,
                       neutralize: list[str] | None = None, prove_known: bool = True,
                       scheduler: str = "dpm") -> list[dict]:
    """One generation through ``backend``'s stage builds from seeded latents, judged against
    diffusers (float32) with the float64 loop as its floor: the records of ``judge_generation``.
    ``neutralize``: known issues neutralized in the builds (the calibration's). A failing record
    is ``known`` only as the runner proves it (runner._prove_known): the whole generation made
    again with every issue that pre-selects a failure neutralized, and that record passing."""
    from reference.pipeline import diffusers_generate, float64_generate, initial_latents

    steps = SCHEDULER_STEPS[scheduler] if steps is None else steps
    lat = initial_latents(model, tuple(latent_hw), seed)
    ref = diffusers_generate(model, prompt, negative_prompt, steps, guidance, lat, scheduler=scheduler, seed=seed)
    ref64 = float64_generate(model, prompt, negative_prompt, steps, guidance, lat, scheduler=scheduler, seed=seed)

    def run(issues):  # issues: everything neutralized in this generation's builds
        arts = build_stages(backend, model, cache, latent_hw, log=log, neutralize=issues)
        with backend.session() as runner:
            out = generate(runner, arts, model, prompt, negative_prompt, steps, guidance, lat, scheduler=scheduler,
                           seed=seed)
        out["pixels"] = rgba_to_u8(out["rgba"])
        return judge_generation(out, ref, ref64, backend.name, model.scope, backend.device_class,
                                scheduler=scheduler, seed=seed, latent=list(latent_hw), neutralized_in_build=issues)

    already = build_neutralize(model, backend, neutralize, log=lambda *a: None)  # with what the build requires
    records = run(already)
    if prove_known:
        prove_generation(records, lambda ids: run(sorted({*ids, *already})), already)
    return records


def prove_generation(records: list[dict], again, already=None) -> list[dict]:
    """A failing generation record is ``known`` only as proven (in place): ``again(ids)`` makes
    the whole generation again with every issue that pre-selects a failure neutralized and
    returns its records; each failing record is settled by its own case and output there
    (sdparity.known_issues.settle). ``already``: issues neutralized in ``records`` themselves.
    Every driver's generation goes through here: the Python one (``generation_records``) and
    the browser app (tests/e2e)."""
    from sdparity import known_issues

    failed = [r for r in records if r["verdict"] in ("fail", "error")]
    ids = sorted({i.id for r in failed for i in known_issues.candidates(r)} - set(already or ()))
    if not ids:
        return records
    why = known_issues.no_neutralizer(ids)
    redo = {} if why else {(r["case"], r["output"]): r for r in again(ids)}
    for rec in failed:
        r = redo.get((rec["case"], rec["output"]))
        known_issues.settle(rec, ids, why, [r] if r else [])
    return records
