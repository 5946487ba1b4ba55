"""VAE decode: latents (B,4,h,w) -> (float image NHWC in 0..255, rounded image)."""

from __future__ import annotations

import numpy as np

from sdparity.registry import Output, register
from sdparity.stages._torch import TorchStage, torch_module


@torch_module
def VAEDecode(torch):
    """latents (B,4,h,w) -> (image_float NHWC in 0..255 before rounding, image rounded).

    latents / vae.config.scaling_factor -> post_quant_conv -> decoder -> (x/2+0.5).clamp(0,1)
    -> NHWC * 255 -> round (ties to even, as torch.round and WGSL round)."""

    class VAEDecode(torch.nn.Module):
        def __init__(self, vae, fault: str | None = None):
            super().__init__()
            self.vae = vae
            self.scaling_factor = float(vae.config.scaling_factor)
            if fault == "wrong_scaling_factor":  # the other family's factor (web-stable-diffusion #60):
                # SDXL's 0.13025 on an SD 1.x/2.x VAE, SD 1's 0.18215 on SDXL's
                self.scaling_factor = 0.18215 if abs(self.scaling_factor - 0.13025) < 1e-6 else 0.13025
            self.fault = fault

        def forward(self, latents):
            z = latents / self.scaling_factor
            x = self.vae.decode(z, return_dict=False)[0]
            if self.fault == "skip_normalize":
                x = x.clamp(0, 1)
            else:
                x = (x / 2 + 0.5).clamp(0, 1)
            img = x.permute(0, 2, 3, 1) * 255.0
            return img, torch.round(img)

    return VAEDecode


@register
class VAE(TorchStage):
    name = "vae"
    description = "VAE decode with 1/scaling_factor, [-1,1] -> [0,255], NHWC, round"
    function = "vae"
    # image_float is checked so a real error is not hidden by the rounding
    outputs = (Output("image_float", image=True), Output("image", integer=True, image=True))
    functions = ("vae",)
    faults = {
        "wrong_scaling_factor": "the other family's factor instead of the VAE config's: SDXL's 0.13025 "
        "on SD 1.x/2.x, SD 1's 0.18215 on SDXL",
        "skip_normalize": "clamps [-1,1] to [0,1] without (x/2+0.5)",
    }

    def default_variant(self, model):
        return {"latent": list(model.default_latent_hw), "batch": 1}

    component = "vae"

    def wrap(self, vae, fault):
        return VAEDecode(vae, fault)

    def _shape(self, model, variant):
        return (variant["batch"], int(model.vae.config.latent_channels), *variant["latent"])

    def example_inputs(self, model, variant):
        if variant.get("symbolic"):  # a size-1 example would be specialized by torch.export
            return [np.zeros((2, int(model.vae.config.latent_channels), 8, 8), np.float32)]
        return [np.zeros(self._shape(model, variant), np.float32)]

    # symbolic: one build for every batch and latent size (measured on the tiny VAE, 1..24 per
    # side: torch.export adds no guard; the decoder only upsamples by 2, never to a given size)
    def build_variant(self, model, variant):
        return {"symbolic": True} if variant.get("symbolic") else variant

    def dynamic_shapes(self, model, variant):
        if not variant.get("symbolic"):
            return None
        from torch.export import Dim

        return {"latents": {0: Dim("b", min=1, max=8), 2: Dim("h", min=1), 3: Dim("w", min=1)}}

    def cases(self, model, variant, seed):
        shape = self._shape(model, variant)
        rng = np.random.default_rng(seed)
        # SD latents as the sampler produces them: ~N(0,1) in the scaled latent space.
        return [self.case(model, f"latents{i}", [rng.standard_normal(shape).astype(np.float32)],
                          {"latents": list(shape)}) for i in range(2)]
