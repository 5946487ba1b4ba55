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


@torch_module
def WithShapeHint(torch):
    """forward(hint, latents, timestep, embeddings, guidance) = inner(latents, ...), for
    symbolic builds. The int8 hint's shape (h // f, w // f) holds the symbolic sizes k that the
    latent sides f*k + r are made of: TVM builds only when every symbolic var is the whole size
    of some input (else VMShapeLower: "PrimExpr T.int64(2) * s85 is not computed")."""

    class WithShapeHint(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, hint, latents, timestep, embeddings, guidance):
            return self.inner(latents, timestep, embeddings, guidance)

    return WithShapeHint


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
        hint = []
        if variant.get("symbolic"):  # sides f*4 + r: inside the class, no size 0/1
            f = self._up_factor(model)
            variant = {"batch": variant["batch"], "latent": [f * 4 + r for r in variant["symbolic"]]}
            hint = [np.zeros((4, 4), np.int8)]
        lat, emb = self._shapes(model, variant)
        return hint + [np.zeros(lat, np.float32), np.array(999, np.int32), np.zeros(emb, np.float32),
                       np.array(7.5, np.float32)]

    def cases(self, model, variant, seed):
        lat, emb = self._shapes(model, variant)
        hint = None
        if self.build_variant(model, variant).get("symbolic"):
            hint = np.zeros([n // self._up_factor(model) for n in variant["latent"]], np.int8)
        rng = np.random.default_rng(seed)
        out = []
        for t, g in ((999, 7.5), (500, 7.5), (1, 7.5), (500, 1.0)):
            inputs = [rng.standard_normal(lat).astype(np.float32), np.array(t, np.int32),
                      rng.standard_normal(emb).astype(np.float32), np.array(g, np.float32)]
            case = self.case(model, f"t{t}_g{g}", inputs, {"latents": list(lat), "embeddings": list(emb)})
            if hint is not None:
                case.inputs = [hint, *inputs]  # the built function's; the reference keeps `inputs`
            out.append(case)
        return out

    # -- symbolic-shape builds (variant "symbolic": True; tests/unit/test_fuzz.py) -------------
    # diffusers' UNet2DConditionModel takes every latent size: when a side is not a multiple
    # of its up factor f = 2**upsamplers it hands the skip connections' sizes to the upsamplers
    # (``upsample_size``) instead of doubling. So torch.export guards (measured on the tiny
    # UNet, f = 2): on side % f, on the batch (chunk(2) of 2B: specialized), and on every
    # downsampled size being >= 2 (sizes 0/1 are specialized). One symbolic build therefore
    # serves a class: one batch and the residues r = side % f, sides f*k + r with k >= _min_k.
    # A smaller side gets a fixed-shape build; one symbolic side next to a fixed one is not
    # possible (torch.export cannot prove the guards of the size-1 side's interpolation).
    def _up_factor(self, model):
        return 2 ** sum(1 for b in model.unet.up_blocks if getattr(b, "upsamplers", None))

    def _min_k(self, model, r):
        f = self._up_factor(model)
        downs = sum(1 for b in model.unet.down_blocks if getattr(b, "downsamplers", None))
        k = 0
        while any(-(-(f * k + r) // 2**j) < 2 for j in range(1, downs + 1)):
            k += 1
        return k

    def build_variant(self, model, variant):
        if not variant.get("symbolic"):
            return variant
        f = self._up_factor(model)
        if all(n // f >= self._min_k(model, n % f) for n in variant["latent"]):
            return {"batch": variant["batch"], "symbolic": [n % f for n in variant["latent"]]}
        return {"latent": list(variant["latent"]), "batch": variant["batch"]}  # = the plain fixed build

    def dynamic_shapes(self, model, variant):
        if not variant.get("symbolic"):
            return None
        from torch.export import Dim

        f = self._up_factor(model)
        kh, kw = (Dim(n, min=self._min_k(model, r)) for n, r in zip(("kh", "kw"), variant["symbolic"]))
        h, w = (f * k + r if r else f * k for k, r in zip((kh, kw), variant["symbolic"]))
        return {"hint": {0: kh, 1: kw}, "latents": {2: h, 3: w}, "timestep": None, "embeddings": None,
                "guidance": None}

    def export_module(self, model, variant):
        module = self.wrapper(model, self.fault)
        return WithShapeHint(module) if variant.get("symbolic") else module
