"""Shared base for stages defined by a PyTorch wrapper module (clip, unet, vae)."""

from __future__ import annotations

import numpy as np

from sdparity.compile.frontend import export_to_relax
from sdparity.registry import Case, Stage, StageIR

_F64_CACHE: dict[tuple, object] = {}


class TorchStage(Stage):
    function: str = ""

    def wrapper(self, model, fault: str | None):
        """The torch.nn.Module that defines this stage (clean when fault is None)."""
        raise NotImplementedError

    def example_inputs(self, model, variant: dict) -> list[np.ndarray]:
        """Inputs of the right shapes/dtypes for torch.export (values do not matter)."""
        raise NotImplementedError

    def build_ir(self, model, variant: dict) -> StageIR:
        import torch

        args = tuple(torch.from_numpy(np.array(a)) for a in self.example_inputs(model, variant))
        return export_to_relax(self.wrapper(model, self.fault), args, self.function)

    def reference(self, model):
        """inputs, dtype -> outputs of the clean wrapper at float32 or float64."""
        from reference.modules import as_float64, run

        def ref(inputs, dtype):
            key = (self.name, id(model))
            if dtype == "float64":
                if key not in _F64_CACHE:
                    _F64_CACHE.clear()  # one float64 copy at a time: full-size models are large
                    _F64_CACHE[key] = as_float64(self.wrapper(model, None))
                return run(_F64_CACHE[key], inputs, dtype)
            return run(self.wrapper(model, None), inputs, dtype)

        return ref

    def case(self, model, label: str, inputs: list[np.ndarray], shapes: dict) -> Case:
        ref = self.reference(model)
        return Case(label=label, function=self.function, inputs=inputs,
                    reference=lambda dtype, _i=inputs: ref(_i, dtype),
                    outputs=self.outputs, shapes=shapes)
