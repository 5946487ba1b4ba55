"""End-to-end reference: the real diffusers.StableDiffusionPipeline with injected latents,
traced at every step. The browser app and sdparity.pipeline are compared against this."""

from __future__ import annotations

import numpy as np


def initial_latents(model, latent_hw: tuple[int, int], seed: int) -> np.ndarray:
    """The injected starting noise (torch.randn with a seeded generator, as diffusers would)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c = int(model.unet.config.in_channels)
    return torch.randn((1, c, *latent_hw), generator=g, dtype=torch.float32).numpy()


def diffusers_generate(model, prompt: str, negative_prompt: str, steps: int, guidance: float,
                       latents: np.ndarray) -> dict:
    """Run StableDiffusionPipeline (pinned DPM-Solver++ scheduler from the model folder).

    Returns text embeddings, the latents after every step, and the final image as diffusers
    produces it: float HWC in [0,1] and uint8 = round(255 * x) (diffusers' numpy_to_pil)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    pipe = model.pipe
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    trace: list[np.ndarray] = []

    def on_step(p, i, t, kw):
        trace.append(kw["latents"].detach().clone().numpy())
        return kw

    h, w = latents.shape[2] * model.vae_scale_factor, latents.shape[3] * model.vae_scale_factor
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt)
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps,
                   guidance_scale=guidance, height=h, width=w, latents=torch.from_numpy(latents.copy()),
                   output_type="np", callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["latents"])
    image = out.images[0].astype(np.float32)
    return {
        "positive": pos.numpy(), "negative": neg.numpy(), "latents": trace,
        "timesteps": [int(t) for t in pipe.scheduler.timesteps],
        "image01": image, "image_u8": np.round(image * 255.0).astype(np.uint8),
    }
