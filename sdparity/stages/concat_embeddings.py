"""Embedding concat: negative/uncond (B,S,d) and positive/cond (B,S,d) -> (2B,S,d).

Order is [negative; positive], as the original web-stable-diffusion JS passed it and as
diffusers' pipeline concatenates; the UNet stage splits in the same order. Built once with
symbolic B, S, d."""

from __future__ import annotations

import numpy as np

from sdparity.compile.compat import sym_var, tensor_type
from sdparity.registry import Case, Output, Stage, StageIR, register


def concat_embeddings(negative, positive):
    """(B,S,d),(B,S,d) -> (2B,S,d) torch tensors. Order: negative/unconditional FIRST, as the original
    web-stable-diffusion JS and diffusers' StableDiffusionPipeline both do; the UNet stage
    splits the same way (uncond, cond = chunk(2))."""
    import torch

    return torch.cat([negative, positive], dim=0)


@register
class ConcatEmbeddings(Stage):
    name = "concat_embeddings"
    description = "concat [negative; positive] text embeddings along batch (symbolic shapes)"
    uses_model = False
    outputs = (Output("embeddings"),)
    functions = ("concat_embeddings",)
    faults = {"positive_first": "concatenates [positive; negative]"}

    def torch_eager(self, function):
        return concat_embeddings

    def build_ir(self, model, variant):
        from tvm import relax

        b, s, d = (sym_var(n) for n in ("b", "s", "d"))
        neg = relax.Var("negative", tensor_type((b, s, d), "float32"))
        pos = relax.Var("positive", tensor_type((b, s, d), "float32"))
        bb = relax.BlockBuilder()
        with bb.function("concat_embeddings", [neg, pos]):
            first, second = (pos, neg) if self.fault == "positive_first" else (neg, pos)
            out = bb.emit(relax.op.concat([first, second], axis=0))
            bb.emit_func_output(out)
        return StageIR(bb.get(), {})

    def cases(self, model, variant, seed):
        import torch

        d = model.hidden_size if model is not None else 32
        rng = np.random.default_rng(seed)
        out = []
        for b, s, dd in ((1, 77, d), (2, 5, 3)):
            inputs = [rng.standard_normal((b, s, dd)).astype(np.float32) for _ in range(2)]

            def ref(dtype, _i=inputs):
                t = [torch.from_numpy(x).to(getattr(torch, dtype)) for x in _i]
                return [concat_embeddings(*t).numpy()]

            out.append(Case(f"b{b}_s{s}_d{dd}", "concat_embeddings", inputs, ref, self.outputs,
                            {"each": [b, s, dd]}))
        return out
