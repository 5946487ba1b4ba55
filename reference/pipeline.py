"""End-to-end reference: the real diffusers.StableDiffusionPipeline with injected latents,
traced at every step. The browser app and sdparity.app.pipeline are compared against this."""

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
    """Run StableDiffusionPipeline (pinned DPM-Solver++ scheduler from the model folder).

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
        pos, neg = pipe.encode_prompt(prompt, device, 1, True, negative_prompt)
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
        "positive": pos.float().cpu().numpy(), "negative": neg.float().cpu().numpy(), "latents": trace,
        "timesteps": [int(t) for t in pipe.scheduler.timesteps],
        "image01": image, "image_u8": np.round(image * 255.0).astype(np.uint8),
    }


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

    Returns positive/negative embeddings and the latents after every step, float64 numpy."""
    import copy

    import torch

    from reference.dpm import compute_constants

    pipe = getattr(model, "pipe", model)
    te = copy.deepcopy(pipe.text_encoder).double().to(device).eval()
    unet = copy.deepcopy(pipe.unet).double().to(device).eval()  # .double(): every module, no warning
    tok = pipe.tokenizer
    consts = compute_constants(dict(pipe.scheduler.config), steps)
    v_prediction = pipe.scheduler.config.get("prediction_type") == "v_prediction"  # SD 2.x

    def encode(text: str):
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        return te(ids)[0]

    def scalar(key: str, k: int):
        return float(np.float32(consts[key][k]))

    trace = []
    with torch.no_grad():
        pos, neg = encode(prompt), encode(negative_prompt)
        emb = torch.cat([neg, pos])
        x = torch.from_numpy(np.asarray(latents, np.float64)).to(device)
        hist = torch.zeros_like(x)
        for k in range(steps):
            t = torch.tensor(int(consts["timesteps"][k]), device=device)
            uncond, cond = unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.chunk(2)
            out = uncond + guidance * (cond - uncond)
            if v_prediction:  # diffusers' DPMSolverMultistepScheduler.convert_model_output
                x0 = scalar("alpha", k) * x - scalar("sigma", k) * out
            else:
                x0 = (x - scalar("sigma", k) * out) / scalar("alpha", k)
            second = scalar("half_c1", k) * (scalar("inv_r0", k) * (x0 - hist))
            x = (scalar("c0", k) * x - scalar("c1", k) * x0) - second
            hist = x0
            trace.append(x.cpu().numpy())
    return {"positive": pos.cpu().numpy(), "negative": neg.cpu().numpy(), "latents": trace,
            "timesteps": [int(t) for t in consts["timesteps"]]}
