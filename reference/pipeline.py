"""End-to-end reference: the real diffusers pipeline (StableDiffusionPipeline, for SDXL
StableDiffusionXLPipeline) with injected latents, traced at every step. The browser app and
sdparity.app.pipeline are compared against this."""

from __future__ import annotations

import numpy as np


def initial_latents(model, latent_hw: tuple[int, int], seed: int) -> np.ndarray:
    """The injected starting noise (torch.randn with a seeded generator, as diffusers would)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c = int(model.unet.config.in_channels)
    return torch.randn((1, c, *latent_hw), generator=g, dtype=torch.float32).numpy()


def pipeline_generator(seed: int, shape):
    """The generator a pipeline with injected latents (``initial_latents(seed)``) is given: seeded
    as theirs and advanced past their draw, so its scheduler's draws are ``step_noises(seed, ...)``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    torch.randn(tuple(shape), generator=g, dtype=torch.float32)  # the latents' draw
    return g


def step_noises(seed: int, shape, count: int) -> list[np.ndarray]:
    """The noise a stochastic scheduler's steps draw (LCM: every step but the last) from
    ``pipeline_generator(seed, shape)``: what a diffusers pipeline given
    ``generator=torch.Generator().manual_seed(seed)`` and no latents would draw after the
    latents. ``randn_tensor`` on the CPU is ``torch.randn`` with the generator."""
    import torch

    g = pipeline_generator(seed, shape)
    return [torch.randn(tuple(shape), generator=g, dtype=torch.float32).numpy() for _ in range(count)]


#: the schedulers a generation runs with (the app's picker): DPM-Solver++ 2M (the model's own
#: config), Euler with trailing spacing (SD-Turbo's: 1-4 steps), PNDM/PLMS (SD 1.x's first) and
#: LCM (LCM-LoRA's and LCM-Dreamshaper's: 4 steps, noise drawn again at every step but the last)
SCHEDULERS = ("dpm", "euler", "pndm", "lcm")


def scheduler_config(base: dict, kind: str) -> dict:
    """The scheduler config a generation with ``kind`` uses, from the model's (DPM) config: the
    prediction type and betas stay the model's; Euler takes SD-Turbo's trailing spacing, PNDM
    SD 1.x's shipped settings (PLMS without the Runge-Kutta warm-up, leading spacing, offset 1)."""
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    if kind == "dpm":
        return base
    import inspect

    import diffusers

    cls = {"euler": diffusers.EulerDiscreteScheduler, "pndm": diffusers.PNDMScheduler,
           "lcm": diffusers.LCMScheduler}.get(kind)
    if cls is not None:  # only what that scheduler takes: DPM's lambda_min_clipped is -inf, not JSON
        base = {k: v for k, v in base.items() if k in inspect.signature(cls.__init__).parameters}
    if kind == "euler":
        return {**base, "timestep_spacing": "trailing", "steps_offset": 1}
    if kind == "pndm":
        return {**base, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1,
                "timestep_spacing": "leading"}
    if kind == "lcm":  # LCM-LoRA's / LCM-Dreamshaper's (sdparity.stages.scheduler_lcm.LCM)
        return {**base, "original_inference_steps": 50, "timestep_scaling": 10.0, "clip_sample": False,
                "set_alpha_to_one": True, "steps_offset": 1, "timestep_spacing": "leading"}
    raise ValueError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")


def scheduler_constants(base: dict, kind: str, steps: int) -> dict:
    """The per-step constants of a ``kind`` generation of ``steps`` steps (reference.dpm,
    reference.schedulers): every float a float32 value. ``timesteps``: one per UNet call
    (PNDM: steps + 1 for steps > 1), integers (the UNet stage takes int32)."""
    from reference import dpm, schedulers

    cfg = scheduler_config(base, kind)
    consts = {"dpm": dpm.compute_constants, "euler": schedulers.euler_constants,
              "pndm": schedulers.pndm_constants, "lcm": schedulers.lcm_constants}[kind](cfg, steps)
    if any(float(t) != int(t) for t in consts["timesteps"]):
        raise ValueError(f"{kind} gives non-integer timesteps for {steps} steps ({consts['timesteps'][:4]}...): "
                         f"the UNet stage takes int32 timesteps")
    return consts


