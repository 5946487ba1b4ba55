"""UNet with latent doubling and classifier-free guidance, as one module:
latents (B,4,h,w), timestep () int32, embeddings (2B,77,d) [uncond; cond], guidance () f32
-> guided noise prediction (B,4,h,w).

SDXL (architecture "sdxl"): the same function also takes SDXL's added conditions, after the
embeddings: text_embeds (2B,p) [uncond; cond] (text encoder 2's pooled output) and the three
int32[2] sizes original_size, crop_top_left, target_size, from which the module builds
add_time_ids = original_size + crop_top_left + target_size as StableDiffusionXLPipeline does
(the same ids for both halves, its default when no negative sizes are given)."""

from __future__ import annotations

import copy

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
            return _guide(eps, guidance, self.fault)

    return UNetWithCFG


def _guide(eps, guidance, fault):
    """Classifier-free guidance of the doubled batch's prediction [uncond; cond]."""
    uncond, cond = eps.chunk(2)
    if fault == "swap_cond_uncond":
        uncond, cond = cond, uncond
    if fault == "guidance_reversed":
        return cond + guidance * (uncond - cond)
    return uncond + guidance * (cond - uncond)


@torch_module
def UNetXLWithCFG(torch):
    """SDXL: latents (B,4,h,w), timestep () int32, embeddings (2B,77,d), text_embeds (2B,p),
    original_size, crop_top_left, target_size (int32[2] each, (height, width) and (top, left)),
    guidance () -> guided noise prediction (B,4,h,w)."""

    class UNetXLWithCFG(torch.nn.Module):
        def __init__(self, unet, fault: str | None = None):
            super().__init__()
            self.unet = unet
            self.fault = fault

        def forward(self, latents, timestep, embeddings, text_embeds, original_size, crop_top_left,
                    target_size, guidance):
            x = torch.cat([latents, latents], dim=0)
            sizes = [original_size, crop_top_left, target_size]
            if self.fault == "time_ids_wrong_order":
                sizes = [target_size, crop_top_left, original_size]
            time_ids = torch.cat(sizes).to(latents.dtype).unsqueeze(0).expand(x.shape[0], 6)
            eps = self.unet(x, timestep, encoder_hidden_states=embeddings, return_dict=False,
                            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})[0]
            return _guide(eps, guidance, self.fault)

    return UNetXLWithCFG


