"""PyTorch wrappers that define each model stage's computation, around the real
diffusers/transformers modules. The same wrapper is exported to TVM (through torch.export)
and run as the reference, so the two sides cannot disagree on what the stage *is*.

Faults (for negative tests) are constructor switches: the stage builds the TVM side from a
faulted wrapper and keeps the clean wrapper as the reference.
"""

from __future__ import annotations

import copy

import torch


class ClipTextEncoder(torch.nn.Module):
    """int32 token ids (B, 77) -> last hidden state (B, 77, hidden)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids.to(torch.int64), return_dict=False)[0]


def concat_embeddings(negative, positive):
    """(B,77,h),(B,77,h) -> (2B,77,h). Order: negative/unconditional FIRST, as the original
    web-stable-diffusion JS and diffusers' StableDiffusionPipeline both do; the UNet wrapper
    below splits the same way (uncond, cond = chunk(2))."""
    return torch.cat([negative, positive], dim=0)


class ConcatEmbeddings(torch.nn.Module):
    def forward(self, negative, positive):
        return concat_embeddings(negative, positive)


class UNetWithCFG(torch.nn.Module):
    """latents (B,4,h,w), timestep () int32, embeddings (2B,77,d) [uncond; cond], guidance ()
    -> guided noise prediction (B,4,h,w) = uncond + g * (cond - uncond), as diffusers' pipeline."""

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


class VAEDecode(torch.nn.Module):
    """latents (B,4,h,w) -> (image_float NHWC in 0..255 before rounding, image rounded).

    latents / vae.config.scaling_factor -> post_quant_conv -> decoder -> (x/2+0.5).clamp(0,1)
    -> NHWC * 255 -> round (ties to even, as torch.round and WGSL round)."""

    def __init__(self, vae, fault: str | None = None):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        if fault == "wrong_scaling_factor":  # SDXL's factor on an SD1 VAE (web-stable-diffusion #60)
            self.scaling_factor = 0.13025
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


def as_float64(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a wrapper (for the float32 noise floor of the reference)."""
    return copy.deepcopy(module).to(torch.float64)


def run(module: torch.nn.Module, inputs, dtype: str) -> list:
    """Run a wrapper on numpy inputs at float32 or float64; float inputs follow dtype."""
    import numpy as np

    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    args = []
    for a in inputs:
        t = torch.from_numpy(np.array(a))
        args.append(t.to(tdtype) if t.is_floating_point() else t)
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().numpy() for o in outs]