def with_noises(consts: dict, seed: int | None, shape) -> dict:
    """The constants with the noise each step adds (``noise``: one array per call k whose
    ``add_noise[k]``; LCM's steps but the last): ``step_noises(seed, shape, ...)``. Schedulers
    that draw nothing are returned as they are."""
    adds = consts.get("add_noise", ())
    if not any(adds):
        return consts
    if seed is None:
        raise ValueError(f"{consts['format']}: the generation draws noise at its steps; it needs the seed")
    drawn = iter(step_noises(seed, shape, sum(map(bool, adds))))  # in the order the steps draw
    return {**consts, "noise": [next(drawn) if a else None for a in adds]}


def make_scheduler(base: dict, kind: str):
    """The real diffusers scheduler of a ``kind`` generation."""
    from reference import schedulers

    if kind == "dpm":
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(scheduler_config(base, kind))
    return schedulers.make(kind, scheduler_config(base, kind))


def diffusers_generate(model, prompt: str, negative_prompt: str, steps: int, guidance: float,
                       latents: np.ndarray, device: str = "cpu", timings: dict | None = None,
                       scheduler: str = "dpm", seed: int | None = None) -> dict:
    """Run the model's diffusers pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline)
    with the pinned DPM-Solver++ scheduler from the model folder, or another of SCHEDULERS
    (``scheduler_config``; the pipeline scales the injected latents by its init_noise_sigma).
    seed: the seed of the injected latents (``initial_latents``); the pipeline's generator
    continues from it, so a scheduler that draws noise (LCM) draws ``step_noises(seed, ...)``.

    model: a reference.models.LoadedModel, or a StableDiffusionPipeline itself (the GPU
    machine builds one from recreated components). device: where the pipeline runs (it must
    already be there). timings, when given, receives per-step wall times (s, synchronized)
    and the total.

    Returns text embeddings, the latents after every step, and the final image as diffusers
    produces it: float HWC in [0,1] and uint8 = round(255 * x) (diffusers' numpy_to_pil)."""
    import time

    import torch

    pipe = getattr(model, "pipe", model)
    own = pipe.scheduler  # the model's; put back after the run
    pipe.set_progress_bar_config(disable=True)
    trace: list[np.ndarray] = []
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    marks: list[float] = []

    def on_step(p, i, t, kw):
        sync()
        marks.append(time.perf_counter())
        trace.append(kw["latents"].detach().float().cpu().numpy())
        return kw

    h, w = latents.shape[2] * pipe.vae_scale_factor, latents.shape[3] * pipe.vae_scale_factor
    if scheduler == "lcm" and seed is None:
        raise ValueError("an lcm generation draws noise at its steps: diffusers_generate needs the seed")
    generator = None if seed is None else pipeline_generator(seed, latents.shape)
    try:
        pipe.scheduler = make_scheduler(dict(own.config), scheduler)
        with torch.no_grad():
            enc = encode_prompt(pipe, prompt, negative_prompt, device)
            sync()
            t0 = time.perf_counter()
            out = pipe(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps,
                       guidance_scale=guidance, height=h, width=w, generator=generator,
                       latents=torch.from_numpy(latents.copy()).to(device),
                       output_type="np", callback_on_step_end=on_step,
                       callback_on_step_end_tensor_inputs=["latents"])
            sync()
            t1 = time.perf_counter()
        timesteps = [int(t) for t in pipe.scheduler.timesteps]
    finally:
        pipe.scheduler = own
    if timings is not None:
        # step k's time runs from the previous step's end (the first: from the call, which
        # also encodes the prompt); the latents copied out for the trace are included
        timings["step_s"] = [b - a for a, b in zip([t0, *marks[:-1]], marks)]
        timings["total_s"] = t1 - t0
        timings["decode_s"] = t1 - marks[-1]
    image = out.images[0].astype(np.float32)
    return {
        **{k: v.float().cpu().numpy() for k, v in enc.items()}, "latents": trace,
        "timesteps": timesteps,
        "image01": image, "image_u8": np.round(image * 255.0).astype(np.uint8),
    }


