"""CLIP text encoder: int32 token ids (1, 77) -> last hidden state (1, 77, hidden).

SDXL (a model whose architecture is "sdxl", reference.models.architecture_of): the same stage
and function name cover both of its text encoders in one build, as StableDiffusionXLPipeline's
encode_prompt uses them: ids (1,77) of tokenizer 1 and ids_2 (1,77) of tokenizer 2 (which pads
with 0) -> (prompt embeddings (1,77,d1+d2): both encoders' penultimate hidden states side by
side, pooled (1,p): encoder 2's projected text_embeds). One stage with a second output, not a
second stage: a stage of its own would be registered for every model, and SD 1.x/2.x have no
second encoder to check."""

from __future__ import annotations

import numpy as np

from sdparity.registry import Output, register
from sdparity.stages._torch import TorchStage, torch_module

PROMPTS = {
    "cat": "a photo of a cat",
    "astronaut": "an astronaut riding a horse on mars",
    "empty": "",
    "long": "a very detailed oil painting of a lighthouse on a cliff at dusk, " * 8,
}


def tokenize(tokenizer, prompt: str) -> np.ndarray:
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True).input_ids
    return np.array([ids], dtype=np.int32)


@torch_module
def ClipTextEncoder(torch):
    """int32 token ids (B, 77) -> last hidden state (B, 77, hidden)."""

    class ClipTextEncoder(torch.nn.Module):
        def __init__(self, text_encoder):
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids):
            return self.text_encoder(input_ids.to(torch.int64), return_dict=False)[0]

    return ClipTextEncoder


@torch_module
def SdxlTextEncoders(torch):
    """ids (B,77) for text encoder 1, ids_2 (B,77) for text encoder 2 -> (embeddings (B,77,d1+d2),
    pooled (B,p)): hidden_states[-2] of each (the penultimate layer, before the final LayerNorm:
    SDXL with clip_skip None) concatenated on the last axis in encoder order, and encoder 2's
    text_embeds (final LayerNorm at the EOS position, then text_projection)."""

    class SdxlTextEncoders(torch.nn.Module):
        def __init__(self, text_encoder, text_encoder_2):
            super().__init__()
            self.text_encoder = text_encoder
            self.text_encoder_2 = text_encoder_2

        def forward(self, input_ids, input_ids_2):
            one = self.text_encoder(input_ids.to(torch.int64), output_hidden_states=True, return_dict=True)
            two = self.text_encoder_2(input_ids_2.to(torch.int64), output_hidden_states=True, return_dict=True)
            return torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1), two.text_embeds

    return SdxlTextEncoders


def _truncated(te):
    import copy

    te = copy.deepcopy(te)
    body = getattr(te, "text_model", te)  # transformers 4 nests text_model; 5 does not
    body.encoder.layers = body.encoder.layers[:-1]
    return te


@register
class Clip(TorchStage):
    name = "clip"
    description = "CLIP text encoder: token ids (1,77) int32 -> hidden states (1,77,d)"
    function = "clip"
    outputs = (Output("hidden"),)
    functions = ("clip",)
    faults = {"truncate_layers": "the TVM build drops the last encoder layer (SDXL: of both encoders)"}

    component = "text_encoder"

    def wrap(self, te, fault):
        return ClipTextEncoder(_truncated(te) if fault == "truncate_layers" else te)

    def wrapper(self, model, fault):
        if model.architecture != "sdxl":
            return self.wrap(model.text_encoder, fault)
        te, te2 = model.text_encoder, model.text_encoder_2
        if fault == "truncate_layers":  # both encoders lose their last layer
            te, te2 = _truncated(te), _truncated(te2)
        return SdxlTextEncoders(te, te2)

    def example_inputs(self, model, variant):
        return [np.zeros((1, 77), dtype=np.int32)] * (2 if model.architecture == "sdxl" else 1)

    def cases(self, model, variant, seed):
        if model.architecture != "sdxl":
            return [self.case(model, name, [tokenize(model.tokenizer, p)], {"input_ids": [1, 77]})
                    for name, p in PROMPTS.items()]
        out = []
        for name, p in PROMPTS.items():
            case = self.case(model, name, [tokenize(model.tokenizer, p), tokenize(model.tokenizer_2, p)],
                             {"input_ids": [1, 77], "input_ids_2": [1, 77]})
            case.outputs = SDXL_OUTPUTS
            out.append(case)
        return out


#: the SDXL form's outputs: the prompt embeddings and encoder 2's pooled text_embeds
SDXL_OUTPUTS = (Output("hidden"), Output("pooled"))
