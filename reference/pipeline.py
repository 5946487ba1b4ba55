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
