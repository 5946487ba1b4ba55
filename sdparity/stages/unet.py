"""UNet with latent doubling and classifier-free guidance, as one module:
latents (B,4,h,w), timestep () int32, embeddings (2B,77,d) [uncond; cond], guidance () f32
-> guided noise prediction (B,4,h,w)."""

from __future__ import annotations

import numpy as np

from sdparity.registry import Output, register
from sdparity.stages._torch import TorchStage, torch_module


@torch_module
def UNetWithCFG(torch):
    """latents (B,4,h,w), timestep () int32, embeddings (2B,77,d) [uncond; cond], guidance ()
    -> guided noise prediction (B,4,h,w) = uncond + g * (cond - uncond), as diffusers' pipeline."""

    class UNetWithCFG(torch.nn.Module):
        def __init__(self, unet, fault: str | None = None):
            super().__init__()
            self.unet = unet
            self.fault = fault

        def forward(self, latents, timestep, embeddings, guidance):
            x = torch.cat([latents, latents], dim=0)
            eps = self.unet(x, timestep, encoder_hidden_states=embeddings, return_dict=False)[0]
            uncond, cond = eps.chunk(2)
            if self.fault == "swap_cond_uncond":
                uncond, cond = cond, uncond
            if self.fault == "guidance_reversed":
                return cond + guidance * (uncond - cond)
            return uncond + guidance * (cond - uncond)

    return UNetWithCFG


@register
class UNet(TorchStage):
    name = "unet"
    description = "UNet + classifier-free guidance (latents doubled, uncond first)"
    function = "unet"
    outputs = (Output("noise_pred"),)
    functions = ("unet",)
    faults = {
        "swap_cond_uncond": "cond and uncond halves swapped",
        "guidance_reversed": "guidance applied from cond towards uncond",
    }

    def default_variant(self, model):
        return {"latent": list(model.default_latent_hw), "batch": 1}

    component = "unet"

    def wrap(self, unet, fault):
        return UNetWithCFG(unet, fault)

    def _shapes(self, model, variant):
        b, (h, w) = variant["batch"], variant["latent"]
        c = int(model.unet.config.in_channels)
        d = int(model.unet.config.cross_attention_dim)
        return (b, c, h, w), (2 * b, 77, d)

    def example_inputs(self, model, variant):
        lat, emb = self._shapes(model, variant)
        return [np.zeros(lat, np.float32), np.array(999, np.int32), np.zeros(emb, np.float32),
                np.array(7.5, np.float32)]

    def cases(self, model, variant, seed):
        lat, emb = self._shapes(model, variant)
        rng = np.random.default_rng(seed)
        out = []
        for t, g in ((999, 7.5), (500, 7.5), (1, 7.5), (500, 1.0)):
            inputs = [rng.standard_normal(lat).astype(np.float32), np.array(t, np.int32),
                      rng.standard_normal(emb).astype(np.float32), np.array(g, np.float32)]
            out.append(self.case(model, f"t{t}_g{g}", inputs, {"latents": list(lat), "embeddings": list(emb)}))
        return out
