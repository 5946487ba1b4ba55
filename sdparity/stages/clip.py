"""CLIP text encoder: int32 token ids (1, 77) -> last hidden state (1, 77, hidden)."""

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


@register
class Clip(TorchStage):
    name = "clip"
    description = "CLIP text encoder: token ids (1,77) int32 -> hidden states (1,77,d)"
    function = "clip"
    outputs = (Output("hidden"),)
    functions = ("clip",)
    faults = {"truncate_layers": "the TVM build drops the last encoder layer"}

    component = "text_encoder"

    def wrap(self, te, fault):
        if fault == "truncate_layers":
            import copy

            te = copy.deepcopy(te)
            body = getattr(te, "text_model", te)  # transformers 4 nests text_model; 5 does not
            body.encoder.layers = body.encoder.layers[:-1]
        return ClipTextEncoder(te)

    def example_inputs(self, model, variant):
        return [np.zeros((1, 77), dtype=np.int32)]

    def cases(self, model, variant, seed):
        return [self.case(model, name, [tokenize(model.tokenizer, p)], {"input_ids": [1, 77]})
                for name, p in PROMPTS.items()]
