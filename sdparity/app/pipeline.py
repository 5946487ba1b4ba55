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


def build_stages(backend, model, cache, latent_hw, log=print) -> dict[str, Path]:
    """function name -> artifact folder, for every function the pipeline calls."""
    arts = {}
    for name in PIPELINE_STAGES:
        st = get_stage(name)
        variant = st.default_variant(model)
        if "latent" in variant:
            variant = {**variant, "latent": list(latent_hw)}
        art, _, cached = backend.build_cached(lambda s=st, v=variant: s.build_ir(model, v),
                                              st.build_key(model, variant), cache, log=log,
                                              label=f"{name}/{backend.name}")
        for fn in st.functions:
            arts[fn] = art
    return arts


def generate(runner, arts: dict[str, Path], model, prompt: str, negative_prompt: str, steps: int,
             guidance: float, latents: np.ndarray, constants: dict | None = None) -> dict:
    """Run the pipeline; return the same trace as reference.pipeline.diffusers_generate."""
    from reference.dpm import STEP_KEYS, compute_constants

    from sdparity.stages.clip import tokenize

    def call(fn, *inputs):
        return runner.run(arts[fn], fn, [np.asarray(x) for x in inputs])

    consts = constants or compute_constants(dict(model.pipe.scheduler.config), steps)
    (pos,) = call("clip", tokenize(model.tokenizer, prompt))
    (neg,) = call("clip", tokenize(model.tokenizer, negative_prompt))
    (emb,) = call("concat_embeddings", neg, pos)
    x = np.asarray(latents, np.float32)
    hist = np.zeros_like(x)  # never uninitialized: first-order steps multiply it by 0
    trace = []
    f32 = np.float32
    for k in range(steps):
        t = np.array(consts["timesteps"][k], np.int32)
        (eps,) = call("unet", x, t, emb, np.array(guidance, f32))
        (x0,) = call("dpm_convert_model_output", x, eps, np.array(consts["alpha"][k], f32),
                     np.array(consts["sigma"][k], f32))
        (x,) = call("dpm_step", x, x0, hist, *[np.array(consts[key][k], f32) for key in STEP_KEYS])
        hist = x0
        trace.append(x)
    image_float, image = call("vae", x)
    (rgba,) = call("image_to_rgba", image)
    return {"positive": pos, "negative": neg, "latents": trace, "timesteps": consts["timesteps"],
            "image_float": image_float, "image": image, "rgba": rgba}


def rgba_to_u8(rgba: np.ndarray) -> np.ndarray:
    """(H,W) uint32 -> (H,W,3) uint8 (little-endian r,g,b)."""
    return rgba.astype("<u4").view(np.uint8).reshape(*rgba.shape, 4)[..., :3]
