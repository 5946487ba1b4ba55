"""VAE decode: latents (B,4,h,w) -> (float image NHWC in 0..255, rounded image)."""

from __future__ import annotations

import numpy as np

from sdparity.registry import Output, register
from sdparity.stages._torch import TorchStage


@register
class VAE(TorchStage):
    name = "vae"
    description = "VAE decode with 1/scaling_factor, [-1,1] -> [0,255], NHWC, round"
    function = "vae"
    # image_float is checked so a real error is not hidden by the rounding
    outputs = (Output("image_float", image=True), Output("image", integer=True, image=True))
    functions = ("vae",)
    faults = {
        "wrong_scaling_factor": "SDXL's 0.13025 instead of the VAE config's factor",
        "skip_normalize": "clamps [-1,1] to [0,1] without (x/2+0.5)",
    }

    def default_variant(self, model):
        return {"latent": list(model.default_latent_hw), "batch": 1}

    def wrapper(self, model, fault):
        from reference.modules import VAEDecode

        return VAEDecode(model.vae, fault)

    def _shape(self, model, variant):
        return (variant["batch"], int(model.vae.config.latent_channels), *variant["latent"])

    def example_inputs(self, model, variant):
        return [np.zeros(self._shape(model, variant), np.float32)]

    def cases(self, model, variant, seed):
        shape = self._shape(model, variant)
        rng = np.random.default_rng(seed)
        # SD latents as the sampler produces them: ~N(0,1) in the scaled latent space.
        return [self.case(model, f"latents{i}", [rng.standard_normal(shape).astype(np.float32)],
                          {"latents": list(shape)}) for i in range(2)]
