"""Shared base for stages defined by a PyTorch wrapper module (clip, unet, vae)."""

from __future__ import annotations

import numpy as np

from sdparity.compile.frontend import export_to_relax
from sdparity.registry import Case, Stage, StageIR

#: dtype -> ((stage name, id(model)), the wrapper converted to it): one copy per dtype at a
#: time (full-size models are large), reused across a stage's cases
_COPIES: dict[str, tuple] = {}


def torch_module(define):
    """Decorator for a stage's torch wrapper: ``define(torch)`` returns a torch.nn.Module
    subclass, made on first use (so importing the stage registry does not import torch); the
    decorated name then constructs instances of it."""
    import functools
    import importlib

    cls = functools.cache(lambda: define(importlib.import_module("torch")))

    @functools.wraps(define)
    def make(*args, **kwargs):
        return cls()(*args, **kwargs)

    return make


def as_dtype(module, dtype: str):
    """A copy of a wrapper in another dtype: float64 (the float32 noise floor of the reference)
    or float16 (PyTorch's own float16, the f16 mode's yardstick: commands/f16.py)."""
    import copy

    import torch

    return copy.deepcopy(module).to(getattr(torch, dtype))


def run(module, inputs, dtype: str) -> list:
    """Run a wrapper on numpy inputs at float16, float32 or float64; float inputs follow dtype."""
    import torch

    tdtype = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}[dtype]
    args = []
    for a in inputs:
        t = torch.from_numpy(np.array(a))
        args.append(t.to(tdtype) if t.is_floating_point() else t)
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().numpy() for o in outs]


class TorchStage(Stage):
    """A stage defined by a torch.nn.Module wrapped around one pipeline component.

    Subclasses set ``component`` (the attribute of a diffusers StableDiffusionPipeline the
    stage wraps: "text_encoder", "unet", "vae") and implement ``wrap(part, fault)``. The same
    wrapper is exported to TVM (with the fault) and run as the reference (without)."""

    function: str = ""
    component: str = ""

    def wrap(self, part, fault: str | None):
        """The torch.nn.Module that defines this stage around ``part`` (clean when fault is None)."""
        raise NotImplementedError

    def wrapper(self, model, fault: str | None):
        return self.wrap(getattr(model, self.component), fault)

    def example_inputs(self, model, variant: dict) -> list[np.ndarray]:
        """Inputs of the right shapes/dtypes for torch.export (values do not matter)."""
        raise NotImplementedError

    def build_ir(self, model, variant: dict) -> StageIR:
        import torch

        from sdparity.ir import digest

        variant = self._build_variant(model, variant)
        args = tuple(torch.from_numpy(np.array(a)) for a in self.example_inputs(model, variant))
        # the exported program depends on the stage's code, fault, model and shapes (the build
        # key without the converters: patch_upsample and neutralize act after the export)
        exported = {k: v for k, v in variant.items() if k not in ("patch_upsample", "neutralize")}
        memo = digest([type(self).__module__, type(self).__qualname__,
                       Stage.build_key(self, model, exported)])
        return export_to_relax(self.export_module(model, variant), args, self.function,
                               self.dynamic_shapes(model, variant), variant.get("patch_upsample", True),
                               tuple(variant.get("neutralize", ())), memo=memo)

    # -- symbolic-shape builds: a variant with "symbolic": True (shape fuzzing) -----------------
    # "patch_upsample": False builds them with TVM's own upsample conversion, which fails
    # (known issue tvm_symbolic_upsample): the unpatched result, reported as such.
    def build_variant(self, model, variant: dict) -> dict:
        """The variant the build depends on: a symbolic-shape build serves every concrete
        variant of its class, so its build key (and cache entry) holds the class only."""
        return variant

    def _build_variant(self, model, variant: dict) -> dict:
        built = self.build_variant(model, variant)
        if built.get("symbolic") and "patch_upsample" in variant:
            built = {**built, "patch_upsample": variant["patch_upsample"]}
        if variant.get("neutralize"):  # known issues' neutralizers (compile/neutralize.py)
            built = {**built, "neutralize": sorted(variant["neutralize"])}
        return built

    def build_key(self, model, variant: dict) -> dict:
        return super().build_key(model, self._build_variant(model, variant))

    def dynamic_shapes(self, model, variant: dict):
        """torch.export's dynamic_shapes for a build variant (None: fixed shapes)."""
        return None

    def export_module(self, model, variant: dict):
        """The module exported for a build variant (the stage's wrapper, with the fault)."""
        return self.wrapper(model, self.fault)

    def reference(self, model):
        """inputs, dtype -> outputs of the clean wrapper at float16, float32 or float64."""
        def ref(inputs, dtype):
            if dtype == "float32":
                return run(self.wrapper(model, None), inputs, dtype)
            key = (self.name, id(model))
            held = _COPIES.get(dtype)
            if held is None or held[0] != key:
                _COPIES.pop(dtype, None)  # release the old copy before making the new one
                _COPIES[dtype] = (key, as_dtype(self.wrapper(model, None), dtype))
            return run(_COPIES[dtype][1], inputs, dtype)

        return ref

    def case(self, model, label: str, inputs: list[np.ndarray], shapes: dict) -> Case:
        ref = self.reference(model)
        return Case(label=label, function=self.function, inputs=inputs,
                    reference=lambda dtype, _i=inputs: ref(_i, dtype),
                    outputs=self.outputs, shapes=shapes)