def encode_prompt(pipe, prompt: str, negative_prompt: str, device: str = "cpu") -> dict:
    """The pipeline's own prompt encoding: {"positive", "negative"} embeddings, and for SDXL
    (StableDiffusionXLPipeline: two text encoders) encoder 2's pooled text_embeds of each,
    {"pooled", "negative_pooled"}, which its UNet takes as an added condition."""
    if getattr(pipe, "text_encoder_2", None) is None:
        pos, neg = pipe.encode_prompt(prompt, device, 1, True, negative_prompt)
        return {"positive": pos, "negative": neg}
    pos, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True,
                                                      negative_prompt=negative_prompt)
    return {"positive": pos, "negative": neg, "pooled": pooled, "negative_pooled": neg_pooled}


def sdxl_time_ids(pipe, latent_hw) -> list[int]:
    """SDXL's add_time_ids as the pipeline makes them when no sizes are given: original size,
    crop top-left (0, 0), target size, the sizes being the image's (height, width)."""
    h, w = (int(n) * pipe.vae_scale_factor for n in latent_hw)
    return [h, w, 0, 0, h, w]


def float64_generate(model, prompt: str, negative_prompt: str, steps: int, guidance: float,
                     latents: np.ndarray, device: str = "cpu", scheduler: str = "dpm",
                     seed: int | None = None) -> dict:
    """The float64 twin of ``diffusers_generate``: the noise floor of every step of a generation.

    diffusers' pipeline cannot be run in float64 as a whole: ``DPMSolverMultistepScheduler.step``
    casts the sample to float32 and back ("upcast to avoid precision issues"), so a float64
    pipeline still rounds every step to float32. This loop does what the pipeline does, with the
    real text encoder and UNet in float64 (copies of the model's modules): the prompt encoded as
    ``encode_prompt`` does (max-length padding, last hidden state), classifier-free guidance
    ``uncond + g * (cond - uncond)`` on the doubled batch, and the scheduler's step written out
    with the suite's constants (``scheduler_constants``: the float32 values diffusers uses,
    widened): DPM-Solver++ 2M, Euler (the injected latents scaled by init_noise_sigma, the UNet
    fed the scaled sample), PLMS (the warm-up's saved sample and the three-output history) or
    LCM (the boundary-condition denoise, then diffusers' own float32 noise, ``step_noises(seed)``,
    added at every step but the last).
    ``max |float64 - float32 diffusers|`` after each step is then what float32 arithmetic alone
    costs along the trajectory: the floor a correct float32 build's error is measured against.

    SDXL (two text encoders): the embeddings as StableDiffusionXLPipeline.encode_prompt makes
    them, encoder 2's pooled text_embeds and the default add_time_ids as added conditions.

    Returns positive/negative embeddings (SDXL: and pooled/negative_pooled) and the latents
    after every step, float64 numpy."""
    import copy

    import torch

    pipe = getattr(model, "pipe", model)
    unet = copy.deepcopy(pipe.unet).double().to(device).eval()  # .double(): every module, no warning
    towers = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        towers.append((pipe.tokenizer_2, pipe.text_encoder_2))
    towers = [(tok, copy.deepcopy(te).double().to(device).eval()) for tok, te in towers]
    consts = with_noises(scheduler_constants(dict(pipe.scheduler.config), scheduler, steps), seed, latents.shape)
    v_prediction = pipe.scheduler.config.get("prediction_type") == "v_prediction"  # SD 2.x

    def ids(tok, text: str):
        return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(device)

    def encode(text: str):
        """(embeddings, pooled or None): SD 1.x/2.x the last hidden state; SDXL both encoders'
        penultimate hidden states side by side and encoder 2's text_embeds, as encode_prompt."""
        if len(towers) == 1:
            (tok, te), = towers
            return te(ids(tok, text))[0], None
        outs = [te(ids(tok, text), output_hidden_states=True) for tok, te in towers]
        return torch.cat([o.hidden_states[-2] for o in outs], dim=-1), outs[-1].text_embeds

    def scalar(key: str, k: int):
        return float(np.float32(consts[key][k]))

    trace = []
    with torch.no_grad():
        (pos, pooled), (neg, neg_pooled) = encode(prompt), encode(negative_prompt)
        emb = torch.cat([neg, pos])
        added = None
        if pooled is not None:  # SDXL's added conditions, [uncond; cond] as the embeddings
            ids6 = torch.tensor([sdxl_time_ids(pipe, latents.shape[2:])] * 2, dtype=torch.float64, device=device)
            added = {"text_embeds": torch.cat([neg_pooled, pooled]), "time_ids": ids6}
        x = torch.from_numpy(np.asarray(latents, np.float64)).to(device)

        def guided(x_in, k):  # the UNet on the doubled batch at call k, guided
            t = torch.tensor(int(consts["timesteps"][k]), device=device)
            uncond, cond = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=emb,
                                added_cond_kwargs=added).sample.chunk(2)
            return uncond + guidance * (cond - uncond)

        for x in LOOPS[scheduler](x, guided, scalar, consts, v_prediction):
            trace.append(x.cpu().numpy())
    out = {"positive": pos, "negative": neg} if pooled is None else {
        "positive": pos, "negative": neg, "pooled": pooled, "negative_pooled": neg_pooled}
    return {**{k: v.cpu().numpy() for k, v in out.items()}, "latents": trace,
            "timesteps": [int(t) for t in consts["timesteps"]]}