def _transpose_linear_projections(unet):
    """A copy of the UNet whose transformers' proj_in/proj_out weights are transposed: a 1x1
    convolution's [out, in, 1, 1] weight converted to a Linear's [out, in] with the axes swapped
    (the projections are square: inner width = channels). Linear projections only (SD 2.x, SDXL)."""
    unet = copy.deepcopy(unet)
    n = 0
    for m in unet.modules():
        if type(m).__name__ == "Transformer2DModel" and getattr(m, "use_linear_projection", False):
            for proj in (m.proj_in, m.proj_out):
                proj.weight.data = proj.weight.data.t().contiguous()
                n += 1
    if not n:
        raise ValueError("fault linear_proj_transposed: this UNet has no linear projections (SD 1.x)")
    return unet


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

    #: faults of some architectures only (``ARCH_FAULTS``: SD 1.x has neither linear projections
    #: nor added conditions). Injected like the others (``with_fault``, --inject-fault); kept out of
    #: ``faults``, whose every entry tests/unit/test_parity.py makes fail on the SD 1.x tiny model:
    #: tests/unit/test_model_family.py makes each fail on its architecture's tiny model.
    arch_faults = {
        "linear_proj_transposed": "SD 2.x/SDXL: the transformers' linear proj_in/proj_out weights "
        "transposed (a 1x1-conv checkpoint converted to Linear with its axes swapped)",
        "time_ids_wrong_order": "SDXL: add_time_ids built target size first (target + crop + original "
        "instead of original + crop + target)",
    }
    ARCH_FAULTS = {"linear_proj_transposed": ("sd2", "sdxl"), "time_ids_wrong_order": ("sdxl",)}

    def with_fault(self, fault):
        if fault in self.arch_faults:
            s = copy.copy(self)
            s.fault = fault
            return s
        return super().with_fault(fault)

    component = "unet"

    def wrap(self, unet, fault):
        """The wrapper of a UNet alone (the GPU device half has its parts, no pipeline): SDXL's
        when the UNet takes SDXL's added conditions, as ``wrapper`` picks by the architecture."""
        xl = unet.config.get("addition_embed_type") == "text_time"
        return UNetXLWithCFG(unet, fault) if xl else UNetWithCFG(unet, fault)

    def wrapper(self, model, fault):
        arch = model.architecture
        if fault in self.ARCH_FAULTS and arch not in self.ARCH_FAULTS[fault]:
            raise ValueError(f"fault {fault} applies to {'/'.join(self.ARCH_FAULTS[fault])} models, "
                             f"not to this {arch} model")
        unet = _transpose_linear_projections(model.unet) if fault == "linear_proj_transposed" else model.unet
        return UNetXLWithCFG(unet, fault) if arch == "sdxl" else UNetWithCFG(unet, fault)

    def _shapes(self, model, variant):
        b, (h, w) = variant["batch"], variant["latent"]
        c = int(model.unet.config.in_channels)
        d = int(model.unet.config.cross_attention_dim)
        return (b, c, h, w), (2 * b, 77, d)

    def _added(self, model, variant, rng=None, sizes=None) -> list[np.ndarray]:
        """SDXL's added conditions after the embeddings: text_embeds (2B,p), then the sizes."""
        if model.architecture != "sdxl":
            return []
        p = int(model.text_encoder_2.config.projection_dim)
        shape = (2 * variant["batch"], p)
        pooled = rng.standard_normal(shape).astype(np.float32) if rng is not None else np.zeros(shape, np.float32)
        return [pooled] + [np.array(v, np.int32) for v in (sizes or ((0, 0),) * 3)]

    def _sizes(self, model, variant, t, g):
        """SDXL's (original_size, crop_top_left, target_size) per case: the pipeline's default at
        t=999 (original = target, no crop), micro-conditioning as SDXL was trained with elsewhere
        (original sizes up to 1024 and crops), so a wrong order of add_time_ids shows."""
        h, w = (8 * n for n in variant["latent"])
        return {999: ((h, w), (0, 0), (h, w)), 500: ((1024, 768), (64, 32), (h, w)) if g != 1.0 else
                ((768, 1024), (0, 0), (h, w)), 1: ((512, 512), (0, 0), (h, w))}[t]

    def example_inputs(self, model, variant):
        hint = []
        if variant.get("symbolic"):  # sides f*4 + r: inside the class, no size 0/1
            f = self._up_factor(model)
            variant = {"batch": variant["batch"], "latent": [f * 4 + r for r in variant["symbolic"]]}
            hint = [np.zeros((4, 4), np.int8)]
        lat, emb = self._shapes(model, variant)
        return hint + [np.zeros(lat, np.float32), np.array(999, np.int32), np.zeros(emb, np.float32),
                       *self._added(model, variant), np.array(7.5, np.float32)]

    def cases(self, model, variant, seed):
        lat, emb = self._shapes(model, variant)
        hint = None
        if self.build_variant(model, variant).get("symbolic"):
            hint = np.zeros([n // self._up_factor(model) for n in variant["latent"]], np.int8)
        rng = np.random.default_rng(seed)
        out = []
        for t, g in ((999, 7.5), (500, 7.5), (1, 7.5), (500, 1.0)):
            inputs = [rng.standard_normal(lat).astype(np.float32), np.array(t, np.int32),
                      rng.standard_normal(emb).astype(np.float32)]
            shapes = {"latents": list(lat), "embeddings": list(emb)}
            if model.architecture == "sdxl":
                sizes = self._sizes(model, variant, t, g)
                inputs += self._added(model, variant, rng, sizes)
                shapes.update(text_embeds=list(inputs[3].shape), original_size=list(sizes[0]),
                              crop_top_left=list(sizes[1]), target_size=list(sizes[2]))
            inputs.append(np.array(g, np.float32))
            case = self.case(model, f"t{t}_g{g}", inputs, shapes)
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
        if model.architecture == "sdxl":  # the shape hint wrapper has SD 1.x/2.x's signature
            return {"latent": list(variant["latent"]), "batch": variant["batch"]}
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
