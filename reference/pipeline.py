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


def diffusers_generate(model, prompt: str, negative_prompt: str, steps: int, guidance: float,
                       latents: np.ndarray, device: str = "cpu", timings: dict | None = None) -> dict:
    """Run the model's diffusers pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline)
    with the pinned DPM-Solver++ scheduler from the model folder.

    model: a reference.models.LoadedModel, or a StableDiffusionPipeline itself (the GPU
    machine builds one from recreated components). device: where the pipeline runs (it must
    already be there). timings, when given, receives per-step wall times (s, synchronized)
    and the total.

    Returns text embeddings, the latents after every step, and the final image as diffusers
    produces it: float HWC in [0,1] and uint8 = round(255 * x) (diffusers' numpy_to_pil)."""
    import time

    import torch
    from diffusers import DPMSolverMultistepScheduler

    pipe = getattr(model, "pipe", model)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
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
    with torch.no_grad():
        enc = encode_prompt(pipe, prompt, negative_prompt, device)
        sync()
        t0 = time.perf_counter()
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps,
                   guidance_scale=guidance, height=h, width=w,
                   latents=torch.from_numpy(latents.copy()).to(device),
                   output_type="np", callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["latents"])
        sync()
        t1 = time.perf_counter()
    if timings is not None:
        # step k's time runs from the previous step's end (the first: from the call, which
        # also encodes the prompt); the latents copied out for the trace are included
        timings["step_s"] = [b - a for a, b in zip([t0, *marks[:-1]], marks)]
        timings["total_s"] = t1 - t0
        timings["decode_s"] = t1 - marks[-1]
    image = out.images[0].astype(np.float32)
    return {
        **{k: v.float().cpu().numpy() for k, v in enc.items()}, "latents": trace,
        "timesteps": [int(t) for t in pipe.scheduler.timesteps],
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
                     latents: np.ndarray, device: str = "cpu") -> dict:
    """The float64 twin of ``diffusers_generate``: the noise floor of every step of a generation.

    diffusers' pipeline cannot be run in float64 as a whole: ``DPMSolverMultistepScheduler.step``
    casts the sample to float32 and back ("upcast to avoid precision issues"), so a float64
    pipeline still rounds every step to float32. This loop does what the pipeline does, with the
    real text encoder and UNet in float64 (copies of the model's modules): the prompt encoded as
    ``encode_prompt`` does (max-length padding, last hidden state), classifier-free guidance
    ``uncond + g * (cond - uncond)`` on the doubled batch, and the DPM-Solver++ step written out
    with the suite's constants (reference.dpm: the float32 values diffusers uses, widened).
    ``max |float64 - float32 diffusers|`` after each step is then what float32 arithmetic alone
    costs along the trajectory: the floor a correct float32 build's error is measured against.

    SDXL (two text encoders): the embeddings as StableDiffusionXLPipeline.encode_prompt makes
    them, encoder 2's pooled text_embeds and the default add_time_ids as added conditions.

    Returns positive/negative embeddings (SDXL: and pooled/negative_pooled) and the latents
    after every step, float64 numpy."""
    import copy

    import torch

    from reference.dpm import compute_constants

    pipe = getattr(model, "pipe", model)
    unet = copy.deepcopy(pipe.unet).double().to(device).eval()  # .double(): every module, no warning
    towers = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        towers.append((pipe.tokenizer_2, pipe.text_encoder_2))
    towers = [(tok, copy.deepcopy(te).double().to(device).eval()) for tok, te in towers]
    consts = compute_constants(dict(pipe.scheduler.config), steps)
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
        hist = torch.zeros_like(x)
        for k in range(steps):
            t = torch.tensor(int(consts["timesteps"][k]), device=device)
            uncond, cond = unet(torch.cat([x, x]), t, encoder_hidden_states=emb,
                                added_cond_kwargs=added).sample.chunk(2)
            out = uncond + guidance * (cond - uncond)
            if v_prediction:  # diffusers' DPMSolverMultistepScheduler.convert_model_output
                x0 = scalar("alpha", k) * x - scalar("sigma", k) * out
            else:
                x0 = (x - scalar("sigma", k) * out) / scalar("alpha", k)
            second = scalar("half_c1", k) * (scalar("inv_r0", k) * (x0 - hist))
            x = (scalar("c0", k) * x - scalar("c1", k) * x0) - second
            hist = x0
            trace.append(x.cpu().numpy())
    out = {"positive": pos, "negative": neg} if pooled is None else {
        "positive": pos, "negative": neg, "pooled": pooled, "negative_pooled": neg_pooled}
    return {**{k: v.cpu().numpy() for k, v in out.items()}, "latents": trace,
            "timesteps": [int(t) for t in consts["timesteps"]]}