# The float64 twin's loops, one per scheduler, each diffusers' step written out: x the injected
# latents (float64), guided(x_in, k) the guided UNet output at call k, c(key, k) a constant.
# Each yields the latents after every UNet call.

def _dpm_loop(x, guided, c, consts, v_prediction):
    hist = x * 0.0
    for k in range(len(consts["timesteps"])):
        out = guided(x, k)
        if v_prediction:  # diffusers' DPMSolverMultistepScheduler.convert_model_output
            x0 = c("alpha", k) * x - c("sigma", k) * out
        else:
            x0 = (x - c("sigma", k) * out) / c("alpha", k)
        x = (c("c0", k) * x - c("c1", k) * x0) - c("half_c1", k) * (c("inv_r0", k) * (x0 - hist))
        hist = x0
        yield x


def _euler_loop(x, guided, c, consts, v_prediction):
    x = x * float(np.float32(consts["init_noise_sigma"]))  # prepare_latents
    for k in range(len(consts["timesteps"])):
        out = guided(x / c("scale", k), k)  # scale_model_input
        x0 = out * c("a", k) + x / c("b", k)  # epsilon: x - sigma*out; v: diffusers' expression
        x = x + ((x - x0) / c("sigma_hat", k)) * c("dt", k)
        yield x


def _pndm_loop(x, guided, c, consts, v_prediction):
    saved, h1, h2, h3 = x, x * 0.0, x * 0.0, x * 0.0
    for k in range(len(consts["timesteps"])):
        out = guided(x, k)
        x_in = saved if consts["saved_sample"][k] else x  # counter 1 redoes step 0 from its sample
        e = (((c("c0", k) * out - c("c1", k) * h1) + c("c2", k) * h2) - c("c3", k) * h3) * c("mul", k) / c("div", k)
        e = c("va", k) * e + c("vb", k) * x_in
        if consts["push"][k]:
            h1, h2, h3 = out, h1, h2
        x = c("sample_coeff", k) * x_in - (c("eps_coeff", k) * e) / c("denom", k)
        yield x


def _lcm_loop(x, guided, c, consts, v_prediction):
    for k in range(len(consts["timesteps"])):
        out = guided(x, k)
        x0 = (c("p", k) * x - c("q", k) * out) / c("r", k)  # epsilon or v: p, q, r say which
        x = c("c_out", k) * x0 + c("c_skip", k) * x  # denoised
        if consts["add_noise"][k]:
            x = c("sqrt_alpha_prev", k) * x + c("sqrt_beta_prev", k) * torch_like(x, consts["noise"][k])
        yield x


def torch_like(x, a: np.ndarray):
    """``a`` as a tensor of ``x``'s dtype and device."""
    import torch

    return torch.from_numpy(np.asarray(a)).to(dtype=x.dtype, device=x.device)


LOOPS = {"dpm": _dpm_loop, "euler": _euler_loop, "pndm": _pndm_loop, "lcm": _lcm_loop}
